"""Evaluate a model folder (optionally against a baseline folder) under a fixed ``EvalProtocol``.

Both models generate from the same graphs/prompts with the same seeds, so every image of one has a partner in the
other; per-image scores are paired by position (image ``g * K + k`` = input ``g``, seed ``k``).

* ``compositional`` (an SD1.5-SG / SDXL-SG folder): extract a scene graph from each image (world oracle, or an
  OpenAI-compatible chat endpoint), SG-IoU / Entity-IoU / Relation-IoU per image, means with percentile-bootstrap
  intervals, paired-bootstrap intervals of model - baseline; FID against the renders of the same graphs (world
  graph sets only) on world-CLIP image features, or a labelled random-init fallback encoder.
* ``t2i`` (a plain SD1.5 / SDXL folder): preference scores per image (the world reward on the prompt parsed back to
  a world graph; the world-CLIP image-text cosine), mean and median with intervals, win-rate vs baseline.

Output folder: ``results.json`` (metrics, protocol, provenance; written atomically), ``images/<role>.npz`` (uint8
NHWC, for the report). Every fallback used (random-init encoder, untrained world-CLIP, random-init model folder)
is listed in ``provenance.fallbacks``. A run is staged in a fresh folder and replaces what the previous run owned
(``OWNED``) only at its end; more failed extractions than ``compositional.max_failure_rate`` allows end it with
``failure.json`` and no results.json. Intervals resample graphs/prompts with all their seeds
(``metrics.resampling_unit``).

This module runs the job and owns its folder; the steps live beside it: ``sampling`` (inputs, model loading,
generation), ``extraction`` (scene graphs read back from images), ``metrics`` (the metrics of both tasks) and
``fid_features`` (the FID encoder).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..diffusion.noise import NOISE_RULES
from ..hashing import write_atomic, write_json_atomic
from ..machine import machine_info
from .extractors import TooManyExtractionFailures
from .protocol import EvalProtocol
from .sampling import configure_sampling, generate, load_evaluated_model, load_inputs
from .metrics import score_compositional, score_t2i

RESULTS_NAME = "results.json"
FAILURE_NAME = "failure.json"  # written instead of results.json when too many extractions failed
# 2: intervals resample graphs/prompts (all seeds together); FID intervals re-centred. 3: the noise rule
# (resolved.noise_rule; per-graph noise by default, diffusion.noise) and the spatial-hold figure
RESULTS_VERSION = 3


# ---- entry point --------------------------------------------------------------------------------------------------
def failure_summary(results: dict[str, Any]) -> str:
    """"extraction failures: model 0/256, baseline 3/256" (compositional; the worst granularity/mode of a role),
    for the one-line summary a command prints; "" for t2i."""
    iou = results.get("metrics", {}).get("iou")
    if not iou:
        return ""
    parts = []
    for role, reps in iou.items():
        worst = max(reps.values(), key=lambda rep: rep["n_failed"])
        parts.append(f"{role} {worst['n_failed']}/{worst['n_images']}")
    return "extraction failures: " + ", ".join(parts)


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# What one evaluate run owns in its --out folder: replaced as a whole by the next run, so a reused folder never
# keeps a previous run's images, grids or plots (other files there are left alone). Extraction caches are carried
# over: they are keyed by image bytes + extractor settings, so another model's run cannot reuse their rows.
OWNED = ("results.json", FAILURE_NAME, "images", "report.md", "report.html", "report_files")
CACHE_GLOB = "extractions_*.jsonl"


def _owned(folder: Path) -> list[Path]:
    return [folder / n for n in OWNED if (folder / n).exists()] + sorted(folder.glob(CACHE_GLOB))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _publish(stage: Path, out: Path, only_caches: bool = False) -> None:
    """Move the staged run into ``out``: first what the previous run owned goes, then the staged entries are
    renamed in (each rename atomic; same file system). ``only_caches``: a crashed run hands back only its
    extraction caches (paid requests are kept; the previous results stay as they were)."""
    out.mkdir(parents=True, exist_ok=True)
    moving = sorted(stage.glob(CACHE_GLOB)) if only_caches else list(stage.iterdir())
    for old in (_owned(out) if not only_caches else [out / m.name for m in moving if (out / m.name).exists()]):
        _remove(old)
    for entry in moving:
        os.replace(entry, out / entry.name)
    shutil.rmtree(stage)


def evaluate(model: str | Path, out: str | Path, protocol: EvalProtocol | None = None,
             baseline: str | Path | None = None, command: str | None = None,
             chain: dict[str, Any] | None = None, image_cache: str | Path | None = None) -> dict[str, Any]:
    """Run the protocol on ``model`` (and ``baseline``); write ``out/results.json`` and ``out/images/*.npz``.
    ``chain``: the training run's ids (run, dataset, base model hash), recorded as ``provenance.chain``.
    ``image_cache``: a folder of generated images keyed by the model folder's content hash and everything in the
    protocol that decides the images (a job scoring many methods against one base generates the base's once).

    The run writes into a fresh staging folder next to ``out`` and replaces what the previous run owned in
    ``out`` only when it finishes. Too many failed extractions (``TooManyExtractionFailures``) still replace it,
    with ``failure.json`` and no results.json: a failed run never leaves an older headline number behind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder; pass a folder path")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    for cache in sorted(out.glob(CACHE_GLOB)) if out.is_dir() else []:
        shutil.copy2(cache, stage / cache.name)
    try:
        results = _evaluate_in(model, stage, protocol, baseline, command, chain,
                               None if image_cache is None else Path(image_cache))
    except TooManyExtractionFailures as e:
        shutil.rmtree(stage / "images", ignore_errors=True)
        write_json_atomic(stage / FAILURE_NAME, {
            "version": RESULTS_VERSION, "error": str(e), "failed": e.failed, "done": e.done, "total": e.total,
            "allowed": e.limit, "status_counts": e.statuses, "command": command}, allow_nan=False)
        _publish(stage, out)
        raise
    except BaseException:
        _publish(stage, out, only_caches=True)
        raise
    _publish(stage, out)
    return results


def _image_key(sha256: str, protocol: EvalProtocol, used: dict[str, Any]) -> str:
    """What decides a model's images: its folder content, the inputs, the sampling settings (threads included:
    CPU kernels may round differently) and the resolved scheduler and guidance."""
    spec = {"model_sha256": sha256, "task": protocol.task, "inputs": protocol.inputs.model_dump(mode="json"),
            "sampling": protocol.sampling.model_dump(mode="json"), "resolved": used}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _generate_cached(loaded: Any, gen_inputs: Sequence[Any], keys: Sequence[str], protocol: EvalProtocol,
                     used: dict[str, Any], cache: Path | None) -> tuple[np.ndarray, bool]:
    """The model's images, from ``cache`` when an entry with the same key exists; a new entry is written
    atomically, so an interrupted run never leaves a partial one."""
    if cache is None:
        return generate(loaded.pipe, gen_inputs, protocol, used["guidance_scale"], keys), False
    path = cache / f"{_image_key(loaded.info['sha256'], protocol, used)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["images"], True
    images = generate(loaded.pipe, gen_inputs, protocol, used["guidance_scale"], keys)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: given a path, numpy would append ".npz" to the temporary name
            np.savez_compressed(f, images=images)

    write_atomic(path, write)
    return images, False


def _evaluate_in(model: str | Path, out: Path, protocol: EvalProtocol | None, baseline: str | Path | None,
                 command: str | None, chain: dict[str, Any] | None,
                 image_cache: Path | None = None) -> dict[str, Any]:
    """``evaluate``'s work, every file written into ``out`` (the staging folder)."""
    import diffusers  # heavy: keeps evaluation.run light for the jobs and scripts/evaluate.py --help
    import transformers  # heavy, as diffusers

    protocol = protocol or EvalProtocol()
    if protocol.sampling.torch_threads:
        torch.set_num_threads(protocol.sampling.torch_threads)
    (out / "images").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    inputs = load_inputs(protocol)
    prov: dict[str, Any] = {"models": {}, "fallbacks": [], "inputs": inputs.provenance}
    images: dict[str, np.ndarray] = {}
    resolved: dict[str, Any] = {}
    timing: dict[str, float] = {}
    gen_inputs = inputs.graphs if protocol.task == "compositional" else inputs.prompts
    for role, path in (("model", model), ("baseline", baseline)):
        if path is None:
            continue
        t1 = time.time()
        loaded = load_evaluated_model(path, protocol.task)
        used = configure_sampling(loaded.pipe, protocol)
        if resolved and used != {k: resolved[k] for k in used}:
            raise ValueError(f"model and baseline resolve the protocol differently: {resolved} vs {used}; set "
                             "sampling.guidance_scale and sampling.scheduler explicitly")
        resolved.update(used)
        images[role], cached = _generate_cached(loaded, gen_inputs, inputs.noise_keys, protocol, used, image_cache)
        np.savez_compressed(out / "images" / f"{role}.npz", images=images[role])
        prov["models"][role] = {**loaded.info, **({"images_from_cache": cached} if image_cache is not None else {})}
        if loaded.info["random_init"]:
            prov["fallbacks"].append(f"{role}: model folder {loaded.info['path_name']!r} is RANDOM-INIT")
        timing[f"generate_{role}_s"] = round(time.time() - t1, 2)
        del loaded
    if "baseline" in images and images["baseline"].shape != images["model"].shape:
        raise ValueError(f"model and baseline images differ in shape: {images['model'].shape} vs "
                         f"{images['baseline'].shape}; set sampling.resolution")
    if inputs.reference_images is not None:  # the renders of the graphs, shown beside them in the report
        np.savez_compressed(out / "images" / "reference.npz", images=inputs.reference_images)
    resolved["resolution"] = [int(images["model"].shape[1]), int(images["model"].shape[2])]
    resolved["n_images_per_model"] = int(len(images["model"]))
    resolved["noise_rule"] = {"rule": protocol.sampling.noise, "definition": NOISE_RULES[protocol.sampling.noise]}
    t1 = time.time()
    if protocol.task == "compositional":
        metrics = score_compositional(protocol, inputs, images, out, prov)
    else:
        metrics = score_t2i(protocol, inputs, images, prov)
    timing["metrics_s"] = round(time.time() - t1, 2)
    timing["total_s"] = round(time.time() - t0, 2)
    prov.update({"sgalign_commit": _git_commit(), "diffusers": diffusers.__version__,
                 "transformers": transformers.__version__, "machine": machine_info(), "timing": timing,
                 "command": command})
    prov["fallbacks"] = list(dict.fromkeys(prov["fallbacks"]))
    if chain is not None:
        base = prov["models"].get("baseline", {}).get("sha256")
        prov["chain"] = {**chain, "baseline_is_base_model": base == chain.get("base_model_sha256")}
    results = {
        "version": RESULTS_VERSION, "task": protocol.task,
        "protocol": protocol.model_dump(mode="json"), "resolved": resolved,
        "inputs": {"ids": inputs.ids, "prompts": inputs.prompts,
                   "graphs": [None if g is None else g.to_record(img_id=str(k)).model_dump(mode="json")
                              for k, g in enumerate(inputs.graphs)],
                   "image_order": "image g*K + k = input g with seed sampling.seeds[k] (resolved.noise_rule)",
                   "noise_keys": inputs.noise_keys,
                   "images": {role: f"images/{role}.npz" for role in images},
                   "reference_images": None if inputs.reference_images is None else "images/reference.npz"},
        "metrics": metrics, "provenance": prov,
    }
    write_json_atomic(out / RESULTS_NAME, results, allow_nan=False)  # strict JSON: a NaN is an error
    return results
