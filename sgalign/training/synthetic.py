"""SYNTHETIC placeholder data in both training formats, from a handful of procedurally generated images.

For tests and for the world defaults until ``build_pairs`` has produced a real candidate dataset: images are
coloured rectangles on a background (seeded), rewards are seeded random numbers. Nothing here is a real
preference; provenance says ``"synthetic": true``.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..scene_graph import SceneGraph
from ..pair_schema import candidate_features

SYNTHETIC_NOTE = "SYNTHETIC placeholder data from sgalign.training.synthetic: random images and rewards"
_LABELS = ["cube", "ball", "cone", "ring", "tile"]
_ATTRS = ["red", "blue", "green", "small", "large"]
_RELS = ["left of", "above", "next to"]


def synthetic_image(rng: np.random.Generator, size: int, fmt: str = "PNG") -> bytes:
    a = np.empty((size, size, 3), np.uint8)
    a[:] = rng.integers(0, 256, 3)
    for _ in range(2):
        y, x = rng.integers(0, size - size // 4, 2)
        h, w = rng.integers(size // 4, size // 2 + 1, 2)
        a[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def synthetic_graph(rng: np.random.Generator) -> SceneGraph:
    n = int(rng.integers(1, 4))
    items = [(str(rng.choice(_LABELS)), [str(rng.choice(_ATTRS))]) for _ in range(n)]
    rels = [(0, str(rng.choice(_RELS)), 1)] if n > 1 else []
    return SceneGraph.from_triples(items, rels)


def write_candidate_dataset(path: str | Path, rows: int = 4, k: int = 4, size: int = 16, seed: int = 0,
                            corrupt: list[tuple[int, int]] = ()) -> Path:
    """A ``save_to_disk`` candidate dataset of ``rows`` annotations x ``k`` candidates. ``corrupt``: (row, cand)
    whose PNG bytes are replaced by garbage (to test skipping)."""
    from datasets import Dataset  # heavy (~1 s): only where a dataset is written
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {c: [] for c in ("annotation", "candidates", "seeds", "scores", "reward", "provenance")}
    for r in range(rows):
        rec = synthetic_graph(rng).to_record(img_id=str(r))
        cols["annotation"].append(rec.model_dump_json())
        cands = [synthetic_image(rng, size) for _ in range(k)]
        for rr, cc in corrupt:
            if rr == r:
                cands[cc] = b"not a png"
        cols["candidates"].append(cands)
        cols["seeds"].append([int(1000 * r + j) for j in range(k)])
        dpg, comp = rng.random(k).round(4), rng.random(k).round(4)
        cols["scores"].append({"dpg": dpg.tolist(), "compbench_3in1": comp.tolist()})
        cols["reward"].append(((dpg + comp) / 2).tolist())
        cols["provenance"].append(json.dumps({"synthetic": True, "note": SYNTHETIC_NOTE, "base_model": None,
                                              "reward_backends": [], "fallback": True}))
    out = Path(path)
    Dataset.from_dict(cols, features=candidate_features(["dpg", "compbench_3in1"])).save_to_disk(str(out))
    return out


def write_pickapic(path: str | Path, rows: int = 6, size: int = 16, seed: int = 0, ties: list[int] = (),
                   corrupt: list[int] = (), scores: bool = False) -> Path:
    """A Pick-a-Pic-v2-schema parquet file (all columns of the real dataset). ``ties``: rows with label 0.5;
    ``corrupt``: rows whose ``jpg_1`` is garbage; ``scores``: add ``ps_0``/``ps_1`` (PickScore-like) columns."""
    rng = np.random.default_rng(seed)
    recs = []
    for r in range(rows):
        l0 = 0.5 if r in ties else float(rng.integers(0, 2))
        rec = {"are_different": True, "best_image_uid": f"img{r}_{0 if l0 == 1 else 1}",
               "caption": synthetic_graph(rng).serialize().strip(), "created_at": "2023-01-01T00:00:00",
               "has_label": True, "image_0_uid": f"img{r}_0", "image_0_url": "", "image_1_uid": f"img{r}_1",
               "image_1_url": "", "jpg_0": synthetic_image(rng, size, "JPEG"),
               "jpg_1": b"garbage" if r in corrupt else synthetic_image(rng, size, "JPEG"),
               "label_0": l0, "label_1": 1.0 - l0, "model_0": "synthetic", "model_1": "synthetic",
               "ranking_id": r, "user_id": 0, "num_example_per_prompt": 1, "__index_level_0__": r}
        if scores:
            rec["ps_0"], rec["ps_1"] = (float(v) for v in rng.uniform(0.15, 0.25, 2))
        recs.append(rec)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(recs).to_parquet(out)
    return out
