"""Builds LAION-SG split files in the real schema for tests: valid records plus malformed ones of known kinds."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any, Callable

LABELS = ["tree", "river", "dog", "house", "car", "mountain", "bench", "lamp", "cloud", "bird"]
ATTRS = ["red", "tall", "old", "calm", "wooden", "small", "bright", "wet"]
RELS = ["next to", "above", "growing near", "in front of", "on", "behind", "adjacent to"]


def valid_record(rng: random.Random, img_id: int) -> dict[str, Any]:
    n = rng.randint(1, 5)
    items = [{"item_id": i, "label": rng.choice(LABELS), "attributes": rng.sample(ATTRS, rng.randint(0, 2)),
              "global_item_id": img_id * 10 + i} for i in range(n)]
    rels = []
    for k in range(rng.randint(0, 3) if n > 1 else 0):
        a, b = rng.sample(range(n), 2)
        rels.append({"triple_id": k, "item1": a, "relation": rng.choice(RELS), "item2": b,
                     "global_relation_id": img_id * 10 + k})
    return {"img_id": str(img_id), "name": f"{img_id:019d}.jpg", "caption_ori": f"caption {img_id}",
            "score": f"{rng.uniform(6.5, 8.0)!r}", "url": f"http://example.com/{img_id}.jpg",
            "items": items, "relations": rels}


def _with_relation(rec: dict[str, Any]) -> dict[str, Any]:
    if len(rec["items"]) < 2:
        rec["items"].append({"item_id": 99, "label": "rock", "attributes": [], "global_item_id": 1})
    if not rec["relations"]:
        rec["relations"].append({"triple_id": 0, "item1": rec["items"][0]["item_id"], "relation": "near",
                                 "item2": rec["items"][1]["item_id"], "global_relation_id": 1})
    return rec


def _unknown_item(rec):
    rec = _with_relation(rec)
    rec["relations"][0]["item2"] = 1000
    return rec, "relations.0.item2"


def _missing_field(rec):
    del rec["url"]
    return rec, "url"


def _img_id_int(rec):
    rec["img_id"] = int(rec["img_id"])
    return rec, "img_id"


def _empty_label(rec):
    rec["items"][0]["label"] = ""
    return rec, "items.0.label"


def _empty_items(rec):
    rec["items"], rec["relations"] = [], []
    return rec, "items"


def _relations_not_list(rec):
    rec["relations"] = {"triple_id": 0}
    return rec, "relations"


def _duplicate_item_ids(rec):
    rec = _with_relation(rec)
    rec["items"][1]["item_id"] = rec["items"][0]["item_id"]
    return rec, "items.1.item_id"


def _score_not_float(rec):
    rec["score"] = "high"
    return rec, "score"


def _attributes_not_list(rec):
    rec["items"][0]["attributes"] = "red"
    return rec, "items.0.attributes"


def _not_an_object(rec):
    return ["not", "a", "record"], ""


def _item_id_string(rec):
    rec["items"][0]["item_id"] = "0"
    return rec, "items.0.item_id"


def _blank_relation(rec):
    rec = _with_relation(rec)
    rec["relations"][0]["relation"] = "   "
    return rec, "relations.0.relation"


MALFORMATIONS: list[Callable[[dict[str, Any]], tuple[Any, str]]] = [
    _unknown_item, _missing_field, _img_id_int, _empty_label, _empty_items, _relations_not_list,
    _duplicate_item_ids, _score_not_float, _attributes_not_list, _not_an_object, _item_id_string, _blank_relation,
]


def write_mixed_split(path: Path, n: int = 1000, n_bad: int = 50, seed: int = 0) -> dict[int, str]:
    """Write ``n`` records of which ``n_bad`` are malformed (cycling through every kind); returns
    {index: expected failing field} for the malformed ones."""
    rng = random.Random(seed)
    records: list[Any] = [valid_record(rng, 100000 + i) for i in range(n)]
    bad_idx = sorted(rng.sample(range(n), n_bad))
    expected: dict[int, str] = {}
    for j, i in enumerate(bad_idx):
        records[i], field = MALFORMATIONS[j % len(MALFORMATIONS)](copy.deepcopy(records[i]))
        expected[i] = field
    path.write_text(json.dumps(records))
    return expected
