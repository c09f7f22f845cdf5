"""The candidate dataset (DATA_AND_METRICS.md, "Candidate dataset"): K scored candidates per LAION-SG annotation.

    plan = plan_annotations("train.json")                      # load_split: valid records + rejects (with reasons)
    summary = build_candidates(plan, cfg, "out/")               # this process's shards, then the index if all done
    ds = load_candidates("out/")                                # the whole dataset, one datasets.Dataset

Per annotation: K images from the base SG pipeline (one call = ``annotations_per_call`` annotations x K seeds),
candidate k's seed = ``candidate_seed(generation.seed, img_id, k)`` (recorded in ``seeds``), every configured reward
on every candidate, one row in the schema of ``sgalign.pair_schema`` (``candidate_features``).

Shards: the valid annotations in file order, ``annotations_per_shard`` per shard; process ``RANK`` of ``WORLD_SIZE``
builds shards ``i`` with ``i % WORLD_SIZE == RANK`` (``accelerate launch`` sets both); a shard's content depends
only on its annotations and the config, so any interleaving of runs, kills and processes gives the same dataset.
Output layout and crash safety: ``shards.py``. An annotation that fails (generation or scoring raises) is retried
alone; if it fails alone it is listed with its reason in ``rejects.jsonl`` next to the input's invalid records.
"""
from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sgalign.diffusion.noise import hashed_seed
from sgalign.errors import UserError
from sgalign.hashing import identity_hash, is_random_init, model_index
from sgalign.pair_schema import candidate_features
from sgalign.progress import progress as progress_bar
from sgalign.scene_graph import LaionSGRecord, SceneGraph, load_split
from sgalign.scene_graph.io import DUPLICATE_IMG_ID

from . import shards as sh
from .config import WORLD_MODEL, BuildPairsConfig, ModelSection
from .scoring import build_reward, check_vocabulary, score_batch, score_columns

BUILDER_VERSION = "1"
SEED_RULE = "int.from_bytes(blake2b(f'{seed}:{img_id}:{k}', digest_size=8), 'big') & (2**63 - 1)"


def candidate_seed(global_seed: int, img_id: str, k: int) -> int:
    return hashed_seed(global_seed, img_id, k)  # = SEED_RULE


@dataclass
class AnnotationPlan:
    """Validated annotations in build order, the input's rejects, and what identifies the input."""
    records: list[LaionSGRecord]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)


def plan_annotations(path: str | os.PathLike[str], limit: int | None = None) -> AnnotationPlan:
    """A LAION-SG split file -> valid records (file order) + rejects (invalid records, repeated img_ids);
    ``limit``: only the first ``limit`` valid annotations."""
    if not Path(path).is_file():
        raise UserError(f"annotations file {path} does not exist (a LAION-SG split: one JSON array of records)")
    split = load_split(path)
    rejects = [{"kind": "duplicate-img-id" if r.reason.startswith(DUPLICATE_IMG_ID) else "invalid-record",
                **r.to_json_dict()} for r in split.rejects]
    info = {"kind": "laion-sg", "file": Path(path).name, "sha256": sh.file_sha256(Path(path))}
    if limit is not None:
        info["limit"] = limit
    return dedupe_records(split.records, split.indices, rejects, info, limit)


class NoValidAnnotations(UserError, ValueError):
    pass


def dedupe_records(records: Sequence[LaionSGRecord], indices: Sequence[int], rejects: list[dict[str, Any]],
            info: dict[str, Any], limit: int | None = None) -> AnnotationPlan:
    first: dict[str, int] = {}
    keep = []
    for rec, idx in zip(records, indices):
        if rec.img_id in first:  # seeds and rows are keyed by img_id: a repeat would duplicate an annotation
            rejects.append({"kind": "duplicate-img-id", "index": idx, "img_id": rec.img_id, "field": "img_id",
                            "reason": f"img_id already used by record {first[rec.img_id]}; kept the first",
                            "record": rec.to_json_dict()})
        else:
            first[rec.img_id] = idx
            keep.append(rec)
    rejects.sort(key=lambda r: r["index"])
    if not keep:
        raise NoValidAnnotations(f"{info.get('file', info['kind'])}: no valid annotation to build from "
                                 f"({len(rejects)} rejected; scripts/validate_sg.py lists why)")
    keep = keep[:limit] if limit is not None else keep
    return AnnotationPlan(keep, rejects, {**info, "valid": len(keep), "rejected": len(rejects)})


# ---- model ------------------------------------------------------------------------------------------------------
class ModelNotFound(UserError, FileNotFoundError):
    pass


