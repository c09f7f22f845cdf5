"""Validation tuning (sgalign.jobs.tune): the choice rule (FID guard), and a 2-cell grid end to end at the micro
budget on a tiny RANDOM-INIT base (plumbing only): one training run, two checkpoints evaluated on validation graphs,
grid.json / grid.md, and the choice written only when asked, to a new file that includes the world YAML (no
tracked config edited)."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from sgalign.config import load_config
from sgalign.jobs.specs import TRAIN_CONFIG, BUDGETS, eval_protocol
from sgalign.jobs.tune import TuneGrid, choose, paired_delta, run_tune, write_tuned_config
from sgalign.pipelines.tiny import make_tiny
from sgalign.jobs.train_cli import main as train_main
from sgalign.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _cell(name, sg, fid, step=10):
    return {"cell": name, "sg_iou": sg, "fid": fid, "step": step}


def test_choice_rule_fid_guard():
    cells = [_cell("a", 0.30, 50.0), _cell("b", 0.45, 56.0), _cell("c", 0.40, 54.9)]
    pick = choose(cells, base_fid=50.0)  # limit 55.0: b (best SG-IoU) is over the guard
    assert pick["cell"]["cell"] == "c" and pick["limit"] == pytest.approx(55.0)
    assert choose(cells, base_fid=60.0)["cell"]["cell"] == "b"
    assert choose(cells, base_fid=10.0)["cell"] is None
    # equal SG-IoU: fewer steps wins; no FID at all: no guard
    tie = [_cell("long", 0.4, 1.0, step=20), _cell("short", 0.4, 1.0, step=10)]
    assert choose(tie, base_fid=1.0)["cell"]["cell"] == "short"
    assert choose([_cell("x", 0.1, None)], base_fid=None)["cell"]["cell"] == "x"


def test_budget_eval_split_reaches_the_protocol():
    from dataclasses import replace
    assert eval_protocol(BUDGETS["micro"], 0).inputs.split == "test"
    # training seeds share the evaluation graphs (their spread is the training's); the bootstrap follows the seed
    p1 = eval_protocol(BUDGETS["micro"], 1)
    assert p1.inputs.seed == eval_protocol(BUDGETS["micro"], 0).inputs.seed == 0 and p1.stats.seed == 1
    assert eval_protocol(replace(BUDGETS["micro"], eval_split="validation"), 0).inputs.split == "validation"
    with pytest.raises(ValueError, match="eval_split 'train'"):
        replace(BUDGETS["micro"], eval_split="train")
    with pytest.raises(ValueError, match="unknown method 'dpo'"):
        TuneGrid("dpo")


def _configs() -> dict[str, bytes]:
    return {str(f.relative_to(REPO)): f.read_bytes() for f in sorted((REPO / "configs").rglob("*")) if f.is_file()}


def test_two_cell_grid_end_to_end(tmp_path):
    tracked = _configs()
    base = make_tiny("sd15-sg", tmp_path / "tiny-base", seed=0)
    grid = TuneGrid("diffusion-dpo", betas=[1000.0], lrs=[1e-5], steps=[1, 2],
                    train_sets=["data.proportion_empty_prompts=0.2"])
    rec = run_tune(tmp_path / "tune", grid, budget="micro", base_model=base)
    out = tmp_path / "tune"
    assert [(c["cell"], c["step"]) for c in rec["cells"]] == [("beta1000-lr1e-05", 1), ("beta1000-lr1e-05", 2)]
    for c in rec["cells"]:
        res = json.loads((out / c["results"]).read_text())
        assert res["protocol"]["inputs"]["split"] == "validation"
        assert c["sg_iou"] == res["metrics"]["iou"]["model"][c["key"]]["ci"]["sg_iou"]["estimate"]
        assert c["fid"] == res["metrics"]["fid"]["model"]["fid"]
        d = c["delta_sg_iou"]
        assert d["low"] <= d["estimate"] <= d["high"]
        assert "weight_drift" in c["train_summary"]
    # one training run, checkpointed at step 1, with the cell's β
    resolved = yaml.safe_load((out / "train" / "beta1000-lr1e-05" / "resolved_config.yaml").read_text())
    assert resolved["method"]["options"]["diffusion-dpo"]["beta"] == 1000.0
    assert resolved["trainer"]["max_steps"] == 2 and resolved["data"]["proportion_empty_prompts"] == 0.2
    base_res = json.loads((out / "eval" / "base" / "results.json").read_text())
    assert rec["base"]["fid"] == base_res["metrics"]["fid"]["model"]["fid"]
    assert rec["fid_limit"] == pytest.approx(rec["base"]["fid"] * 1.10)
    assert json.loads((out / "grid.json").read_text())["cells"] == rec["cells"]
    assert "| beta1000-lr1e-05 | 2 |" in (out / "grid.md").read_text()
    assert not (out / "tuned.yaml").exists()  # not asked: no config written
    # asked (a rerun: every stage is skipped): the choice goes to a new file including the world YAML
    rec2 = run_tune(out, grid, budget="micro", base_model=base, write_config=True)
    assert rec2["cells"] == rec["cells"] and rec2["chosen"] == rec["chosen"]
    tuned = out / "tuned.yaml"
    if rec["chosen"] is None:  # a random-init micro run may fail the FID guard: then nothing is written
        assert not tuned.exists()
        write_tuned_config(tuned, "diffusion-dpo", rec["cells"][0], out / "grid.json", TRAIN_CONFIG)
    cell = rec["chosen"] or rec["cells"][0]
    assert _configs() == tracked  # every tracked config byte-identical
    # the including config resolves to the tuned values over the world YAML's
    world = yaml.safe_load(TRAIN_CONFIG.read_text())
    cfg = load_config(TrainConfig, tuned)
    assert cfg.method.name == "diffusion-dpo" and cfg.method.options["diffusion-dpo"] == {"beta": cell["beta"]}
    assert (cfg.optimizer.lr, cfg.trainer.max_steps) == (cell["lr"], cell["step"])
    assert cfg.method.options["smpo"] == world["method"]["options"]["smpo"]
    assert cfg.method.settings["sft"] == world["method"]["settings"]["sft"]
    assert cfg.data.batch_size == world["data"]["batch_size"]
    # a run from it records the final lr / steps / β in its resolved config (the one source a run reads)
    run = tmp_path / "run"
    assert train_main(["--task", "compositional", "--config", str(tuned), "--set", f"model.path={base}",
                       "--set", f"data.path={out / 'pairs'}", "--set", f"trainer.output_dir={run}",
                       "--set", "checkpointing.every=0", "--set", "logging.tqdm=false"]) == 0
    ran = yaml.safe_load((run / "resolved_config.yaml").read_text())
    assert (ran["optimizer"]["lr"], ran["trainer"]["max_steps"]) == (cell["lr"], cell["step"])
    assert ran["method"]["name"] == "diffusion-dpo" and ran["method"]["options"]["diffusion-dpo"]["beta"] == 1000.0
    assert json.loads((run / "summary.json").read_text())["steps"] == cell["step"]
    # a file tuning did not write (a tracked config, a copy of one) is never replaced
    copy = tmp_path / "compositional.yaml"
    shutil.copy(TRAIN_CONFIG, copy)
    with pytest.raises(ValueError, match="not written by tuning"):
        write_tuned_config(copy, "diffusion-dpo", cell, out / "grid.json", TRAIN_CONFIG)
    assert copy.read_bytes() == TRAIN_CONFIG.read_bytes()
    with pytest.raises(ValueError, match="another method/budget/seed"):
        run_tune(out, TuneGrid("smpo"), budget="micro", base_model=base)


def _res(values, key="phrase/normalized"):
    return {"metrics": {"iou": {"model": {key: {"per_image": [{"sg_iou": v} for v in values]}}}}}


def test_paired_delta_resamples_graphs_with_their_seeds():
    # 4 graphs x 2 seeds; the model gains exactly on graphs 0 and 1 (both seeds): Δ = 0.5 on average
    model, base = _res([1, 1, 1, 1, 0, 0, 0, 0]), _res([0] * 8)
    d = paired_delta(model, base, "phrase/normalized", n_seeds=2, n_resamples=2000)
    assert d["estimate"] == pytest.approx(0.5)
    # a resample draws whole graphs: every bootstrap mean is a multiple of 1/4, so the bounds are too
    assert (4 * d["low"]).is_integer() and (4 * d["high"]).is_integer() and d["low"] <= 0.25 and d["high"] >= 0.75
    # NaN images are left out on both sides
    d2 = paired_delta(_res([1, float("nan"), 1, 1, 0, 0, 0, 0]), base, "phrase/normalized", n_seeds=2)
    assert d2["estimate"] == pytest.approx(3 / 7)


def _t2i_cell(name, step, reward, heldout_high):
    return {"cell": name, "step": step,
            "scorers": {"world_reward": {"win_rate": {"estimate": reward, "low": reward - 0.05, "high": reward + 0.05}},
                        "world_clip": {"win_rate": {"estimate": heldout_high - 0.05, "low": heldout_high - 0.1,
                                                    "high": heldout_high}}}}


def test_t2i_choice_is_early_stopping_under_the_heldout_scorer():
    from sgalign.jobs.tune import choose_t2i
    cells = [_t2i_cell("a", 50, 0.55, 0.60), _t2i_cell("a", 100, 0.60, 0.52), _t2i_cell("a", 200, 0.70, 0.45)]
    pick = choose_t2i(cells)  # step 200 wins most on the reward but loses on world-CLIP (interval below 0.5)
    assert (pick["cell"]["cell"], pick["cell"]["step"]) == ("a", 100)
    assert choose_t2i([cells[2]])["cell"] is None
    with pytest.raises(ValueError, match="compositional task only"):
        TuneGrid("diffusion-dpo@gold", task="t2i")


def test_t2i_grid_end_to_end_scores_win_rates_against_the_base(tmp_path):
    import numpy as np
    base = make_tiny("sd15-sg", tmp_path / "tiny-base", seed=0)
    rec = run_tune(tmp_path / "tune", TuneGrid("diffusion-dpo", betas=[1000.0], lrs=[1e-5], steps=[1, 2], task="t2i"),
                   budget="micro", base_model=base)
    out = tmp_path / "tune"
    base_res = json.loads((out / "eval" / "base" / "results.json").read_text())
    assert base_res["protocol"]["task"] == "t2i" and base_res["protocol"]["inputs"]["split"] == "validation"
    for c in rec["cells"]:
        res = json.loads((out / c["results"]).read_text())
        for name, sc in c["scorers"].items():  # the win-rate is the paired outcome of the cell vs the base images
            a = np.array(res["metrics"]["scores"]["model"][name]["per_image"])
            b = np.array(base_res["metrics"]["scores"]["model"][name]["per_image"])
            assert sc["win_rate"]["estimate"] == pytest.approx(np.mean((a > b) + 0.5 * (a == b)))
    resolved = yaml.safe_load((out / "train" / "beta1000-lr1e-05" / "resolved_config.yaml").read_text())
    assert resolved["task"] == "t2i" and rec["task"] == "t2i" and rec["chosen"] is not None
    assert "win-rate world_clip" in (out / "grid.md").read_text()


def _draw_res(sg, key="phrase/normalized", noise="per-graph"):
    return {"protocol": {"sampling": {"noise": noise}}, "metrics": {"iou": {"model": {key: {"per_image": [
        {"sg_iou": v, "entity_iou": v / 2, "relation_iou": v} for v in sg]}}}}}


def test_tune_over_pair_draws_pools_each_graph_and_chooses_on_the_pool(tmp_path, monkeypatch):
    """Worked example, 2 draws x 2 validation graphs x 2 noise seeds, base all 0. Cell b is the best of draw 0 but
    its mean FID over the draws (12) is over the guard (11); cell c gains on both graphs in draw 0 only: pooled
    +0.5; cell a gains on graph 0 in draw 0 only: +0.25. The pooled choice is c."""
    import sgalign.jobs.tune as tune
    per_draw = {0: {"a": ([1, 1, 0, 0], 10.0), "b": ([1, 1, 1, 1], 10.0), "c": ([1, 1, 1, 1], 10.0)},
                1: {"a": ([0, 0, 0, 0], 10.0), "b": ([1, 1, 1, 1], 14.0), "c": ([0, 0, 0, 0], 10.0)}}
    budget = {"name": "micro", "eval_graphs": 2, "eval_seeds": [0, 1], "eval_steps": 2, "eval_split": "validation",
              "n_resamples": 500}
    calls = []

    def fake_run_tune(out, grid, budget_, seed, base_model=None, **kw):
        calls.append(seed)
        out.mkdir(parents=True)
        (out / "eval" / "base").mkdir(parents=True)
        (out / "eval" / "base" / "results.json").write_text(json.dumps(_draw_res([0, 0, 0, 0])))
        cells = []
        for name, (sg, fid) in per_draw[seed].items():
            (out / name).mkdir()
            (out / name / "results.json").write_text(json.dumps(_draw_res(sg)))
            cells.append({"cell": name, "beta": 1000.0, "lr": 1e-5, "options": {}, "step": 2, "sg_iou": sum(sg) / 4,
                          "entity_iou": sum(sg) / 8, "relation_iou": sum(sg) / 4, "fid": fid,
                          "delta_sg_iou": {"estimate": sum(sg) / 4, "low": 0.0, "high": 1.0},
                          "train_summary": {"implicit_acc": 0.6}, "results": f"{name}/results.json"})
        return {"method": grid.method, "task": "compositional", "trainer_method": "diffusion-dpo",
                "grid": {"fid_guard": 1.1}, "steps": [2], "budget": budget, "seed": seed, "base_snapshot": {},
                "base": {"key": "phrase/normalized", "sg_iou": 0.0, "entity_iou": 0.0, "relation_iou": 0.0,
                         "fid": 10.0}, "cells": cells}

    monkeypatch.setattr(tune, "run_tune", fake_run_tune)
    rec = tune.run_tune_draws(tmp_path / "t", TuneGrid("diffusion-dpo"), seeds=[0, 1, 0])
    assert calls == [0, 1] and rec["seeds"] == [0, 1]
    cells = {c["cell"]: c for c in rec["cells"]}
    assert cells["a"]["delta_sg_iou"]["estimate"] == pytest.approx(0.25)
    assert cells["c"]["delta_sg_iou"]["estimate"] == pytest.approx(0.5)
    assert cells["c"]["delta_entity_iou"]["estimate"] == pytest.approx(0.25)
    # a resample holds each graph with all its draws and seeds: a's graphs pool to +0.5 and 0, so its bounds are
    # graph 1 twice (0) and graph 0 twice (0.5); both of c's graphs pool to +0.5
    assert (cells["a"]["delta_sg_iou"]["low"], cells["a"]["delta_sg_iou"]["high"]) == (0.0, 0.5)
    assert (cells["c"]["delta_sg_iou"]["low"], cells["c"]["delta_sg_iou"]["high"]) == (0.5, 0.5)
    assert cells["b"]["fid"] == pytest.approx(12.0) and not cells["b"]["eligible"] and cells["c"]["eligible"]
    assert rec["chosen"]["cell"] == "c" and rec["fid_limit"] == pytest.approx(11.0)
    assert [d["seed"] for d in cells["c"]["draws"]] == [0, 1]
    assert cells["c"]["draws"][1]["results"] == "seed-1/c/results.json"
    md = (tmp_path / "t" / "grid.md").read_text()
    assert "pair draws [0, 1], pooled" in md and "+1.000 (10.00), +0.000 (10.00)" in md
    assert json.loads((tmp_path / "t" / "grid.json").read_text())["chosen"]["cell"] == "c"
    # draws scored on different images cannot be pooled
    per_draw[2] = per_draw[1]
    orig = fake_run_tune

    def other_base(out, grid, budget_, seed, base_model=None, **kw):
        r = orig(out, grid, budget_, seed, base_model)
        if seed == 2:
            (out / "eval" / "base" / "results.json").write_text(json.dumps(_draw_res([0, 0, 0, 1])))
        return r

    monkeypatch.setattr(tune, "run_tune", other_base)
    with pytest.raises(ValueError, match="base scores differ"):
        tune.run_tune_draws(tmp_path / "t2", TuneGrid("diffusion-dpo"), seeds=[0, 2])
    with pytest.raises(ValueError, match="at least 2 distinct"):
        tune.run_tune_draws(tmp_path / "t3", TuneGrid("diffusion-dpo"), seeds=[1, 1])
    with pytest.raises(ValueError, match="compositional task only"):
        tune.run_tune_draws(tmp_path / "t4", TuneGrid("diffusion-dpo", task="t2i"), seeds=[0, 1])
