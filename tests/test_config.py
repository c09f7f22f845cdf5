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


def test_include_merges_listed_files_under_the_own_keys(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "a.yaml").write_text("trainer:\n  lr: 1.0e-3\n  steps: 5\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("include: base/a.yaml\ntrainer:\n  steps: 7\n")
    (tmp_path / "c.yaml").write_text("include: [b.yaml]\ntrainer:\n  mixed_precision: bf16\n")
    cfg = load_config(Run, tmp_path / "c.yaml", ["seed=9"])
    # a.yaml < b.yaml < c.yaml < --set; include paths are relative to the including file, not the cwd
    assert (cfg.trainer.lr, cfg.trainer.steps, cfg.trainer.mixed_precision, cfg.seed) == (1e-3, 7, "bf16", 9)


def test_include_cycles_and_missing_files_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(Run, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("include: [nope.yaml]\n")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(Run, tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("include: {x: 1}\n")
    with pytest.raises(ConfigError, match="list of file paths"):
        load_config(Run, tmp_path / "d.yaml")
    # one file reached along two branches is not a cycle
    (tmp_path / "e.yaml").write_text("seed: 2\n")
    (tmp_path / "f.yaml").write_text("include: [e.yaml]\n")
    (tmp_path / "g.yaml").write_text("include: [e.yaml, f.yaml]\n")
    assert load_config(Run, tmp_path / "g.yaml").seed == 2
