"""Issue 29: bad inputs as a hostile or careless user gives them. Each is refused with exit 2 before the work,
and the input is left byte for byte as it was; a damaged build folder is rebuilt, never trusted."""
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from build_pairs_helpers import SMALL, rows, small_config
from data_builders import cli as build_cli
from data_builders import shards as sh
from data_builders.laion_sg import build_candidates, load_candidates
from data_builders.shapes import plan_world
from helpers import evaluate_main
from sgalign.errors import EXIT_USAGE, UserError
from sgalign.training import cli as train_cli

N = 3  # world annotations, one per shard


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (the input's state, to compare before / after)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sgalign.pipelines.tiny import make_tiny
    torch.set_num_threads(1)
    return make_tiny("sd15-sg", tmp_path_factory.mktemp("m") / "tiny", gate_init=0.5)


def _build(tiny, out, seed=0):
    cfg = small_config(tiny, world={"n": N}, generation={"seed": seed})
    build_candidates(plan_world(cfg.world), cfg, out, rank=0, world_size=1, progress=False, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """A finished build_pairs folder (3 shards), and one of another seed (its shards are another build's)."""
    root = tmp_path_factory.mktemp("built")
    return {"a": _build(tiny, root / "a"), "b": _build(tiny, root / "b", seed=1)}


def _nan_reward(d: Path) -> None:
    """Shard 0 rewritten with a NaN reward, its manifest and the index updated to match (only the NaN is wrong)."""
    import pyarrow.parquet as pq
    f = d / sh.shard_name(0)
    t = pq.read_table(f).to_pydict()
    t["reward"][0] = [math.nan] + t["reward"][0][1:]
    from sgalign.training.data import candidate_features
    sh.write_parquet_atomic(f, t, candidate_features(list(t["scores"][0])))
    idx = json.loads((d / "index.json").read_text())
    idx["shards"][0].update(sha256=sh.file_sha256(f), size=f.stat().st_size)
    (d / "index.json").write_text(json.dumps(idx))


DAMAGE = {
    "deleted shard": lambda d, b: (d / sh.shard_name(2)).unlink(),
    "stray copy": lambda d, b: shutil.copy(d / sh.shard_name(0), d / "shard (copy).parquet"),
    "other build's shard": lambda d, b: shutil.copy(b / sh.shard_name(1), d / sh.shard_name(1)),
    "truncated shard": lambda d, b: (d / sh.shard_name(1)).write_bytes((d / sh.shard_name(1)).read_bytes()[:200]),
    "complete false": lambda d, b: (d / "index.json").write_text(
        json.dumps({**json.loads((d / "index.json").read_text()), "complete": False})),
    "corrupt index": lambda d, b: (d / "index.json").write_text('{"complete": true, "shards": [{'),
    "deep index": lambda d, b: (d / "index.json").write_text("[" * 100000 + "]" * 100000),
    "index without shards": lambda d, b: (d / "index.json").write_text('{"complete": true, "rows": 3}'),
    "nan reward": lambda d, b: _nan_reward(d),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_train_refuses_a_dataset_that_is_not_its_index(built, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(built["a"], data)
    DAMAGE[damage](data, built["b"])
    before = snapshot(data)
    run = tmp_path / "run"
    rc = train_cli.main(["--task", "compositional", "--set", f"data.path={data}",
                         "--set", f"trainer.output_dir={run}"])
    assert rc == EXIT_USAGE
    assert not run.exists()  # refused before the run folder (or any model) was made
    assert snapshot(data) == before


def test_intact_dataset_verifies_and_the_stamp_never_trusts_a_changed_file(built, tmp_path, monkeypatch):
    from sgalign import hashing
    from sgalign.training.data import DatasetMismatch, verify_dataset
    data = tmp_path / "data"
    shutil.copytree(built["a"], data)
    monkeypatch.setenv(hashing.STAMPS_ENV, str(tmp_path / "stamps"))
    monkeypatch.setattr(hashing, "_STAMP_MIN_AGE_NS", 0)  # stamp files just written
    idx = verify_dataset(data)
    assert idx["rows"] == N and all(s["size"] == (data / s["file"]).stat().st_size for s in idx["shards"])
    assert len(list((tmp_path / "stamps").iterdir())) == N  # stamped, outside the data
    calls = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda p: calls.append(p) or real(p))
    verify_dataset(data)
    assert calls == []  # unchanged files: taken from the stamps
    f = data / sh.shard_name(1)
    st, b = f.stat(), bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the ctime says it changed
    with pytest.raises(DatasetMismatch):
        verify_dataset(data)
    assert calls  # rehashed


@pytest.mark.parametrize("damage", ["other build's shard", "truncated shard"])
def test_resumed_build_pairs_rebuilds_a_shard_that_fails_verification(tiny, built, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(built["a"], out)
    DAMAGE[damage](out, built["b"])
    (out / "index.json").unlink()  # as if killed before the end; the rerun also re-checks finished shards
    logs = []
    cfg = small_config(tiny, world={"n": N})
    build_candidates(plan_world(cfg.world), cfg, out, rank=0, world_size=1, progress=False, log=logs.append)
    assert any("rebuilding shard 1" in x for x in logs)
    assert rows(load_candidates(out)) == rows(load_candidates(built["a"]))  # the same dataset, bit for bit


def test_resumed_build_pairs_refuses_a_stray_data_file(tiny, built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built["a"], out)
    DAMAGE["stray copy"](out, built["b"])
    before = snapshot(out)
    args = ["--source", "shapes", "--n", str(N), "--model", str(tiny), "--out", str(out), "--no-progress",
            *[x for s in SMALL for x in ("--set", s)]]
    assert build_cli.main(args) == EXIT_USAGE
    assert snapshot(out) == before


# ---- outputs inside inputs --------------------------------------------------------------------------------------
@pytest.fixture
def model(tmp_path):
    """A stand-in model folder: every command refuses before it reads a weight."""
    m = tmp_path / "M"
    (m / "unet").mkdir(parents=True)
    (m / "model_index.json").write_text('{"_class_name": "StableDiffusionSGPipeline"}')
    (m / "unet" / "config.json").write_text("{}")
    return m


def test_train_refuses_output_inside_the_model(model, tmp_path):
    before = snapshot(model)
    for out in (model / "sub", model / "unet" / "deeper" / "x"):
        assert train_cli.main(["--task", "compositional", "--set", f"model.path={model}",
                               "--set", "data.path=synthetic", "--set", f"trainer.output_dir={out}"]) == EXIT_USAGE
    assert snapshot(model) == before and sorted(p.name for p in model.iterdir()) == ["model_index.json", "unet"]


def test_train_refuses_output_inside_its_data_or_config(built, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(built["a"], data)
    cfgdir = tmp_path / "cfg"
    cfgdir.mkdir()
    (cfgdir / "c.yaml").write_text("task: compositional\ndata: {path: synthetic}\n")
    before = snapshot(tmp_path)
    assert train_cli.main(["--task", "compositional", "--set", f"data.path={data}",
                           "--set", f"trainer.output_dir={data / 'run'}"]) == EXIT_USAGE
    assert train_cli.main(["--task", "compositional", "--config", str(cfgdir / "c.yaml"),
                           "--set", f"trainer.output_dir={cfgdir / 'c.yaml' / 'run'}"]) == EXIT_USAGE
    assert snapshot(tmp_path) == before


def test_build_pairs_refuses_out_inside_the_model(model, tmp_path):
    before = snapshot(model)
    assert build_cli.main(["--source", "shapes", "--n", "2", "--model", str(model), "--out",
                           str(model / "pairs")]) == EXIT_USAGE
    assert snapshot(model) == before and not (model / "pairs").exists()


def test_evaluate_refuses_out_inside_the_model(model, tmp_path):
    before = snapshot(model)
    assert evaluate_main()(["--task", "compositional", "--model", str(model), "--out", str(model / "ev")]) == \
        EXIT_USAGE
    assert snapshot(model) == before and not (model / "ev").exists()


def test_refuse_inputs_rules(tmp_path):
    from sgalign.outdir import OutputIsInput, refuse_inputs
    m = tmp_path / "M"
    m.mkdir()
    (tmp_path / "link").symlink_to(m)
    for out in (m, m / "a", m / "a" / "b", tmp_path / "link" / "x", m / ".." / "M" / "y"):
        with pytest.raises(OutputIsInput):
            refuse_inputs({"--out": out}, {"--model": m})
    refuse_inputs({"--out": tmp_path / "other"}, {"--model": m})
    refuse_inputs({"--out": tmp_path}, {"--model": m})  # a parent, not emptied: allowed
    with pytest.raises(OutputIsInput):
        refuse_inputs({"--out": tmp_path}, {"--model": m}, emptied=True)
    assert issubclass(OutputIsInput, UserError)
