"""Every shipped recipe (configs/recipes/<family>/<method>.yaml) is data that is checked: it validates as a
TrainConfig (method options included), its score columns are the ones the builder writes, and it trains one optimizer
step through the real ``train()`` on a tiny random-init model of its own family (make_tiny; sdxl-sg with LAION-SG's
faithful encoder mode, as the recipe's baseline3_100.pt) with the recipe's method options and data columns.

What is changed for the tiny step, and only this: model/data paths, resolution 16 (8x8 latents), one optimizer step of
one micro-batch (accumulation 1), no checkpoints or resume, fp16 -> no mixed precision (accelerate has no CPU fp16;
bf16 recipes keep bf16), and Inversion-DPO's N = 80 -> 4 (its 8N UNet passes per pair take 30-60 s at N = 80 even
on the tiny model in CPU bf16; every other option is the recipe's)."""
from pathlib import Path

import pytest
import torch

from sgalign.config import load_config
from sgalign.training.config import TrainConfig
from sgalign.pair_schema import PICKAPIC_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*/*.yaml"))
FAMILIES = ("sd15", "sdxl", "sd15-sg", "sdxl-sg")
torch.set_num_threads(1)


def builder_score_columns() -> list[str]:
    """The relabel score columns ``build_pairs --source pickapic`` writes (data_builders/pickapic.py)."""
    from data_builders.config import PickapicSection
    prefix = PickapicSection().score_prefix
    return [f"{prefix}_0", f"{prefix}_1"]


def test_every_family_and_method_has_a_recipe():
    from sgalign.methods import available_methods
    have = {(p.parent.name, p.stem) for p in RECIPES}
    assert have == {(f, m) for f in FAMILIES for m in available_methods()}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_validates(recipe):
    cfg = load_config(TrainConfig, recipe)
    family = recipe.parent.name
    assert cfg.method.name == recipe.stem and set(cfg.method.options) <= {cfg.method.name}
    assert cfg.task == ("compositional" if family.endswith("-sg") else "t2i")
    needs_scores = cfg.method.name == "smpo" or cfg.method.chosen().get("pick") == "best-score"
    if cfg.task == "t2i":  # Pick-a-Pic pairs: scores only from the builder's relabel columns
        assert cfg.data.score_columns in (None, builder_score_columns())
        assert (cfg.data.score_columns is not None) == needs_scores
    else:  # candidate datasets carry their rewards; score columns do not apply
        assert cfg.data.score_columns is None


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each recipe's mixed precision (accelerate keeps one process-wide state, fixed by the first Accelerator)."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny models (one per family, made on first use) and one tiny dataset per task."""
    from sgalign.pipelines.tiny import make_tiny
    from sgalign.training.synthetic import write_candidate_dataset, write_pickapic
    root = tmp_path_factory.mktemp("recipes")
    made: dict[str, Path] = {
        "compositional": write_candidate_dataset(root / "cands", rows=2, k=2, seed=1),
        "t2i": write_pickapic(root / "pap.parquet", rows=3, scores=True, seed=2),
    }

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_tiny(name, root / name, sg_mode="faithful" if name == "sdxl-sg" else "object",
                                   gate_init=0.5)
        return made[name]
    return get


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_trains_one_step_on_a_tiny_model_of_its_family(recipe, tiny, tmp_path):
    import pandas as pd

    from sgalign.training.trainer import train
    raw = load_config(TrainConfig, recipe)
    data = tiny(raw.task)
    if raw.data.score_columns:  # the tiny t2i data has the builder's columns, so the recipe's names are used as-is
        assert set(raw.data.score_columns) <= set(pd.read_parquet(data).columns) - set(PICKAPIC_COLUMNS)
    over = [f"model.path={tiny(recipe.parent.name)}", "model.sg_encoder=null", f"data.path={data}",
            "data.resolution=16", f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=1",
            "trainer.gradient_accumulation_steps=1", "checkpointing.every=0", "checkpointing.resume=null",
            "checkpointing.final_pipeline=false", "logging.tqdm=false", "logging.tensorboard='off'"]
    if raw.trainer.mixed_precision == "fp16":
        over.append("trainer.mixed_precision=no")
    if raw.method.name == "inversion-dpo":
        over.append("method.options.inversion-dpo.num_steps=4")
    cfg = load_config(TrainConfig, recipe, over)
    short = {"num_steps"} if raw.method.name == "inversion-dpo" else set()
    same = lambda opts: {k: v for k, v in opts.items() if k not in short}  # noqa: E731
    assert same(cfg.method.chosen()) == same(raw.method.chosen())  # the recipe's own method options
    res = train(cfg)
    s = res.summary
    assert res.step == 1 and s["pairs"] == raw.data.batch_size
    assert s["final_loss"] == s["final_loss"] and abs(s["final_loss"]) < 1e6  # finite
    assert s["unet_forwards_per_pair"] > 0 and s["method_provenance"]["method"] == recipe.stem
