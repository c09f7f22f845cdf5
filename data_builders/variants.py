"""Ceiling and floor datasets derived from a finished world candidate build (issue 20, item 3).

    summary = derive_variant("runs/job/pairs", "runs/job/pairs-gold", "gold")
    summary = derive_variant("runs/job/pairs", "runs/job/pairs-shuffled", "shuffled", seed=0)

* ``gold`` (ceiling): per annotation two candidates: the world's true render of the graph (winner; its ``reward`` is
  ``GOLD_REWARD``, the combined reward's maximum, since a perfect reward ranks the truth first; its ``scores`` are
  what the source's reward actually gives it, kept for diagnosis) and the base's worst-reward candidate (loser, as
  the source stored it). An annotation whose worst candidate is within the trainer's margin of 1.0 yields no pair.
* ``shuffled`` (floor): the same K candidates, their ``reward`` and every ``scores`` column permuted together
  within each annotation by a seeded permutation (seed, annotation row): labels that carry no information.

The output is a candidate dataset in the format ``build_pairs`` writes (shards, ``index/`` manifests, ``build.json``,
``index.json``, ``summary.json``, ``rejects.jsonl``), so the trainer and ``load_candidates`` read it unchanged;
``build.json`` and every row's provenance record ``variant``, the source's ``dataset_id`` and ``seed``. The source is
only read. A finished output with the same settings is returned as is (resume = skip).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from sgalign.errors import UserError
from sgalign.hashing import identity_hash
from sgalign.pair_schema import candidate_features
from sgalign.scene_graph import LaionSGRecord, SceneGraph
from sgalign.world import img_id_for, render, sample_split

from . import shards as sh
from .config import BuildPairsConfig
from .scoring import build_reward, score_batch

Variant = Literal["gold", "shuffled"]
VARIANTS: tuple[str, ...] = get_args(Variant)
VARIANT_VERSION = "1"
GOLD_REWARD = 1.0  # the combined reward (Eq. 17) lies in [0, 1]; the true render is its best possible image
GOLD_SEED = -1  # the render has no generation seed; -1 keeps the trainer's "row/seed" image ids distinct


class VariantError(UserError, ValueError):
    """The source cannot be turned into the requested variant."""


def _source_build(src: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(build.json, index.json) of a finished candidate build; anything else is a one-line error."""
    if not (src / sh.INDEX_FILE).is_file() or not (src / sh.BUILD_FILE).is_file():
        raise VariantError(f"variant source {src}: not a finished build_pairs candidate dataset (needs "
                           f"{sh.BUILD_FILE} and {sh.INDEX_FILE})")
    build = json.loads((src / sh.BUILD_FILE).read_text())
    if build.get("format") != "sgalign-candidate-dataset":
        raise VariantError(f"variant source {src}: format {build.get('format')!r}, expected a candidate dataset")
    from sgalign.training.data import verify_dataset  # heavy (sgalign.training loads diffusers): keeps world_job light
    return build, verify_dataset(src)  # a variant is derived from exactly the shards the source's index lists


def _true_renders(build: dict[str, Any], annotations: list[str], src: Path) -> list[Any]:
    """PIL renders of each row's world scene. Records carry no layout, so the scenes are drawn again from the
    build's world settings (``sample_split`` is deterministic) and each must reproduce its stored record exactly."""
    inp = build.get("input", {})
    if inp.get("kind") != "shapes":
        raise VariantError(f"gold variant of {src}: needs a --source shapes build (its input is "
                           f"{inp.get('kind')!r}; only world graphs have a true render)")
    split = inp["split"]
    scenes = sample_split(split, inp["n"], seed=inp["seed"], holdout=inp.get("holdout", []))
    by_id = {img_id_for(split, i): sc for i, sc in enumerate(scenes)}
    out = []
    for row, raw in enumerate(annotations):
        img_id = json.loads(raw)["img_id"]
        sc = by_id.get(img_id)
        if sc is None or json.loads(sc.to_record(img_id).model_dump_json()) != json.loads(raw):
            raise VariantError(f"gold variant of {src}: row {row} (img_id {img_id}) is not the world scene its "
                               "build settings draw; the source was not made by this world version")
        out.append(render(sc))
    return out


def _png(img, size: tuple[int, int]) -> bytes:
    if img.size != size:  # the base may sample at another size than the 64 px canvas
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _gold_rows(rows: dict[str, list], build: dict[str, Any], src: Path, reward) -> tuple[dict[str, list], list]:
    renders = _true_renders(build, rows["annotation"], src)
    if reward is None:  # the source's own reward, to record what it says of the truth
        reward = build_reward(BuildPairsConfig.model_validate(build["config"]).rewards)
    graphs = [SceneGraph.from_record(LaionSGRecord.model_validate_json(a)) for a in rows["annotation"]]
    scored, _ = score_batch(reward, renders, graphs)
    out: dict[str, list] = {c: [] for c in rows}
    render_rewards = []
    for i in range(len(rows["annotation"])):
        r = rows["reward"][i]
        lose = int(np.argmin(r))  # first of equal minima: deterministic
        size = Image.open(io.BytesIO(rows["candidates"][i][lose])).size
        vals, combined = scored[i]
        render_rewards.append(combined)
        out["annotation"].append(rows["annotation"][i])
        out["candidates"].append([_png(renders[i], size), rows["candidates"][i][lose]])
        out["seeds"].append([GOLD_SEED, rows["seeds"][i][lose]])
        out["scores"].append({c: [vals.get(c), v[lose]] for c, v in rows["scores"][i].items()})
        out["reward"].append([GOLD_REWARD, r[lose]])
        out["provenance"].append(rows["provenance"][i])
    return out, render_rewards


