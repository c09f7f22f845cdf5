"""The table over training seeds (sgalign.jobs.seeds): pooled Δ per graph over training and noise seeds, the
per-seed figures as each job computed them, and a refusal when the folders scored different base images."""
import json

import numpy as np
import pytest

from sgalign.jobs.seeds import seeds_markdown, seeds_table

METRICS = ("sg_iou", "entity_iou", "relation_iou")
KEY = "phrase/normalized"


def _job(root, seed, base, model, drift=1e-3):
    """A finished job folder with one method "m" (2 noise seeds per graph, image g*2 + k)."""
    d = root / f"seed-{seed}"
    (d / "eval" / "m").mkdir(parents=True)
    (d / "train" / "m").mkdir(parents=True)
    per = lambda v: [{m: float(x) for m in METRICS} for x in v]
    ci = {m: {"estimate": float(np.mean(model) - np.mean(base)), "low": -1.0, "high": 1.0} for m in METRICS}
    res = {"protocol": {"sampling": {"seeds": [0, 1]}},
           "metrics": {"iou": {"model": {KEY: {"per_image": per(model)}}, "baseline": {KEY: {"per_image": per(base)}}},
                       "vs_baseline": {KEY: ci},
                       "fid": {"model": {"fid": 10.0 + seed}, "baseline": {"fid": 8.0},
                               "vs_baseline": {"p_value": 0.5}}}}
    (d / "eval" / "m" / "results.json").write_text(json.dumps(res))
    (d / "train" / "m" / "summary.json").write_text(json.dumps({"implicit_acc": 0.7, "weight_drift": drift,
                                                               "seconds": 5.0}))
    (d / "job.json").write_text(json.dumps({"seed": seed, "budget": {"eval_graphs": 2, "eval_split": "test",
                                                                     "eval_seeds": [0, 1]}}))
    return d


def test_pooled_delta_averages_each_graph_over_training_and_noise_seeds(tmp_path):
    base = [0, 0, 0, 0]  # 2 graphs x 2 noise seeds
    a = _job(tmp_path, 0, base, [1, 1, 0, 0])  # seed 0: graph 0 gains 1
    b = _job(tmp_path, 1, base, [1, 0, 0, 1])  # seed 1: each graph gains 0.5
    t = seeds_table([a, b], ["m"], n_resamples=500)
    p = t["methods"]["m"]["pooled"]["sg_iou"]
    # per graph over both seeds: graph 0 (1 + 0.5) / 2 = 0.75, graph 1 (0 + 0.5) / 2 = 0.25
    assert p["estimate"] == pytest.approx(0.5)
    assert p["low"] == pytest.approx(0.25) and p["high"] == pytest.approx(0.75)  # resamples of 2 graphs
    assert p["seed_spread"] == pytest.approx(0.0) and t["methods"]["m"]["fid_mean"] == pytest.approx(10.5)
    assert [s["seed"] for s in t["methods"]["m"]["per_seed"]] == [0, 1]
    md = seeds_markdown(t)
    assert "| m | +0.500 [+0.250, +0.750] * |" in md and "| m | 1 |" in md


def test_refuses_folders_that_scored_different_base_images(tmp_path):
    a = _job(tmp_path, 0, [0, 0, 0, 0], [1, 1, 1, 1])
    b = _job(tmp_path, 1, [0, 0, 0, 1], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="did not evaluate the same"):
        seeds_table([a, b], ["m"])
