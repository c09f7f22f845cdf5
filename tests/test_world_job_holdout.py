"""Held-out colour-shape combinations in the world job (budget ``holdout``): pairs from train graphs that never contain
them, evaluation on test graphs that always contain one. Micro budget, tiny RANDOM-INIT base (plumbing only)."""
import json
from dataclasses import replace

import pytest

from data_builders.laion_sg import load_candidates
from sgalign.config import ConfigError
from sgalign.evaluation.protocol import load_protocol
from sgalign.jobs.specs import BUDGETS, eval_protocol, pairs_command, pairs_config
from sgalign.jobs.world_job import run_world_job
from sgalign.pipelines.tiny import make_tiny
from sgalign.world import sample_split

HELD = ["red:circle", "blue:square"]


def _combos(record: dict) -> set[tuple[str, str]]:
    return {(it["attributes"][0], it["label"]) for it in record["items"]}


def test_holdout_reaches_pairs_and_evaluation_configs(tmp_path):
    b = replace(BUDGETS["micro"], holdout=HELD)
    assert pairs_config(tmp_path, b, 0).world.holdout == HELD
    assert "world.holdout=" in pairs_command(tmp_path, tmp_path, b, 0)
    p = eval_protocol(b, 0)
    assert p.inputs.holdout == HELD and p.inputs.novel_only is True
    v = eval_protocol(replace(b, eval_split="validation"), 0)
    assert v.inputs.novel_only is False  # validation graphs never contain a held-out pair
    assert eval_protocol(BUDGETS["micro"], 0).inputs.holdout == []
    with pytest.raises(ValueError, match="holdout 'red:cube'"):
        replace(BUDGETS["micro"], holdout=["red:cube"])
    with pytest.raises(ValueError, match="list of 'colour:shape'"):
        replace(BUDGETS["micro"], holdout="red:circle")
    with pytest.raises(ConfigError, match="novel_only needs inputs.split=test"):
        load_protocol(None, ["inputs.novel_only=true", "inputs.holdout=[red:circle]", "inputs.split=validation"])


def test_job_with_holdout(tmp_path):
    base = make_tiny("sd15-sg", tmp_path / "tiny-base", seed=0)
    out = tmp_path / "job"
    paths = run_world_job(out, budget="micro", methods=["sft"], base_model=base, holdout=HELD)
    held = {tuple(h.split(":")) for h in HELD}
    train = [json.loads(r) for r in load_candidates(out / "pairs")["annotation"]]
    assert train and all(not (_combos(r) & held) for r in train)
    res = json.loads((out / "eval" / "sft" / "results.json").read_text())
    assert res["protocol"]["inputs"]["novel_only"] is True and res["protocol"]["inputs"]["holdout"] == HELD
    scenes = sample_split("test", 2, seed=0, holdout=HELD, novel_only=True)
    assert all({(o.colour, o.shape) for o in sc.objects} & held for sc in scenes)
    assert res["provenance"]["inputs"]["novel_only"] is True
    assert "novel combinations" in paths["markdown"].read_text()
    job = json.loads((out / "job.json").read_text())
    assert job["budget"]["holdout"] == HELD
