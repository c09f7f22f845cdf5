"""Real processes: build_pairs killed with SIGKILL mid-run and rerun equals an uninterrupted build; two processes
(RANK / WORLD_SIZE as ``accelerate launch`` sets them, plain subprocesses here) build disjoint shards of one
dataset equal to the one-process build."""
import json
import signal
import time

import pytest

from data_builders.laion_sg import build_candidates, load_candidates
from data_builders.shapes import plan_world
from build_pairs_helpers import SMALL, cli, rows, small_config, tiny  # noqa: F401 (tiny: a fixture)

N = 8  # world annotations, one per shard


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return {k: tmp_path_factory.mktemp(k) for k in ("ref", "killed", "two")}


@pytest.fixture(scope="module")
def procs(tiny, dirs):
    """Both subprocesses start at once (their imports overlap): the one to be killed, and rank 1 of 2."""
    p = {"killed": cli(args(tiny, dirs["killed"])),
         "rank1": cli(args(tiny, dirs["two"]), env={"RANK": "1", "WORLD_SIZE": "2"})}
    yield p
    for x in p.values():
        if x.poll() is None:
            x.kill()
            x.wait()


_REF: dict = {}


def reference(tiny, out):
    if not _REF:
        cfg = small_config(tiny, world={"n": N})
        build_candidates(plan_world(cfg.world), cfg, out, rank=0, world_size=1, progress=False, log=lambda *_: None)
        _REF["rows"] = rows(load_candidates(out))
    return _REF["rows"]


def args(tiny, out):
    return ["--source", "shapes", "--n", str(N), "--model", str(tiny), "--out", str(out), "--no-progress",
            *[x for s in SMALL for x in ("--set", s)]]


def test_kill_9_mid_run_then_rerun(tiny, procs, dirs):
    proc, tmp_path = procs["killed"], dirs["killed"]
    first = tmp_path / "index" / "shard-00000.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (tmp_path / "index").glob("*.json"))
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(done) < N and not (tmp_path / "index.json").exists(), done  # killed part-way
    with pytest.raises(FileNotFoundError, match="not finished"):
        load_candidates(tmp_path)
    # the rerun (in this process: same config, so build.json accepts it) builds only the unfinished shards
    cfg = small_config(tiny, world={"n": N})
    log = []
    build_candidates(plan_world(cfg.world), cfg, tmp_path, rank=0, world_size=1, progress=False, log=log.append)
    assert f"{N} annotations built (0 failed)" in log[-1]
    ref = reference(tiny, dirs["ref"])
    got = rows(load_candidates(tmp_path))
    assert [json.loads(r["annotation"])["img_id"] for r in got] == [json.loads(r["annotation"])["img_id"]
                                                                    for r in ref]
    assert got == ref  # same PNG bytes, seeds, scores, provenance


def test_two_processes_build_one_dataset(tiny, procs, dirs):
    """Rank 1 in a subprocess while rank 0 builds here."""
    proc, tmp_path = procs["rank1"], dirs["two"]
    cfg = small_config(tiny, world={"n": N})
    logs = []
    build_candidates(plan_world(cfg.world), cfg, tmp_path, rank=0, world_size=2, progress=False, log=logs.append)
    logs.append(proc.communicate(timeout=300)[0])
    assert proc.returncode == 0, logs
    # each rank built exactly its shards (i % 2 == rank)
    built = {i: json.loads((tmp_path / "index" / f"shard-{i:05d}.json").read_text()) for i in range(N)}
    assert sorted(built) == list(range(N)) and all(m["rank"] == i % 2 for i, m in built.items())
    assert any("annotations built" in log for log in logs)  # whoever finished last wrote the index
    assert rows(load_candidates(tmp_path)) == reference(tiny, dirs["ref"])
