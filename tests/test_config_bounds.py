"""Config values are checked at load (issue 16 item 6): numeric bounds on every train / build_pairs field that has
one, method options as Literals and bounded numbers, so a bad value exits 2 before anything runs."""
import pytest

from data_builders.config import BuildPairsConfig
from sgalign.config import ConfigError, load_config
from sgalign.methods import build_method
from sgalign.jobs import train_cli
from sgalign.training.config import TrainConfig

BAD_TRAIN = ["trainer.max_steps=-5", "trainer.max_steps=0", "optimizer.lr=0", "optimizer.lr=-1e-6",
             "data.batch_size=0", "trainer.gradient_accumulation_steps=0", "optimizer.warmup_steps=-1",
             "optimizer.betas=[0.9, 1.5]", "optimizer.weight_decay=-0.1", "optimizer.max_grad_norm=0",
             "data.proportion_empty_prompts=1.5", "data.margin=-0.1", "model.lora.rank=0",
             "checkpointing.every=-1", "checkpointing.keep=0", "logging.every=0", "trainer.ema_decay=2",
             "method.options.inversion-dpo.target=refrence", "method.options.inversion-dpo.gradient=const",
             "method.options.inversion-dpo.uncond=zero", "method.options.inversion-dpo.num_steps=0",
             "method.options.smpo.inverter=polcy", "method.options.smpo.label=tgt", "method.options.smpo.beta=-1",
             "method.options.inpo.grid=exactly", "method.options.inpo.num_points=0", "method.options.sft.pick=best",
             "method.options.diffusion-dpo.beta=0"]


@pytest.mark.parametrize("override", BAD_TRAIN)
def test_bad_train_value_fails_at_load_naming_it(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, train_cli.default_config("compositional"), [override])
    assert "(from --set)" in str(e.value) and key.split(".")[0] in str(e.value)


def test_negative_max_steps_exits_2_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["--task", "compositional", "--set", "trainer.max_steps=-5"]) == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override", ["generation.k=1", "generation.eta=-1", "generation.height=4",
                                      "generation.guidance_scale=-1", "rewards.margin=-1", "max_failed_share=2",
                                      "torch_threads=0", "annotations.limit=0", "world.n=0"])
def test_bad_build_pairs_value_fails_at_load(override):
    with pytest.raises(ConfigError):
        load_config(BuildPairsConfig, None, [override])


def test_method_options_are_checked_when_built_in_python_too():
    with pytest.raises(ValueError, match="target"):
        build_method("inversion-dpo", target="refrence")
    assert build_method("inversion-dpo", target="reference").config.target == "reference"
