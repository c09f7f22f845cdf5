"""One output folder, one run (issue 16 item 1): train, build_pairs and evaluate record their run's identity in
the folder, refuse a different run there unless --overwrite (which starts clean), refuse to resume another run's
checkpoint, skip a finished identical run; a second build_pairs process on the same folder stops at once."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_builders import cli as build_cli
from data_builders import shards
from data_builders.config import WORLD_MODEL
from sgalign.outdir import RunMismatch, check_claim, claim, write_record
from sgalign.jobs import train_cli

REPO = Path(__file__).resolve().parent.parent
TRAIN = ["--task", "compositional", "--set", "data.path=synthetic", "--set", "data.resolution=64",
         "--set", "trainer.max_steps=2", "--set", "checkpointing.every=1", "--set", "optimizer.warmup_steps=0",
         "--set", "logging.tqdm=false", "--set", "checkpointing.final_pipeline=false"]
BUILD = ["--source", "laion-sg", "--n", "2", "--set", "generation.k=2", "--set", "generation.num_inference_steps=1",
         "--set", "rewards.world_similarity=oracle", "--set", "torch_threads=1", "--no-progress"]


def steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_claim_states(tmp_path):
    out = tmp_path / "o"
    assert claim(out, "k", "a") == "new" and check_claim(out, "k", "a", "--out") == "same"
    with pytest.raises(RunMismatch, match="--overwrite"):
        check_claim(out, "k", "b", "--out")
    (out / "x").write_text("old")
    assert claim(out, "k", "b", overwrite=True) == "overwrite" and sorted(p.name for p in out.iterdir()) == ["run.json"]
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "metrics.jsonl").write_text("{}\n")  # files of a run without run.json
    with pytest.raises(RunMismatch, match="unidentified"):
        check_claim(tmp_path / "legacy", "train", "a", "trainer.output_dir")


def test_second_train_run_into_one_folder_is_refused_then_overwrite_starts_clean(tmp_path):
    run = tmp_path / "run"
    out = ["--set", f"trainer.output_dir={run}"]
    assert train_cli.main([*TRAIN, *out]) == 0
    assert steps(run) == [1, 2] and sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000001", "step-00000002"]
    first = json.loads((run / "run.json").read_text())["run_id"]
    other = [*TRAIN, *out, "--set", "optimizer.lr=3e-6", "--set", "trainer.max_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *other], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # resuming the other run's checkpoint is refused too, and nothing of the first run changed
    assert train_cli.main([*other, "--resume", "latest"]) == 2
    assert json.loads((run / "run.json").read_text())["run_id"] == first and steps(run) == [1, 2]
    assert train_cli.main([*other, "--overwrite"]) == 0
    rec = json.loads((run / "run.json").read_text())
    assert rec["run_id"] != first and rec["finished"] and steps(run) == [1]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_cli.main([*TRAIN, "--set", f"trainer.output_dir={a}"]) == 0
    ck = a / "checkpoints" / "step-00000001"
    other = [*TRAIN, "--set", f"trainer.output_dir={b}", "--set", "optimizer.lr=3e-6", "--resume", str(ck)]
    assert train_cli.main(other) == 2


def test_build_pairs_one_build_per_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pairs"
    assert build_cli.main([*BUILD, "--out", str(out)]) == 0
    first = json.loads((out / "index.json").read_text())["dataset_id"]
    other = [*BUILD, "--out", str(out), "--set", "generation.seed=5"]
    assert build_cli.main(other) == 2
    assert json.loads((out / "index.json").read_text())["dataset_id"] == first
    assert build_cli.main([*other, "--overwrite"]) == 0
    assert json.loads((out / "index.json").read_text())["dataset_id"] != first


def test_concurrent_build_pairs_into_one_folder_stops_the_second(tmp_path, capsys):
    out = tmp_path / "pairs"
    with shards.owned(out, "build_pairs", 0, 1):  # as a first process still working
        assert build_cli.main([*BUILD, "--out", str(out)]) == 2
    assert "another build_pairs" in capsys.readouterr().err and not (out / "build.json").exists()


def test_evaluate_refuses_another_evaluations_folder(tmp_path):
    from helpers import evaluate_main
    out = tmp_path / "eval"
    write_record(out, {"kind": "evaluate", "run_id": "someone-else"})
    (out / "results.json").write_text("{}")
    rc = evaluate_main()(["--task", "compositional", "--model", str(WORLD_MODEL), "--out", str(out)])
    assert rc == 2 and (out / "results.json").read_text() == "{}"


def test_resume_after_a_kill_leaves_one_row_per_step_and_summarises_the_run(tmp_path):
    """Issue 16 item 2: killed after logging step 3 with the last checkpoint at step 2, then rerun."""
    import shutil
    run = tmp_path / "run"
    args = [*TRAIN, "--set", f"trainer.output_dir={run}", "--set", "trainer.max_steps=3",
            "--set", "checkpointing.every=2"]
    assert train_cli.main(args) == 0
    whole = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # as the kill left it: step 3 logged, its checkpoint, summary and the finished mark not yet written
    shutil.rmtree(run / "checkpoints" / "step-00000003")
    (run / "summary.json").unlink()
    rec = json.loads((run / "run.json").read_text())
    write_record(run, {**rec, "finished": False})
    with open(run / "metrics.jsonl", "a") as f:  # and a row of a step the killed process got no further than
        f.write(json.dumps({**whole[-1], "step": 4, "loss": 123.0}) + "\n")
    assert train_cli.main(args) == 0  # resumes from step 2 by itself
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[:2] == whole[:2] and rows[2]["loss"] == pytest.approx(whole[2]["loss"], abs=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_loss"] == pytest.approx(rows[-1]["loss"])  # tail of the run


@pytest.mark.parametrize("bad,share,rc", [("all", "0.1", 1), ("one", "0.1", 1), ("one", "0.5", 0)])
def test_build_that_produced_nothing_or_too_little_fails(tmp_path, monkeypatch, bad, share, rc):
    """Issue 16 item 3: every (or more than max_failed_share of the) annotation(s) failed -> exit 1, no index.json,
    the summary names the most common failure; train on that folder is refused, not crashed."""
    from data_builders import laion_sg
    real = laion_sg.CandidateBuilder.generate
    failing = {"all": None, "one": "10000001"}[bad]

    def generate(self, records, seeds, batched=True):
        if failing is None or any(r.img_id == failing for r in records):
            raise RuntimeError("renderer on fire")
        return real(self, records, seeds, batched)
    monkeypatch.setattr(laion_sg.CandidateBuilder, "generate", generate)
    out = tmp_path / "pairs"
    args = [*BUILD, "--n", "3", "--out", str(out), "--set", f"max_failed_share={share}"]
    assert build_cli.main(args) == rc
    summary = json.loads((out / "summary.json").read_text())
    assert summary["most_common_failure"]["reason"] == "generation: RuntimeError: renderer on fire"
    assert summary["annotations"]["failed"] == (3 if bad == "all" else 1)
    assert (out / "index.json").exists() == (rc == 0)
    if rc:
        assert train_cli.main(["--task", "compositional", "--set", f"data.path={out}",
                               "--set", f"trainer.output_dir={tmp_path / 'run'}"]) == 2
