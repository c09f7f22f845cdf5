"""The end-to-end world job (sgalign.jobs.world_job) at the micro budget on a tiny RANDOM-INIT base model
(make_tiny: plumbing only, the numbers mean nothing): table files, values traced to the stage outputs, resume."""
import json

import pytest

from sgalign.pipelines.tiny import make_tiny
from sgalign.jobs.world_job import BUDGETS, resolve_budget, run_world_job


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("world-job")
    base = make_tiny("sd15-sg", root / "tiny-base", seed=0)
    out = root / "job"
    paths = run_world_job(out, budget="micro", methods=["diffusion-dpo"], base_model=base)
    return out, base, paths


def test_job_writes_table_traced_to_stage_outputs(job):
    out, _, paths = job
    assert {k: p.exists() for k, p in paths.items()} == {"markdown": True, "json": True, "html": True}
    table = json.loads(paths["json"].read_text())
    res = json.loads((out / "eval" / "diffusion-dpo" / "results.json").read_text())
    summary = json.loads((out / "train" / "diffusion-dpo" / "summary.json").read_text())
    assert set(table["tables"]) == {"phrase/normalized", "label/normalized"}
    t = table["tables"]["label/normalized"]
    (row,) = t["rows"]
    assert row["method"] == "diffusion-dpo" and table["missing"] == []
    m = res["metrics"]
    for name in ("sg_iou", "entity_iou", "relation_iou"):
        assert row[name] == m["iou"]["model"]["label/normalized"]["ci"][name]
        assert row[f"delta_{name}"] == m["vs_baseline"]["label/normalized"][name]
        assert t["base"][name] == m["iou"]["baseline"]["label/normalized"]["ci"][name]
    assert row["fid"]["estimate"] == m["fid"]["model"]["fid"]
    assert row["train_seconds"] == summary["seconds"] > 0
    # Diffusion-DPO: policy and reference on winner and loser = 4 UNet forwards per pair
    assert row["unet_forwards_per_pair"] == summary["unet_forwards_per_pair"] == 4.0
    assert row["train_steps"] == BUDGETS["micro"].train_steps
    # the protocol of the micro budget reached the evaluation; the base snapshot is the given folder
    assert res["protocol"]["sampling"]["seeds"] == [0] and len(res["inputs"]["ids"]) == 2
    assert table["job"]["base"]["random_init"] is True
    md = paths["markdown"].read_text()
    assert "RANDOM-INIT base model" in md and "[diffusion-dpo](eval/diffusion-dpo/report.html)" in md
    assert 'href="eval/diffusion-dpo/report.html"' in paths["html"].read_text()
    assert (out / "eval" / "diffusion-dpo" / "report.html").exists()
    assert (out / "pairs" / "index.json").exists()


def test_rerun_skips_finished_stages_and_redoes_a_missing_one(job, capsys):
    out, base, _ = job
    results = out / "eval" / "diffusion-dpo" / "results.json"
    final = out / "train" / "diffusion-dpo" / "final" / "model_index.json"
    before = results.stat().st_mtime_ns, final.stat().st_mtime_ns
    capsys.readouterr()
    run_world_job(out, budget="micro", methods=["diffusion-dpo"], base_model=base)
    log = capsys.readouterr().out
    for stage in ("[base] done", "[pairs] done", "[train diffusion-dpo] done", "[eval diffusion-dpo] done"):
        assert stage in log
    assert (results.stat().st_mtime_ns, final.stat().st_mtime_ns) == before
    # an evaluation without its report is unfinished: only that stage runs again
    (out / "eval" / "diffusion-dpo" / "report.html").unlink()
    run_world_job(out, budget="micro", methods=["diffusion-dpo"], base_model=base)
    log = capsys.readouterr().out
    assert "[train diffusion-dpo] done" in log and "[eval diffusion-dpo] 2 test graphs" in log
    assert (out / "eval" / "diffusion-dpo" / "report.html").exists()
    assert final.stat().st_mtime_ns == before[1]
    # the redone evaluation took both models' images from the job's image cache (same folders, same protocol)
    models = json.loads(results.read_text())["provenance"]["models"]
    assert models["model"]["images_from_cache"] and models["baseline"]["images_from_cache"]
    assert len(list((out / "eval" / ".image-cache").glob("*.npz"))) == 2


def test_bad_requests_are_clear_errors(job, tmp_path):
    out, base, _ = job
    with pytest.raises(ValueError, match="another budget/seed"):
        run_world_job(out, budget="micro", methods=["diffusion-dpo"], base_model=base, seed=1)
    with pytest.raises(ValueError, match="unknown method"):
        run_world_job(tmp_path / "x", budget="micro", methods=["dpo"], base_model=base)
    with pytest.raises(ValueError, match="unknown budget"):
        resolve_budget("huge")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        run_world_job(tmp_path / "y", budget="micro", methods=["sft"], base_model=tmp_path)


