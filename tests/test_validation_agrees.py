"""One validator (issue 16 item 4): what validate_sg.py rejects, build_pairs rejects (the same records, the same
reasons), and what it accepts every stage takes (int64-range ids through the graph encodings and a dataset row)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_builders.laion_sg import plan_annotations
from laion_sg_factory import _with_relation, valid_record as _valid
from sgalign.scene_graph import LaionSGRecord, SceneGraph, build_token_graph, clip_tokenizer, load_split, write_split

REPO = Path(__file__).resolve().parent.parent


def valid_record(img_id: str) -> dict:
    import random
    return _with_relation(_valid(random.Random(int(img_id)), int(img_id)))


def _bad_cases():
    big = valid_record(img_id="11")
    big["items"][0]["item_id"] = 2 ** 70
    big["relations"][0]["item1"] = 2 ** 70
    sup, arabic = valid_record(img_id="12"), valid_record(img_id="13")
    sup["img_id"], arabic["img_id"] = "²³", "١٢٣"
    nan, inf = valid_record(img_id="14"), valid_record(img_id="15")
    nan["score"], inf["score"] = "nan", "inf"
    dup = valid_record(img_id="10")
    return [valid_record(img_id="10"), big, sup, arabic, nan, inf, dup]


def test_validator_and_build_pairs_reject_the_same_records(tmp_path):
    split = tmp_path / "s.json"
    write_split(_bad_cases(), split)
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "validate_sg.py"), str(split)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and p.stdout.strip().endswith("1 valid, 6 rejected")
    loaded = load_split(split)
    assert [(r.index, r.field.split(".")[0]) for r in loaded.rejects] == [
        (1, "items"), (2, "img_id"), (3, "img_id"), (4, "score"), (5, "score"), (6, "img_id")]
    plan = plan_annotations(split)
    assert [r.img_id for r in plan.records] == ["10"]
    assert [(r["index"], r["reason"]) for r in plan.rejects] == [(r.index, r.reason) for r in loaded.rejects]


def test_what_the_validator_accepts_every_stage_takes():
    rec = valid_record(img_id="20")
    for it in rec["items"]:
        it["item_id"] += 2 ** 63 - 1 - len(rec["items"])
        it["global_item_id"] = 2 ** 63 - 1
    for r in rec["relations"]:
        r["item1"] += 2 ** 63 - 1 - len(rec["items"])
        r["item2"] += 2 ** 63 - 1 - len(rec["items"])
    r = LaionSGRecord.model_validate(rec)
    g = SceneGraph.from_record(r)
    assert g.to_pyg().num_nodes == len(rec["items"]) and build_token_graph(g, clip_tokenizer()) is not None
    back = LaionSGRecord.model_validate_json(r.model_dump_json())  # a candidate dataset row's annotation
    assert back == r and SceneGraph.from_record(back).to_record(img_id="20") is not None
