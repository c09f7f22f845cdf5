"""Config: every shipped YAML validates; unknown / mistyped keys and bad method options are errors naming the key;
recipes carry the official values; the CLI maps --task/--method/--resume onto the config; every setting (lr, the
method's optimizer settings) is resolved once, into the config the trainer reads and the run records."""
from pathlib import Path

import pytest

from sgalign.config import ConfigError, load_config
from sgalign.jobs.train_cli import default_config, parse
from sgalign.training.config import TrainConfig
from training_helpers import make_config, tiny_assets  # noqa: F401

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
YAMLS = sorted([*(CONFIGS / "world").glob("*.yaml"), *(CONFIGS / "recipes").rglob("*.yaml")])


def test_configs_exist_for_every_model_and_method():
    names = {(p.parent.name, p.stem) for p in (CONFIGS / "recipes").rglob("*.yaml")}
    assert names == {(m, k) for m in ("sd15", "sdxl", "sd15-sg", "sdxl-sg")
                     for k in ("diffusion-dpo", "inpo", "smpo", "inversion-dpo", "sft")}
    assert {p.name for p in (CONFIGS / "accelerate").glob("*.yaml")} >= {"ddp.yaml", "zero2.yaml", "zero3.yaml",
                                                                         "fsdp.yaml"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_validates(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.method.name in cfg.method.options


def test_recipes_hold_the_official_values():
    r = lambda m, k: load_config(TrainConfig, CONFIGS / "recipes" / m / f"{k}.yaml")
    dpo = r("sdxl", "diffusion-dpo")
    assert dpo.method.chosen()["beta"] == 5000 and dpo.optimizer.name == "adafactor"
    assert dpo.model.gradient_checkpointing and dpo.optimizer.lr == 1e-8 and dpo.optimizer.scale_lr
    assert dpo.trainer.gradient_accumulation_steps == 128 and dpo.trainer.max_steps == 2000
    assert r("sd15", "inpo").method.chosen()["beta"] == 2000 and r("sdxl", "inpo").method.chosen()["beta"] == 5000
    smpo = r("sd15", "smpo")
    assert smpo.method.chosen()["num_points"] == 5
    assert smpo.trainer.max_steps == 200 and smpo.optimizer.warmup_steps == 100
    inv = r("sdxl", "inversion-dpo")
    assert (inv.method.chosen()["num_steps"], inv.method.chosen()["beta"], inv.trainer.gradient_accumulation_steps,
            inv.optimizer.warmup_steps, inv.trainer.mixed_precision) == (80, 2000, 1, 1000, "bf16")
    assert r("sd15", "sft").data.proportion_empty_prompts == 0.2


@pytest.mark.parametrize("override, key", [
    (["trainer.max_stepz=3"], "trainer.max_stepz"),
    (["optimizer.lr=fast"], "optimizer.lr"),
    (["datta.path=x"], "datta"),
    (["method.options.inpo.betta=3"], "inpo.betta"),
    (["method.options.inpo.beta=high"], "inpo.beta"),
    (["method.name=dpo-typo"], "dpo-typo"),
])
def test_bad_key_or_value_names_it(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, default_config("compositional"), override)
    assert key in str(e.value)


def test_latent_cache_refused_with_random_flip():
    with pytest.raises(ConfigError, match="cache_latents"):
        load_config(TrainConfig, default_config("t2i"), ["data.random_flip=true"])


def test_cli_maps_arguments():
    _, cfg = parse(["--task", "t2i", "--method", "sft", "--set", "optimizer.lr=2e-6", "--resume", "latest"])
    assert (cfg.task, cfg.method.name, cfg.optimizer.lr, cfg.checkpointing.resume) == ("t2i", "sft", 2e-6, "latest")
    assert cfg.model.path == "auto" and cfg.data.path is None  # None: build_pairs' default output


def test_the_trainer_takes_a_model_folder_and_refuses_auto(tmp_path):
    from sgalign.training.trainer import Trainer

    cfg = load_config(TrainConfig, default_config("compositional"),
                      ["data.path=synthetic", f"trainer.output_dir={tmp_path / 'run'}"])
    assert cfg.model.path == "auto"
    with pytest.raises(ConfigError, match="model.path=auto"):  # resolved by sgalign.jobs.commands, never here
        Trainer(cfg)
    assert not (tmp_path / "run").exists()


def test_world_default_with_explicit_synthetic_data_labels_fallbacks(tmp_path, monkeypatch):
    import json

    import yaml

    import sgalign.world.paths as world_paths
    from sgalign.jobs.train_cli import main

    # as on a checkout without the shipped world SD1.5-SG: model.path=auto must fall back to a labelled random init
    monkeypatch.setattr(world_paths, "world_model_path", lambda: tmp_path / "no-world-model")
    assert main(["--task", "t2i", "--set", f"trainer.output_dir={tmp_path}", "--set", "trainer.max_steps=2",
                 "--set", "logging.tqdm=false", "--set", "data.path=synthetic"]) == 0
    resolved = yaml.safe_load((tmp_path / "resolved_config.yaml").read_text())
    assert resolved["model"]["random_init"] is True and "base-model-random-init" in resolved["model"]["path"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["random_init_model"] and any("SYNTHETIC" in n for n in summary["notes"])
    assert any("RANDOM-INIT base model" in n for n in summary["notes"])
    # made by the command layer beside the run folder, which the trainer claims (and --overwrite empties)
    assert tmp_path not in Path(resolved["model"]["path"]).parents
    assert json.loads((tmp_path / "final" / "training.json").read_text())["random_init_base"] is True
    assert "_sgalign_random_init" in (tmp_path / "final" / "model_index.json").read_text()
    logs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logs] == [1, 2]
    assert {"loss", "implicit_acc", "reward_margin", "fwd/grad", "fwd/no_grad", "pairs_per_s", "peak_mem_gb",
            "grad_norm", "lr"} <= set(logs[0])
    assert logs[0]["fwd/grad"] == 2 and logs[0]["fwd/no_grad"] == 2  # Diffusion-DPO: policy 2F (grad) + ref 2F


def test_method_settings_apply_to_their_method_only_and_yield_to_set():
    base = {"optimizer": {"lr": 1e-5}, "trainer": {"max_steps": 150},
            "method": {"name": "sft", "settings": {"sft": {"optimizer": {"lr": 5e-6}, "trainer": {"max_steps": 7}}}}}
    cfg = load_config(TrainConfig, None, [], base=base)
    assert (cfg.optimizer.lr, cfg.trainer.max_steps) == (5e-6, 7)
    cfg = load_config(TrainConfig, None, ["optimizer.lr=3e-6"], base=base)  # --set wins, the rest still applies
    assert (cfg.optimizer.lr, cfg.trainer.max_steps) == (3e-6, 7)
    cfg = load_config(TrainConfig, None, [], base=base, updates=[{"trainer": {"max_steps": 2}}])  # a caller's value
    assert (cfg.optimizer.lr, cfg.trainer.max_steps) == (5e-6, 2)
    cfg = load_config(TrainConfig, None, ["method.name=inpo"], base=base)  # another method: the file's values
    assert (cfg.optimizer.lr, cfg.trainer.max_steps) == (1e-5, 150)
    _, cli = parse(["--task", "compositional", "--method", "sft"])  # the shipped world YAML's tuned SFT lr
    assert cli.optimizer.lr == 5e-6


@pytest.mark.parametrize("settings, key", [({"sft": {"data": {"batch_size": 2}}}, "optimizer / trainer only"),
                                           ({"dpo": {"optimizer": {"lr": 1e-5}}}, "unknown method 'dpo'"),
                                           ({"sft": {"optimizer": {"lr": -1}}}, "optimizer.lr")])
def test_bad_method_settings_are_named(settings, key):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, [], base={"method": {"name": "sft", "settings": settings}})
    assert key in str(e.value)


def test_method_optimizer_settings_are_merged_when_the_config_is_resolved(tmp_path):
    """Faithful Inversion-DPO's weight_decay 0 is in the resolved config itself (not set later by the trainer);
    a configured value wins; dumping and reloading the resolved config gives the same config."""
    from sgalign.config import dump_config

    faithful = ["method.name=inversion-dpo", "method.options.inversion-dpo.faithful=true"]
    assert load_config(TrainConfig, None, faithful).optimizer.weight_decay == 0.0
    assert load_config(TrainConfig, None, faithful[:1]).optimizer.weight_decay == 1e-2
    assert load_config(TrainConfig, None, [*faithful, "optimizer.weight_decay=0.03"]).optimizer.weight_decay == 0.03
    cfg = load_config(TrainConfig, None, faithful)
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(TrainConfig, tmp_path / "resolved.yaml") == cfg


def test_the_lr_given_by_set_is_the_resolved_configs_and_the_optimizers(tiny_assets, tmp_path):  # noqa: F811
    """lr from the file, the method's tuned settings and --set: the resolved config the run records holds the one
    --set gives, and the optimizer's param group has exactly that lr (x the effective batch under scale_lr)."""
    import json

    import yaml

    from sgalign.training.trainer import Trainer

    tuned = "method.settings.diffusion-dpo.optimizer.lr=5e-5"  # below --set, above the file's 3e-4
    tr = Trainer(make_config(tiny_assets, tmp_path / "a", overrides=[tuned, "optimizer.lr=7e-5"]))
    resolved = yaml.safe_load((tmp_path / "a" / "resolved_config.yaml").read_text())
    assert resolved["optimizer"]["lr"] == tr.cfg.optimizer.lr == 7e-5
    assert [g["lr"] for g in tr.optimizer.param_groups] == [7e-5]
    tr = Trainer(make_config(tiny_assets, tmp_path / "b", overrides=[
        tuned, "optimizer.lr=7e-5", "optimizer.scale_lr=true", "trainer.gradient_accumulation_steps=3",
        "trainer.max_steps=1"]))
    resolved = yaml.safe_load((tmp_path / "b" / "resolved_config.yaml").read_text())
    assert resolved["optimizer"]["lr"] == 7e-5 and resolved["optimizer"]["scale_lr"] is True
    assert [g["lr"] for g in tr.optimizer.param_groups] == [7e-5 * 2 * 3]  # batch 2 x accumulation 3
    summary = tr.train().summary
    assert (summary["lr"], summary["effective_batch"]) == (7e-5 * 6, 6)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["lr"] == 7e-5 * 6