class BuildFailed(RuntimeError):
    """Nothing was built, or more than ``max_failed_share`` of the annotations failed (exit 1: the work failed)."""


def resolve_model_path(model: ModelSection) -> Path:
    if model.path is not None:
        p = Path(model.path)
        if not (p / "model_index.json").is_file():
            raise ModelNotFound(f"model.path {p}: no model_index.json (a local SD1.5-SG / SDXL-SG folder, e.g. "
                                "made by scripts/make_tiny.py or scripts/pretrain_sg.py)")
        return p
    if (WORLD_MODEL / "model_index.json").is_file():
        return WORLD_MODEL
    raise ModelNotFound("no base model: the world SD1.5-SG (sgalign/world/weights/world-sd15-sg/) does not exist "
                        "yet; pass --model FOLDER (an SD1.5-SG / SDXL-SG folder, e.g. from scripts/make_tiny.py)")


def load_pipeline(model: ModelSection, sha256: str | None = None):
    """The base SG pipeline and what identifies it (content hash, random-init flag; ``sha256``: already known)."""
    from sgalign.pipelines import load_pipeline  # heavy (diffusers): only when candidates are generated

    path = resolve_model_path(model)
    dtype = None if model.torch_dtype == "float32" else getattr(torch, model.torch_dtype)  # None: as saved (fp32)
    pipe = load_pipeline(path, arch="sdxl" if model.arch == "sdxl-sg" else "sd15", sg_encoder=model.sg_encoder,
                         torch_dtype=dtype)
    device = model.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    if device != "cpu":
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    info = {"name": path.name, "arch": model.arch, "sha256": sha256 or sh.folder_sha256(path),
            "random_init": is_random_init(model_index(path)), "sg_encoder": model.sg_encoder,
            "torch_dtype": model.torch_dtype}
    return pipe, info


