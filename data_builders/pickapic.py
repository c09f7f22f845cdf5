"""``--source pickapic``: Pick-a-Pic v2 (DATA_AND_METRICS.md) -> the fixed-pair file the trainer's t2i task reads.

Input: local parquet file(s), a ``save_to_disk`` folder, or a folder of shards with the 19 Pick-a-Pic v2 columns.
Per row, in input order:

* ``label_0 == 0.5``: a tie, dropped (Diffusion-DPO convention; with ``winner_by: score`` the scores decide, so
  human ties are kept); labels other than (1, 0) / (0, 1) / (0.5, 0.5): rejected with the reason;
* an image that does not decode: the pair is skipped **as a pair** and listed in ``rejects.jsonl``;
* the pair is written **winner first**: where image 1 won, every per-image column (``jpg``, ``image_uid``,
  ``image_url``, ``label``, ``model``) is swapped, so ``label_0 = 1`` on every output row; ``swapped`` records it,
  ``source_row`` the input row.
* optional relabel (SmPO: PickScore): an image-text similarity backend scores both images against the caption,
  stored as ``<score_prefix>_0`` / ``_1`` (the trainer's ``data.score_columns``); ``winner_by: score`` lets the
  higher score win (the human labels stay in ``human_label_0`` / ``_1``; equal scores are a tie, dropped).

Output: sharded parquet, crash-safe and resumable as the candidate build (``shards.py``); ``input_rows_per_shard``
input rows per shard, process ``RANK`` of ``WORLD_SIZE`` builds shards ``i % WORLD_SIZE == RANK``.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sgalign.hashing import identity_hash
from sgalign.pair_schema import decode_image
from sgalign.progress import progress as progress_bar
from sgalign.rewards.backends import build_backend

from . import shards as sh
from .config import PickapicSection

PICKAPIC_V2_COLUMNS = ("are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid",
                       "image_0_url", "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1",
                       "model_0", "model_1", "ranking_id", "user_id", "num_example_per_prompt",
                       "__index_level_0__")
PER_IMAGE = ("jpg_{}", "image_{}_uid", "image_{}_url", "label_{}", "model_{}")
BUILDER_VERSION = "1"


def read_pickapic(path: str | os.PathLike[str]):
    """The input as one ``datasets.Dataset``, checked to have every Pick-a-Pic v2 column."""
    # heavy (sgalign.training loads diffusers): keeps build_pairs.py --help light
    from sgalign.training.data import load_table

    ds = load_table(path)
    missing = [c for c in PICKAPIC_V2_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"{path}: not Pick-a-Pic v2: missing column(s) {missing} (has {ds.column_names}); "
                         f"expected all of {list(PICKAPIC_V2_COLUMNS)}")
    return ds


def build_similarity(cfg: PickapicSection):
    if cfg.relabel is None:
        return None
    return build_backend("similarity", cfg.relabel.name, path=cfg.relabel.path, policy=cfg.policy,
                         **cfg.relabel.options)


def _decode(data: Any):
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"not image bytes ({type(data).__name__})")
    return decode_image(bytes(data))


def convert_rows(rows: list[dict[str, Any]], first_row: int, cfg: PickapicSection, similarity=None):
    """Output rows (winner first) and rejects for ``rows`` (input rows ``first_row``, ``first_row + 1``, ...)."""
    out, rejects, ties = [], [], 0
    for n, row in enumerate(rows):
        idx = first_row + n
        where = {"row": idx, "ranking_id": row.get("ranking_id")}
        l0, l1 = row["label_0"], row["label_1"]
        if l0 == 0.5 and cfg.winner_by == "label":
            ties += 1
            continue
        if (l0, l1) not in ((1, 0), (0, 1), (0.5, 0.5)):
            rejects.append({"kind": "invalid-labels", **where, "reason": f"label_0={l0}, label_1={l1}: expected "
                            "(1, 0), (0, 1) or a tie (0.5, 0.5)"})
            continue
        images = []
        for side in (0, 1):  # both decoded before the pair is used: a bad image drops the pair, never one side
            try:
                images.append(_decode(row[f"jpg_{side}"]))
            except Exception as e:
                rejects.append({"kind": "undecodable-image", **where, "image": f"jpg_{side}",
                                "reason": f"{type(e).__name__}: {e}; pair skipped"})
                break
        if len(images) < 2:
            continue
        new = {k: row[k] for k in PICKAPIC_V2_COLUMNS}
        scores = None
        if similarity is not None:
            caption = row["caption"] or ""
            scores = [float(x) for x in similarity.similarity(images, [caption, caption])]
        swap = l0 != 1
        if cfg.winner_by == "score":
            if scores is None:
                raise ValueError("pickapic.winner_by: score needs pickapic.relabel (a similarity backend)")
            if scores[0] == scores[1]:
                ties += 1
                continue
            swap = scores[1] > scores[0]
            new["human_label_0"], new["human_label_1"] = (l1, l0) if swap else (l0, l1)
        if swap:
            for pat in PER_IMAGE:
                new[pat.format(0)], new[pat.format(1)] = row[pat.format(1)], row[pat.format(0)]
            if scores is not None:
                scores = scores[::-1]
        if cfg.winner_by == "score":
            new["label_0"], new["label_1"] = 1.0, 0.0
        if scores is not None:
            new[f"{cfg.score_prefix}_0"], new[f"{cfg.score_prefix}_1"] = scores
        new["swapped"], new["source_row"] = bool(swap), idx
        out.append(new)
    return out, rejects, ties


def output_features(input_features, cfg: PickapicSection):
    from datasets import Features, Value  # heavy (~1 s): keeps build_pairs.py --help light
    f = {c: input_features[c] for c in PICKAPIC_V2_COLUMNS}
    if cfg.winner_by == "score":
        f["human_label_0"], f["human_label_1"] = input_features["label_0"], input_features["label_1"]
    if cfg.relabel is not None:
        f[f"{cfg.score_prefix}_0"] = f[f"{cfg.score_prefix}_1"] = Value("float64")
    f["swapped"], f["source_row"] = Value("bool"), Value("int64")
    return Features(f)


def import_pickapic(path: str | os.PathLike[str], cfg: PickapicSection, out: str | os.PathLike[str], *,
                    similarity=None, rank: int | None = None, world_size: int | None = None, progress: bool = True,
                    log=print, overwrite: bool = False) -> dict[str, Any] | None:
    """Convert this process's unfinished shards; when all are finished write index/summary/rejects and return the
    summary (else None). One build per folder, one process per rank at a time (``build_candidates``)."""
    out = Path(out)
    if rank is None or world_size is None:
        rank, world_size = sh.rank_and_world()
    with sh.owned(out, "build_pairs", rank, world_size):
        return _import(path, cfg, out, similarity, rank, world_size, progress, log, overwrite)


def _import(path, cfg, out, similarity, rank, world_size, progress, log, overwrite) -> dict[str, Any] | None:
    t0 = time.perf_counter()
    ds = read_pickapic(path)
    per = cfg.rows_per_shard
    num_shards = -(-len(ds) // per)
    fp = cfg.model_dump(mode="json")
    sh.check_or_write_build(out, {"format": "sgalign-pickapic-pairs", "builder_version": BUILDER_VERSION,
                                  "input": {"name": Path(path).name, "rows": len(ds),
                                            "fingerprint": getattr(ds, "_fingerprint", None)},
                                  "config": fp, "num_shards": num_shards}, overwrite=overwrite, world_size=world_size)
    todo = sh.todo_shards(out, [i for i in range(num_shards) if i % world_size == rank], log)
    if todo and similarity is None and cfg.relabel is not None:
        similarity = build_similarity(cfg)
    features = output_features(ds.features, cfg)
    bar = progress_bar(sum(min(per, len(ds) - i * per) for i in todo), desc=f"pickapic rank {rank}/{world_size}",
                       unit="row", enabled=progress)
    for i in todo:
        t1 = time.perf_counter()
        lo, hi = i * per, min(len(ds), (i + 1) * per)
        rows, rejects, ties = convert_rows(list(ds.select(range(lo, hi))), lo, cfg, similarity)
        p = out / sh.shard_name(i)
        sh.write_parquet_atomic(p, {c: [r[c] for r in rows] for c in features}, features)
        sh.write_json_atomic(sh.manifest_path(out, i), {
            "shard": i, "file": p.name, "rows": len(rows), "input_rows": [lo, hi], "ties": ties,
            "rejects": rejects, "swapped": sum(r["swapped"] for r in rows), "sha256": sh.file_sha256(p),
            "size": p.stat().st_size,
            "relabel": similarity.info.to_dict() if similarity is not None else None,
            "seconds": round(time.perf_counter() - t1, 3)})
        bar.update(hi - lo)
    bar.close()
    missing = [i for i in range(num_shards) if not sh.is_done(out, i)]
    if missing:
        log(f"rank {rank}/{world_size}: {len(todo)} shard(s) done; {len(missing)} of other processes pending")
        return None
    ms = [sh.read_manifest(out, i) for i in range(num_shards)]
    rejects = [r for m in ms for r in m["rejects"]]
    summary = {"input_rows": len(ds), "pairs": sum(m["rows"] for m in ms), "ties_dropped": sum(m["ties"] for m in ms),
               "undecodable_pairs": sum(r["kind"] == "undecodable-image" for r in rejects),
               "invalid_labels": sum(r["kind"] == "invalid-labels" for r in rejects),
               "swapped_to_winner_first": sum(m["swapped"] for m in ms), "winner_by": cfg.winner_by,
               "relabel": next((m["relabel"] for m in ms if m["relabel"]), None),
               "score_columns": [f"{cfg.score_prefix}_0", f"{cfg.score_prefix}_1"] if cfg.relabel else None,
               "shards": num_shards, "wall_seconds_this_run": round(time.perf_counter() - t0, 2)}
    sh.write_jsonl_atomic(out / sh.REJECTS_FILE, rejects)
    summary["dataset_id"] = identity_hash(json.loads((out / sh.BUILD_FILE).read_text()))
    sh.write_json_atomic(out / sh.SUMMARY_FILE, summary)
    if not summary["pairs"]:
        from .laion_sg import BuildFailed  # heavy (torch): keeps build_pairs.py --help light
        (out / sh.INDEX_FILE).unlink(missing_ok=True)
        top = Counter(r["kind"] for r in rejects).most_common(1)
        raise BuildFailed(f"{out}: 0 pairs from {len(ds)} rows: {summary['ties_dropped']} ties dropped, "
                          f"{len(rejects)} rejected" + (f" (most common: {top[0][0]})" if top else "")
                          + f"; rejects in {out / sh.REJECTS_FILE}")
    sh.write_json_atomic(out / sh.INDEX_FILE, {"complete": True, "format": "sgalign-pickapic-pairs",
                                               "dataset_id": summary["dataset_id"],
                                               "num_shards": num_shards, "rows": summary["pairs"],
                                               "shards": sh.index_shards(out, ms)})
    log(f"pickapic: {summary['pairs']} pairs (winner first) from {len(ds)} rows; {summary['ties_dropped']} ties "
        f"dropped; {summary['undecodable_pairs']} pairs skipped for an undecodable image; "
        f"{summary['invalid_labels']} invalid labels; rejects in {out / sh.REJECTS_FILE}; "
        f"{summary['wall_seconds_this_run']:.1f} s")
    for r in rejects[:20]:
        log(f"  skipped row {r['row']}: {r['reason']}")
    if len(rejects) > 20:
        log(f"  ... {len(rejects) - 20} more in {out / sh.REJECTS_FILE}")
    return summary


def load_pairs(path: str | os.PathLike[str]):
    """The finished pair file as one ``datasets.Dataset`` (the trainer's t2i task reads the folder directly)."""
    from .laion_sg import load_candidates  # heavy (torch): as BuildFailed
    return load_candidates(path)