def _shuffled_rows(rows: dict[str, list], seed: int) -> dict[str, list]:
    out = {c: list(v) for c, v in rows.items()}
    for i, r in enumerate(rows["reward"]):
        perm = np.random.default_rng([seed, i]).permutation(len(r))
        out["reward"][i] = [r[j] for j in perm]
        out["scores"][i] = {c: [v[j] for j in perm] for c, v in rows["scores"][i].items()}
    return out


def derive_variant(src: str | os.PathLike[str], out: str | os.PathLike[str], variant: Variant, seed: int = 0,
                   reward=None, margin: float = 0.05) -> dict[str, Any]:
    """Write the ``variant`` of the finished candidate dataset ``src`` into ``out``; return its summary.
    ``reward``: a ``CombinedReward`` to score the gold renders with (default: the source's configured reward);
    ``margin``: the trainer's ``data.margin``, for the summary's count of annotations with a pair."""
    import pyarrow.parquet as pq  # heavy (~0.2 s): keeps world_job light for bench_world.py --help

    if variant not in VARIANTS:
        raise VariantError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise VariantError(f"variant output {out} is the source {src} or inside it; the source is never modified")
    build, index = _source_build(src)
    new_build = {"format": build["format"], "variant": variant, "variant_version": VARIANT_VERSION,
                 "source_dataset_id": index["dataset_id"], "seed": seed, "input": build.get("input", {}),
                 "config": build.get("config"), "model_sha256": build.get("model_sha256"),
                 "num_annotations": index["rows"], "num_shards": 1}
    if (out / sh.INDEX_FILE).is_file() and (out / sh.BUILD_FILE).is_file() \
            and json.loads((out / sh.BUILD_FILE).read_text()) == json.loads(json.dumps(new_build)):
        return json.loads((out / sh.SUMMARY_FILE).read_text())
    out.mkdir(parents=True, exist_ok=True)
    sh.check_or_write_build(out, new_build)
    tables = [pq.read_table(src / s["file"]) for s in index["shards"]]
    rows: dict[str, list] = {c: [x for t in tables for x in t.column(c).to_pylist()]
                             for c in ("annotation", "candidates", "seeds", "scores", "reward", "provenance")}
    render_rewards = None
    if variant == "gold":
        rows, render_rewards = _gold_rows(rows, build, src, reward)
    else:
        rows = _shuffled_rows(rows, seed)
    tag = {"variant": variant, "source_dataset_id": index["dataset_id"], "seed": seed}
    rows["provenance"] = [json.dumps({**json.loads(p), "variant": tag}, sort_keys=True) for p in rows["provenance"]]
    columns = list(rows["scores"][0]) if rows["scores"] else []  # the source struct's field order
    path = out / sh.shard_name(0)
    sh.write_parquet_atomic(path, rows, candidate_features(columns))
    img_ids = [json.loads(a)["img_id"] for a in rows["annotation"]]
    sh.write_json_atomic(sh.manifest_path(out, 0), {"shard": 0, "file": path.name, "rows": len(img_ids),
                                                     "sha256": sh.file_sha256(path), "size": path.stat().st_size,
                                                     "img_ids": img_ids,
                                                     "failures": [], "seconds": 0.0, "rank": 0})
    dataset_id = identity_hash(new_build)
    summary = {"variant": variant, "source": str(src), "source_dataset_id": index["dataset_id"], "seed": seed,
               "dataset_id": dataset_id, "annotations": {"built": len(img_ids), "failed": 0},
               "candidates": sum(len(r) for r in rows["reward"]), "k": len(rows["reward"][0]) if img_ids else 0,
               "annotations_with_a_pair": sum(max(r) - min(r) > margin for r in rows["reward"]),
               "accepted": True}
    if render_rewards is not None:
        rr = np.asarray(render_rewards, dtype=float)
        summary["render_reward"] = {"mean": float(rr.mean()), "min": float(rr.min()), "max": float(rr.max()),
                                    "n": int(len(rr))} if len(rr) else {"n": 0}
    sh.write_jsonl_atomic(out / sh.REJECTS_FILE, [])
    sh.write_json_atomic(out / sh.SUMMARY_FILE, summary)
    sh.write_json_atomic(out / sh.INDEX_FILE, {  # last: the commit point of the dataset
        "complete": True, "dataset_id": dataset_id, "format": new_build["format"], "num_shards": 1,
        "rows": len(img_ids), "shards": sh.index_shards(out, [sh.read_manifest(out, 0)])})
    return summary
