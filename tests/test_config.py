import pytest

from sgalign.config import ConfigError, ConfigModel, apply_overrides, dump_config, load_config


class Trainer(ConfigModel):
    lr: float = 1e-5
    steps: int = 10
    mixed_precision: str = "no"


class Run(ConfigModel):
    trainer: Trainer = Trainer()
    seed: int = 0


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trainer:\n  lr: 2.0e-6\nseed: 3\n")
    cfg = load_config(Run, p, ["trainer.steps=20", "seed=4"])
    assert cfg.trainer.lr == 2e-6 and cfg.trainer.steps == 20 and cfg.seed == 4
    assert cfg.trainer.mixed_precision == "no"


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trainer:\n  lrr: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Run, p)
    assert "trainer.lrr: unknown key" in str(exc.value) and "c.yaml" in str(exc.value)
    with pytest.raises(ConfigError, match=r"trainer.stepz: unknown key \(from --set\)"):
        load_config(Run, None, ["trainer.stepz=3"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match="trainer.steps"):
        load_config(Run, None, ["trainer.steps=many"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["trainer.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_dump_round_trip(tmp_path):
    cfg = load_config(Run, None, ["trainer.lr=3e-4"])
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Run, tmp_path / "resolved.yaml") == cfg
