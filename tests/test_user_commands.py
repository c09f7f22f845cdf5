"""The three user commands of the README (issue 15) chain on the embedded default with no flags beyond a tiny
budget: build_pairs --source laion-sg -> train --task compositional -> evaluate --task compositional, each reading
the previous one's default folder; the report's provenance chains run id, dataset id and base model hash.
Plus: train refuses (exit 2) when no pairs exist; real LAION-SG vocabulary with the world reward fails before any
image; progress is plain lines off a terminal."""
import io
import json

import pytest

from data_builders import cli as build_cli
from helpers import CARD, evaluate_main
from data_builders.config import WORLD_ANNOTATIONS, WORLD_MODEL
from sgalign.hashing import folder_sha256
from sgalign.progress import LineProgress, progress
from sgalign.scene_graph import load_split
from sgalign.jobs import train_cli
from sgalign.world import sample_split, split_records

TINY_BUILD = ["--n", "4", "--set", "generation.k=3", "--set", "generation.num_inference_steps=2",
              "--set", "rewards.world_similarity=oracle", "--set", "torch_threads=1", "--no-progress"]
# margin 0: 2-step candidates of a good base can all score within the default 0.05 of each other
TINY_TRAIN = ["--set", "data.margin=0.0", "--set", "trainer.max_steps=2", "--set", "checkpointing.every=0",
              "--set", "optimizer.warmup_steps=0",
              "--set", "logging.tqdm=false"]
TINY_EVAL = ["--set", "inputs.n=2", "--set", "sampling.seeds=[0]", "--set", "sampling.steps=2",
             "--set", "compositional.fid=false"]


def test_embedded_annotations_are_the_world_train_split():
    split = load_split(WORLD_ANNOTATIONS)
    want = split_records("train", sample_split("train", 200, seed=0))
    assert not split.rejects and [r.to_json_dict() for r in split.records] == [r.to_json_dict() for r in want]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("user")
    mp = pytest.MonkeyPatch()
    mp.chdir(cwd)
    try:
        rcs = [build_cli.main(["--source", "laion-sg", *TINY_BUILD]),
               train_cli.main(["--task", "compositional", *TINY_TRAIN]),
               evaluate_main()(["--task", "compositional", *TINY_EVAL])]
        yield cwd, rcs
    finally:
        mp.undo()


def test_three_commands_chain_with_provenance(chain):
    cwd, rcs = chain
    assert rcs == [0, 0, 0]
    index = json.loads((cwd / "runs/pairs/laion-sg/index.json").read_text())
    run_dir = cwd / "runs/train/compositional-diffusion-dpo"
    run = json.loads((run_dir / "run.json").read_text())
    res = json.loads((cwd / "runs/eval/compositional-diffusion-dpo/results.json").read_text())
    assert index["rows"] == 4 and run["finished"] and run["dataset"]["dataset_id"] == index["dataset_id"]
    assert run["base_model"]["sha256"] == folder_sha256(WORLD_MODEL)
    ch = res["provenance"]["chain"]
    assert (ch["run_id"], ch["dataset_id"], ch["base_model_sha256"]) == (
        run["run_id"], index["dataset_id"], run["base_model"]["sha256"])
    assert ch["baseline_is_base_model"] and res["provenance"]["models"]["baseline"]["sha256"] == ch["base_model_sha256"]
    # the world protocol without --config samples with the base folder's own guidance (model_index.json)
    folder = json.loads((WORLD_MODEL / "model_index.json").read_text())
    assert res["protocol"]["sampling"]["guidance_scale"] is None
    assert res["resolved"]["guidance_scale"] == folder["guidance_scale"]
    assert res["resolved"]["graph_guidance_scale"] == folder["graph_guidance_scale"]
    assert (cwd / "runs/eval/compositional-diffusion-dpo/report.html").is_file()


def test_rerun_skips_finished_work(chain, monkeypatch):
    cwd, _ = chain
    monkeypatch.chdir(cwd)
    final = cwd / "runs/train/compositional-diffusion-dpo/final/model_index.json"
    shard = cwd / "runs/pairs/laion-sg/shard-00000.parquet"
    before = final.stat().st_mtime_ns, shard.stat().st_mtime_ns
    assert build_cli.main(["--source", "laion-sg", *TINY_BUILD]) == 0
    assert train_cli.main(["--task", "compositional", *TINY_TRAIN]) == 0
    assert (final.stat().st_mtime_ns, shard.stat().st_mtime_ns) == before


@pytest.mark.parametrize("task,cmd", [("compositional", "python scripts/build_pairs.py --source laion-sg"),
                                      ("t2i", "python scripts/build_pairs.py --source pickapic")])
def test_train_refuses_without_pairs(tmp_path, monkeypatch, capsys, task, cmd):
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["--task", task]) == 2
    assert cmd in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_train_refuses_unfinished_pairs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/pairs/laion-sg").mkdir(parents=True)
    (tmp_path / "runs/pairs/laion-sg/build.json").write_text("{}")
    assert train_cli.main(["--task", "compositional"]) == 2
    assert not (tmp_path / "runs/train").exists()


def test_synthetic_data_only_when_asked(tmp_path):
    from sgalign.config import ConfigError, load_config
    from sgalign.training.config import TrainConfig
    with pytest.raises(ConfigError, match="data.path"):
        load_config(TrainConfig, train_cli.default_config("compositional"), ["data.path=auto"])
    assert load_config(TrainConfig, train_cli.default_config("compositional")).data.path is None


def test_real_laion_sg_vocabulary_fails_before_any_image(tmp_path, monkeypatch, capsys):
    from data_builders import laion_sg

    def no_builder(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(laion_sg, "CandidateBuilder", no_builder)
    card = CARD
    rc = build_cli.main(["--source", "laion-sg", "--annotations", str(card), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "rewards.backends.vqa.path" in err and "rewards.backends.detector.path" in err
    assert not list((tmp_path / "o").glob("*.parquet")) and not (tmp_path / "o" / "build.json").exists()


def test_progress_is_lines_off_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    lines = []
    bar = progress(1000, desc="x", stream=io.StringIO(), log=lines.append)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert len(lines) == 10 and lines[-1].startswith("x: 1000/1000")
    assert not isinstance(progress(10, stream=Tty()), LineProgress)  # a real tqdm bar on a terminal