# ---- building ---------------------------------------------------------------------------------------------------
def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class CandidateBuilder:
    """Generates and scores the rows of shards. ``pipe`` / ``reward`` may be passed in (tests, benchmarks)."""

    def __init__(self, cfg: BuildPairsConfig, pipe=None, model_info: dict[str, Any] | None = None, reward=None,
                 model_sha256: str | None = None):
        self.cfg = cfg
        if pipe is None:
            pipe, model_info = load_pipeline(cfg.model, model_sha256)
        self.pipe, self.model_info = pipe, model_info or {"name": type(pipe).__name__, "sha256": None}
        self.reward = reward if reward is not None else build_reward(cfg.rewards)
        self.columns = score_columns(self.reward)

    def settings(self) -> dict[str, Any]:
        g = self.cfg.generation
        guidance = g.guidance_scale if g.guidance_scale is not None else self.pipe.default_guidance_scale
        out = {**g.model_dump(), "scheduler": type(self.pipe.scheduler).__name__, "seed_rule": SEED_RULE,
               "guidance_scale": guidance}
        if hasattr(self.pipe, "guidance_record"):  # the folder's graph guidance and rescale, as the candidates sample
            out.update(self.pipe.guidance_record(float(guidance)))
        return out

    def generate(self, records: Sequence[LaionSGRecord], seeds: Sequence[Sequence[int]],
                 batched: bool = True) -> list:
        """PIL images, image ``a * K + k`` = annotation ``a`` with ``seeds[a][k]``: one batched call, or
        (``batched=False``, the reference the benchmark and tests compare with) one call per image."""
        if not batched:
            return [im for r, ss in zip(records, seeds) for s in ss for im in self._generate([r], [[s]])]
        return self._generate(records, seeds)

    def _generate(self, records: Sequence[LaionSGRecord], seeds: Sequence[Sequence[int]]) -> list:
        g = self.cfg.generation
        gens = [torch.Generator("cpu").manual_seed(int(s)) for ss in seeds for s in ss]
        return self.pipe([SceneGraph.from_record(r) for r in records], num_images_per_graph=len(seeds[0]),
                         generator=gens, num_inference_steps=g.num_inference_steps, guidance_scale=g.guidance_scale,
                         eta=g.eta, height=g.height, width=g.width, output_type="pil").images

    def rows(self, records: Sequence[LaionSGRecord],
             batched: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Rows for ``records`` (one batched generation call and one reward call; ``batched=False``: one of each
        per candidate, the reference) and failures; a failing call is retried one annotation at a time so one bad
        annotation costs only itself."""
        try:
            return self._rows(records, batched), []
        except Exception as e:
            if len(records) == 1:
                return [], [_failure(records[0], e)]
        rows, failures = [], []
        for rec in records:
            try:
                rows += self._rows([rec], batched)
            except Exception as e:  # reported, never silently dropped
                failures.append(_failure(rec, e))
        return rows, failures

    def _score(self, images: list, graphs: list[SceneGraph], batched: bool):
        if batched:
            return score_batch(self.reward, images, graphs)
        scored, prov = [], None
        for im, g in zip(images, graphs):
            s, prov = score_batch(self.reward, [im], [g])
            scored += s
        return scored, prov

    def _rows(self, records: Sequence[LaionSGRecord], batched: bool = True) -> list[dict[str, Any]]:
        k = self.cfg.generation.k
        seeds = [[candidate_seed(self.cfg.generation.seed, r.img_id, j) for j in range(k)] for r in records]
        images = _staged("generation", self.generate, records, seeds, batched)
        graphs = [g for g in map(SceneGraph.from_record, records) for _ in range(k)]
        scored, prov = _staged("scoring", self._score, images, graphs, batched)
        provenance = json.dumps({
            "builder": f"data_builders.laion_sg v{BUILDER_VERSION}", "source": self.cfg.source,
            "base_model": self.model_info, "generation": self.settings(),
            "rewards": [p.to_dict() for p in prov], "any_fallback": any(p.any_fallback for p in prov)},
            sort_keys=True)  # any_fallback: reward backends; a random-init base model shows in base_model
        out = []
        for a, rec in enumerate(records):
            block = scored[a * k:(a + 1) * k]
            pngs = [png_bytes(im) for im in images[a * k:(a + 1) * k]]
            out.append({"annotation": rec.model_dump_json(), "candidates": pngs,
                        "seeds": seeds[a], "scores": {c: [v[c] for v, _ in block] for c in self.columns},
                        "reward": [r for _, r in block], "provenance": provenance})
        return out

    def build_shard(self, out: Path, i: int, records: Sequence[LaionSGRecord], progress=None,
                    rank: int = 0) -> dict[str, Any]:
        t0 = time.perf_counter()
        n = self.cfg.generation.annotations_per_call
        rows, failures = [], []
        for s in range(0, len(records), n):
            r, f = self.rows(records[s:s + n])
            rows += r
            failures += [{**x, "shard": i} for x in f]
            if progress is not None:
                progress.update(len(records[s:s + n]))
        cols = {c: [row[c] for row in rows] for c in ("annotation", "candidates", "seeds", "scores", "reward",
                                                      "provenance")}
        path = out / sh.shard_name(i)
        sh.write_parquet_atomic(path, cols, candidate_features(self.columns))
        manifest = {"shard": i, "file": path.name, "rows": len(rows), "sha256": sh.file_sha256(path),
                    "size": path.stat().st_size,
                    "img_ids": [json.loads(a)["img_id"] for a in cols["annotation"]], "failures": failures,
                    "seconds": round(time.perf_counter() - t0, 3), "rank": rank}
        sh.write_json_atomic(sh.manifest_path(out, i), manifest)  # the commit point: the shard is now finished
        return manifest


def _failure(rec: LaionSGRecord, e: Exception) -> dict[str, Any]:
    stage = getattr(e, "stage", "build")
    reason = str(e) if isinstance(e, _StageError) else f"{type(e).__name__}: {e}"
    return {"kind": "failure", "img_id": rec.img_id, "stage": stage, "reason": reason}


class _StageError(RuntimeError):
    def __init__(self, stage: str, exc: Exception):
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.stage = stage


def _staged(stage: str, fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        raise _StageError(stage, e) from e


def build_candidates(plan: AnnotationPlan, cfg: BuildPairsConfig, out: str | os.PathLike[str], *,
                     builder: CandidateBuilder | None = None, rank: int | None = None, world_size: int | None = None,
                     progress: bool = True, log=print, overwrite: bool = False) -> dict[str, Any] | None:
    """Build this process's unfinished shards of ``plan`` into ``out``; when every shard is finished, write the
    index, summary and rejects and return the summary (else None). ``out`` holds one build (``build.json``):
    another build's folder is refused unless ``overwrite`` (then emptied); each rank holds a lock on it while it
    works, so a second process of the same rank stops at once. Raises ``BuildFailed`` (after writing the summary
    and rejects, without an index) when nothing was built or more than ``max_failed_share`` failed."""
    out = Path(out)
    if rank is None or world_size is None:
        rank, world_size = sh.rank_and_world()
    check_vocabulary(plan.records, cfg.rewards)  # before any model load or image
    with sh.owned(out, "build_pairs", rank, world_size):
        return _build(plan, cfg, out, builder, rank, world_size, progress, log, overwrite, torch)


def _build(plan, cfg, out, builder, rank, world_size, progress, log, overwrite, torch) -> dict[str, Any] | None:
    t0 = time.perf_counter()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    per = cfg.shards.annotations_per_shard
    num_shards = -(-len(plan.records) // per)
    model_hash = builder.model_info.get("sha256") if builder else None
    if model_hash is None:
        model_hash = sh.folder_sha256(resolve_model_path(cfg.model))
    sh.check_or_write_build(out, {"format": "sgalign-candidate-dataset", "builder_version": BUILDER_VERSION,
                                  "input": plan.input, "config": cfg.fingerprint(), "model_sha256": model_hash,
                                  "num_annotations": len(plan.records), "annotations_per_shard": per,
                                  "num_shards": num_shards}, overwrite=overwrite, world_size=world_size)
    todo = sh.todo_shards(out, [i for i in range(num_shards) if i % world_size == rank], log)
    if todo and builder is None:
        builder = CandidateBuilder(cfg, model_sha256=model_hash)
    n_todo = sum(len(plan.records[i * per:(i + 1) * per]) for i in todo)
    if todo:
        bar = progress_bar(n_todo, desc=f"build_pairs rank {rank}/{world_size}", unit="ann", enabled=progress)
        for i in todo:
            if sh.is_done(out, i):  # another run finished it meanwhile
                bar.update(len(plan.records[i * per:(i + 1) * per]))
                continue
            builder.build_shard(out, i, plan.records[i * per:(i + 1) * per], bar, rank=rank)
        bar.close()
    missing = [i for i in range(num_shards) if not sh.is_done(out, i)]
    if missing:
        log(f"rank {rank}/{world_size}: built {len(todo)} shard(s) in {time.perf_counter() - t0:.1f} s; "
            f"{len(missing)} shard(s) of other processes not finished yet: {missing[:10]}")
        return None
    summary = finalize(out, plan, cfg, wall_seconds=time.perf_counter() - t0)
    log(format_summary(summary))
    if not summary["accepted"]:
        a, top = summary["annotations"], summary["most_common_failure"]
        why = ("nothing was built" if not a["built"] else
               f"{summary['failed_share']:.0%} failed, more than max_failed_share={cfg.max_failed_share}")
        raise BuildFailed(f"{out}: {a['built']} annotations built, {a['failed']} failed: {why}; most common failure "
                          f"({top['count']}x): {top['reason']}; all in {out / sh.REJECTS_FILE}")
    return summary


# ---- index, summary, rejects ------------------------------------------------------------------------------------
def finalize(out: Path, plan: AnnotationPlan, cfg: BuildPairsConfig, wall_seconds: float) -> dict[str, Any]:
    import pyarrow.parquet as pq  # heavy (~0.2 s): keeps world_job light for bench_world.py --help

    build = json.loads((out / sh.BUILD_FILE).read_text())
    dataset_id = identity_hash(build)  # what train.py and evaluate.py record to chain their outputs to this data
    manifests = [sh.read_manifest(out, i) for i in range(build["num_shards"])]
    built = [x for m in manifests for x in m["img_ids"]]
    failures = [f for m in manifests for f in m["failures"]]
    failed = [f["img_id"] for f in failures]
    expected = [r.img_id for r in plan.records]
    if sorted(built + failed) != sorted(expected) or len(set(built)) != len(built):
        raise RuntimeError(f"{out}: shards do not cover the annotations exactly once (built {len(built)}, failed "
                           f"{len(failed)}, expected {len(expected)}); the folder was modified by hand?")
    rewards, scores = [], {}
    for m in manifests:
        t = pq.read_table(out / m["file"], columns=["reward", "scores"]).to_pydict()
        rewards += t["reward"]
        for row in t["scores"]:
            for c, v in row.items():
                scores.setdefault(c, []).extend(v)
    flat = [x for r in rewards for x in r]
    gaps = [abs(r[i] - r[j]) for r in rewards for i in range(len(r)) for j in range(i + 1, len(r))]
    margin = cfg.rewards.margin
    summary = {
        "annotations": {"input_valid": len(plan.records), "built": len(built), "failed": len(failed)},
        "candidates": len(flat), "k": cfg.generation.k,
        "rejects": {"input": len(plan.rejects), "failures": len(failures)},
        "reward_distribution": {"reward": _stats(flat), **{c: _stats(v) for c, v in scores.items()}},
        "pairs": {"margin": margin, "total": len(gaps),
                  "share_above_margin": float(np.mean([g > margin for g in gaps])) if gaps else 0.0,
                  "annotations_with_a_pair": sum(any(abs(r[i] - r[j]) > margin for i in range(len(r))
                                                     for j in range(i + 1, len(r))) for r in rewards)},
        "shards": build["num_shards"], "wall_seconds_this_run": round(wall_seconds, 2),
        "shard_seconds_total": round(sum(m["seconds"] for m in manifests), 2), "input": plan.input,
        "dataset_id": dataset_id,
    }
    reasons = Counter(f"{f['stage']}: {f['reason']}" for f in failures).most_common()
    summary["most_common_failure"] = {"reason": reasons[0][0], "count": reasons[0][1]} if reasons else None
    share = len(failed) / len(expected)
    summary["failed_share"], summary["max_failed_share"] = share, cfg.max_failed_share
    summary["stale_temp_files_removed"] = sh.remove_stale_temps(out)  # left by killed runs
    summary["accepted"] = bool(built) and share <= cfg.max_failed_share
    sh.write_jsonl_atomic(out / sh.REJECTS_FILE, plan.rejects + failures)
    sh.write_json_atomic(out / sh.SUMMARY_FILE, summary)
    if not summary["accepted"]:
        (out / sh.INDEX_FILE).unlink(missing_ok=True)  # no index: nothing downstream takes it for a dataset
        return summary
    sh.write_json_atomic(out / sh.INDEX_FILE, {
        "complete": True, "dataset_id": dataset_id, "format": build["format"], "num_shards": build["num_shards"],
        "rows": len(built),
        "shards": sh.index_shards(out, manifests)})
    return summary


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"n": 0, "n_null": len(values)}
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"n": int(len(v)), "n_null": len(values) - int(len(v)), "mean": float(v.mean()), "std": float(v.std()),
            "min": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "max": float(q[4])}


def format_summary(s: dict[str, Any]) -> str:
    a, p = s["annotations"], s["pairs"]
    lines = [f"build_pairs: {a['built']} annotations built ({a['failed']} failed) of {a['input_valid']} valid; "
             f"{s['candidates']} candidates (K={s['k']}); rejects: {s['rejects']['input']} input, "
             f"{s['rejects']['failures']} failures; {s['shards']} shards; wall {s['wall_seconds_this_run']:.1f} s "
             f"this run ({s['shard_seconds_total']:.1f} s of shard building in all)",
             *([f"most common failure ({s['most_common_failure']['count']}x): {s['most_common_failure']['reason']}"]
               if s.get("most_common_failure") else []),
             f"pairs with |reward gap| > {p['margin']}: {p['share_above_margin']:.1%} of {p['total']}; annotations "
             f"with at least one: {p['annotations_with_a_pair']}",
             f"{'component':<22}{'n':>6}{'mean':>8}{'std':>8}{'min':>8}{'p25':>8}{'med':>8}{'p75':>8}{'max':>8}"]
    for c, d in s["reward_distribution"].items():
        if d["n"]:
            lines.append(f"{c:<22}{d['n']:>6}" + "".join(f"{d[k]:>8.3f}" for k in
                                                          ("mean", "std", "min", "p25", "median", "p75", "max")))
        else:
            lines.append(f"{c:<22}{0:>6}  (not applicable to any candidate)")
    return "\n".join(lines)


# ---- reading ----------------------------------------------------------------------------------------------------
def load_candidates(path: str | os.PathLike[str]):
    """The whole candidate dataset of a finished build folder as one ``datasets.Dataset`` (rows in shard order);
    the trainer's compositional task reads the same folder (``data.path``) with ``load_table``."""
    # heavy (sgalign.training loads diffusers): only when a build is read back
    from sgalign.training.data import load_table

    p = Path(path)
    index = p / sh.INDEX_FILE
    if not index.is_file():
        done = len(list((p / "index").glob("shard-*.json"))) if (p / "index").is_dir() else 0
        raise FileNotFoundError(f"{p}: no {sh.INDEX_FILE}: the build is not finished ({done} shard(s) done); rerun "
                                "build_pairs with the same arguments to complete it")
    idx = json.loads(index.read_text())
    ds = load_table(p)
    if len(ds) != idx["rows"]:
        raise ValueError(f"{p}: {len(ds)} rows in the shards but {idx['rows']} in {sh.INDEX_FILE} (stray or "
                         "missing .parquet files?)")
    return ds