# ---- the t2i job (world Pick-a-Pic pairs -> build_pairs --source pickapic -> train --task t2i -> evaluate t2i) ----
@pytest.fixture(scope="module")
def t2i_job(tmp_path_factory):
    from sgalign.world.paths import world_model_path

    if not (world_model_path() / "model_index.json").exists():
        pytest.skip("needs the shipped world SD1.5-SG (a random-init base ties every reward pair)")
    out = tmp_path_factory.mktemp("world-t2i-job") / "job"
    # 4 captions: the micro budget's 2 rows could all tie, leaving no pair to train on
    paths = run_world_job(out, budget="micro", methods=["diffusion-dpo"], task="t2i", annotations=4)
    return out, paths


def test_t2i_job_table_traced_to_stage_outputs(t2i_job):
    out, paths = t2i_job
    table = json.loads(paths["json"].read_text())
    res = json.loads((out / "eval" / "diffusion-dpo" / "results.json").read_text())
    summary = json.loads((out / "train" / "diffusion-dpo" / "summary.json").read_text())
    assert res["task"] == "t2i" and table["job"]["task"] == "t2i" and table["missing"] == []
    # the base's text path as a plain SD1.5 folder: what train --task t2i exports and evaluate --task t2i loads
    assert json.loads((out / "base-t2i" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert not (out / "base-t2i" / "sg_encoder").exists()
    assert json.loads((out / "train" / "diffusion-dpo" / "final" / "model_index.json").read_text())["_class_name"] \
        == "StableDiffusionPipeline"
    for scorer in table["tables"]:
        (row,) = table["tables"][scorer]["rows"]
        vs = res["metrics"]["vs_baseline"][scorer]
        assert row["win_rate"] == vs["win_rate"] and row["mean_difference"] == vs["mean_difference"]
        assert row["mean"] == vs["mean_a"] and table["tables"][scorer]["base"]["median"] == vs["median_b"]
        assert row["unet_forwards_per_pair"] == summary["unet_forwards_per_pair"] == 4.0
        assert row["train_seconds"] == summary["seconds"] > 0
    assert "world_reward" in table["tables"]
    # the pairs trained on: the world Pick-a-Pic file, ties dropped, world-CLIP score columns for SmPO
    pk = json.loads((out / "pickapic" / "world_pickapic.json").read_text())
    pairs = json.loads((out / "pairs" / "summary.json").read_text())
    assert pk["rows"] == 4 and pairs["pairs"] == 4 - pk["labels"]["ties"] and pairs["score_columns"] == ["ps_0", "ps_1"]
    md = paths["markdown"].read_text()
    assert "World t2i results table (micro budget)" in md and "[diffusion-dpo](eval/diffusion-dpo/report.html)" in md
    assert res["protocol"]["sampling"]["seeds"] == [0] and len(res["inputs"]["prompts"]) == 2


def test_t2i_job_resumes_and_refuses_another_task(t2i_job, capsys):
    out, _ = t2i_job
    capsys.readouterr()
    run_world_job(out, budget="micro", methods=["diffusion-dpo"], task="t2i", annotations=4)
    log = capsys.readouterr().out
    for stage in ("[base] done", "[base-t2i] done", "[pairs] done", "[train diffusion-dpo] done",
                  "[eval diffusion-dpo] done"):
        assert stage in log
    with pytest.raises(ValueError, match="holds a t2i job"):
        run_world_job(out, budget="micro", methods=["diffusion-dpo"], annotations=4)
    with pytest.raises(ValueError, match="unknown task"):
        run_world_job(out, budget="micro", task="video")


@pytest.mark.parametrize("task", ["compositional", "t2i"])
def test_stage_configs_are_their_command_lines(tmp_path, task):
    """The typed configs the job builds equal what the equivalent command lines (and --set strings) load."""
    import shlex

    from data_builders.cli import load, parse_args
    from sgalign.evaluation.protocol import load_protocol
    from sgalign.jobs.specs import TASK_CONFIGS, eval_protocol, pairs_command, pairs_config

    b = resolve_budget("demo")
    base = None if task == "t2i" else tmp_path / "base"
    argv = shlex.split(pairs_command(tmp_path / "pairs", base, b, 0, task, input=tmp_path / "pk"))[2:]
    assert load(parse_args(argv)) == pairs_config(base, b, 0, task)
    fid = ["compositional.fid_resamples=200"] if task == "compositional" else []
    sets = ["inputs.n=64", "inputs.seed=0", "sampling.seeds=[0, 1]", "sampling.steps=20", "sampling.torch_threads=1",
            "stats.n_resamples=1000", "stats.seed=0", *fid, "report.grid_graphs=4"]
    assert load_protocol(str(TASK_CONFIGS[task][1]), sets, task=task) == eval_protocol(b, 0, task)
