"""Base-model quality of a world SD1.5-SG (issue 4 item 4), measured with the world oracle: ``bench_world_base``.

Protocol (fixed, recorded in the result): the first ``n_graphs`` graphs of the world sampler's ``split`` (seed 0),
each generated with every seed in ``seeds`` (``noise="per-graph"``, the default: image k of each graph has its own
noise, hashed from the graph and seed k; ``"shared"``: seed k is the same noise for every graph), DDIM with ``steps``
steps (``eta``, default 0), classifier-free guidance ``guidance`` (None: the model folder's, ``default_guidance_scale``;
unconditional branch: empty text). Each image is
parsed by the world oracle with LAION-SG's closed-vocabulary extraction (``GraphParserExtractor``) and scored
against its graph with SG-IoU / Entity-IoU / Relation-IoU (``normalized`` mode), at two granularities: ``phrase``
(entities are "colour size shape": the strict one) and ``label`` (entities are shapes, as LAION-SG's lists of
labels); 95 % percentile-bootstrap intervals resampling graphs (all seeds of a graph together). FID: generated images
vs the renders of the same graphs, on world-CLIP image features (projected embeddings), with a bootstrap interval.
Optional: the conditioning gap (``gap_graphs``), the predicate probe (``predicate_probe`` graphs) and the attention
probe (``attention_probe`` graphs: where object tokens attend, true vs inverted predicates, by timestep).

``scripts/bench_world_base.py`` is its command line; ``jobs.results_doc.render_base_section`` renders the result.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..diffusion.noise import NOISE_RULES
from ..evaluation import GraphParserExtractor, evaluate_sg_iou
from ..evaluation.conditioning_gap import conditioning_gap, sample_graph_images
from ..evaluation.conditioning_gap import attention_probe as run_attention_probe
from ..evaluation.conditioning_gap import predicate_probe as run_predicate_probe
from ..evaluation.fid import extract_features, fid_bootstrap
from ..evaluation.fid_features import world_clip_dir, world_clip_fid_features
from ..evaluation.sampling import input_noise_keys
from ..evaluation.sg_iou import spatial_hold, triple_counts
from ..pipelines import load_pipeline
from ..world import WorldOracle, predicate_blind_hold, render_array, sample_split

TRAINING_KEYS = ("recipe", "steps", "wall_seconds", "effective_batch", "all_stages", "initialised_from", "launcher",
                 "stages", "cpu_minutes_from_scratch", "lineage", "one_command")
CI_NOTE = ("95% percentile bootstrap over graphs (all seeds of a graph together), 1000 resamples; "
           "FID: graphs (render + its seeds) resampled, interval recentred on the estimate")


def bench_world_base(model: str | Path, *, split: str = "test", n_graphs: int = 512,
                     seeds: Sequence[int] = (0, 1, 2, 3), steps: int = 20, guidance: float | None = None,
                     eta: float = 0.0, noise: str = "per-graph", text_only: bool = False,
                     graph_guidance: float | None = None,
                     graph_guidance_min_t: int | None = None, graph_guidance_negative: str | None = None,
                     guidance_rescale: float | None = None, graphs_per_call: int = 16,
                     gap_graphs: int = 512, predicate_probe: int = 0, attention_probe: int = 0,
                     clip: str | Path | None = None,
                     images_npz: str | Path | None = None,
                     log: Callable[[str], Any] = functools.partial(print, flush=True)) -> dict[str, Any]:
    """The results of one base model (module docstring): model, protocol, IoU per granularity, spatial hold rate,
    objects per image, FIDs, conditioning gap and predicate probe (None where skipped), timings. ``clip``: the
    world-CLIP folder of the FID features (None: the shipped one); ``images_npz``: where to save the generated images
    (uint8, image g*K + k = graph g, seed k) as soon as they exist."""
    t0, seeds = time.time(), list(seeds)
    scenes = sample_split(split, n_graphs, seed=0)
    gts = [sc.graph() for sc in scenes]
    keys = input_noise_keys(gts) if noise == "per-graph" else None
    pipe = load_pipeline(model, arch="sd15")
    pipe.set_progress_bar_config(disable=True)
    guidance = pipe.default_guidance_scale if guidance is None else float(guidance)
    sampling = dict(use_graph=not text_only, steps=steps, guidance_scale=guidance, eta=eta,
                    graph_guidance_scale=graph_guidance, graph_guidance_min_t=graph_guidance_min_t,
                    graph_guidance_negative=graph_guidance_negative, guidance_rescale=guidance_rescale,
                    graphs_per_call=graphs_per_call)
    gen = sample_graph_images(pipe, gts, seeds, noise_keys=keys, **sampling, on_chunk=lambda n: log(
        f"generated {n}/{len(gts)} graphs x {len(seeds)} seeds {time.time() - t0:.0f}s"))
    gen_seconds = time.time() - t0
    if images_npz is not None:
        np.savez_compressed(images_npz, images=gen)
    scores = oracle_scores(gts, gen, len(seeds))
    fid, fid_floor = world_clip_fid(scenes, gen, len(seeds), split=split, clip=clip)
    # does the model use its conditioning? (same noise and timesteps for every conditioning)
    gap = conditioning_gap(pipe, sample_split(split, gap_graphs, seed=0), seed=0) if gap_graphs else None
    probe = None
    if predicate_probe:
        n = min(predicate_probe, len(gts))
        probe = run_predicate_probe(pipe, gts[:n], gen[:n * len(seeds)], seeds,
                                    noise_keys=None if keys is None else keys[:n], **sampling)
        probe["spatial_hold_chance"] = predicate_blind_hold(scenes[:n])  # what ignoring the predicates scores
    attn = run_attention_probe(pipe, scenes[:attention_probe], seed=0) if attention_probe else None
    protocol = base_protocol(pipe, split=split, n_graphs=n_graphs, seeds=seeds, noise=noise, text_only=text_only,
                             steps=steps, guidance=guidance, eta=eta, images=gen,
                             graph_guidance=(graph_guidance, graph_guidance_min_t, graph_guidance_negative),
                             guidance_rescale=guidance_rescale)
    return {**model_fields(model), "protocol": protocol, **scores, "fid_world_clip": fid,
            "fid_renders_vs_renders": fid_floor, "conditioning_gap": gap, "predicate_probe": probe,
            "attention_probe": attn,
            "generation_seconds": round(gen_seconds, 1), "total_seconds": round(time.time() - t0, 1)}


def probe_world_base(model: str | Path, *, split: str = "validation", gap_graphs: int = 512,
                     attention_probe: int = 64) -> dict[str, Any]:
    """The probes that need no samples (conditioning gap, attention probe) of one model, on the first graphs of
    ``split``: minutes cheaper than ``bench_world_base``, for following a training run."""
    t0 = time.time()
    pipe = load_pipeline(model, arch="sd15")
    gap = conditioning_gap(pipe, sample_split(split, gap_graphs, seed=0), seed=0) if gap_graphs else None
    attn = run_attention_probe(pipe, sample_split(split, attention_probe, seed=0), seed=0) if attention_probe else None
    return {**model_fields(model), "protocol": {"split": split, "samples": "none (probes only)"},
            "conditioning_gap": gap, "attention_probe": attn, "total_seconds": round(time.time() - t0, 1)}


def oracle_scores(graphs: Sequence, images: np.ndarray, k: int) -> dict[str, Any]:
    """IoU per granularity and the spatial hold rate (phrase) of ``images`` (image g*k + j = graph g), resampled by
    graph (the seeds of one graph are not independent); mean objects the oracle detects vs the graphs'."""
    oracle = WorldOracle()
    per_gt = [g for g in graphs for _ in range(k)]
    groups = [g for g in range(len(graphs)) for _ in range(k)]
    iou, spatial = {}, None
    for gran in ("phrase", "label"):
        ex = GraphParserExtractor(oracle, granularity=gran)
        preds = [ex.extract(im, reference=g) for im, g in zip(images, per_gt)]
        rep = evaluate_sg_iou(per_gt, preds, mode="normalized", granularity=gran, n_resamples=1000, seed=0,
                              groups=groups)
        if gran == "phrase":
            spatial = spatial_hold(triple_counts(per_gt, preds)["spatial"], groups=groups, n_resamples=1000, seed=0,
                                   unit="graph (all seeds together)")
            spatial.pop("per_image")
        iou[gran] = {"mean": rep.mean, "ci": {n: v.to_dict() for n, v in rep.ci.items()}, "n_images": rep.n_images,
                     "n_failed": rep.n_failed}
    n_objects = [len(oracle.parse(im).detections) for im in images]
    return {"iou": iou, "spatial_hold": spatial, "mean_detected_objects": float(np.mean(n_objects)),
            "mean_gt_objects": float(np.mean([len(g.items) for g in graphs]))}


def world_clip_fid(scenes: Sequence, images: np.ndarray, k: int, *, split: str,
                   clip: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(FID of ``images`` vs the renders of ``scenes``, the floor: renders vs renders of the next len(scenes) graphs
    of ``split``) on world-CLIP's projected image features, with bootstrap intervals."""
    feats = world_clip_fid_features(world_clip_dir(None if clip is None else str(clip)))
    real = torch.from_numpy(render_array(scenes)).permute(0, 3, 1, 2)
    fake = torch.from_numpy(images).permute(0, 3, 1, 2)
    fr, ff = extract_features(real, feats, 128), extract_features(fake, feats, 128)
    fid = fid_bootstrap(fr, ff, feats.describe(), n_resamples=200, seed=0, fake_per_real=k).to_dict()
    other = sample_split(split, 2 * len(scenes), seed=0)[len(scenes):]
    fo = extract_features(torch.from_numpy(render_array(other)).permute(0, 3, 1, 2), feats, 128)
    return fid, fid_bootstrap(fr, fo, feats.describe(), n_resamples=50, seed=0).to_dict()


def base_protocol(pipe: Any, *, split: str, n_graphs: int, seeds: list[int], noise: str, text_only: bool,
                  steps: int, guidance: float, eta: float, images: np.ndarray,
                  graph_guidance: tuple = (None, None, None), guidance_rescale: float | None = None) -> dict[str, Any]:
    """The protocol block of a result: what was sampled and how it was scored, the graph guidance and guidance
    rescale as sampled (the call's, else the model folder's default; graph guidance None: plain guidance, LAION-SG's;
    the pipeline's docstring)."""
    return {"graphs": f"first {n_graphs} {split}-split graphs, sample_split('{split}', n, seed=0)", "split": split,
            "n_graphs": n_graphs, "seeds": seeds, "n_images": int(len(images)),
            "noise_rule": {"rule": noise, "definition": NOISE_RULES[noise]},
            "conditioning": "text path alone (no SG residual)" if text_only else "SG model (text + graph)",
            "scheduler": type(pipe.scheduler).__name__, "steps": steps, "guidance_scale": guidance,
            **_guidance(pipe, guidance, graph_guidance, guidance_rescale, text_only), "eta": eta,
            "resolution": int(images.shape[1]), "initial_noise_mean_scale": pipe.noise_mean_scale,
            "extractor": "world oracle, closed vocabulary (GraphParserExtractor)", "iou_mode": "normalized",
            "ci": CI_NOTE}


def _guidance(pipe: Any, guidance: float, asked: tuple, rescale: float | None, text_only: bool) -> dict[str, Any]:
    """The graph guidance and rescale as sampled: the call's (scale, min_t, negative) and rescale, else the
    folder's defaults; the text path alone has no graph guidance."""
    out = pipe.guidance_record(guidance, *asked, rescale=rescale)
    if text_only:
        out.update(graph_guidance_scale=None, graph_guidance_min_t=None, graph_guidance_negative=None)
    return out


def model_fields(model: str | Path) -> dict[str, Any]:
    """The model's name and its training record (a recipe stage folder has only its stage record)."""
    folder = Path(model)
    rec_file = next((folder / f for f in ("training_record.json", "stage_record.json") if (folder / f).is_file()),
                    None)
    rec = json.loads(rec_file.read_text()) if rec_file else {}
    return {"model": folder.name, "model_steps": rec.get("steps"), "model_complete": rec.get("complete"),
            "model_training": {k: rec.get(k) for k in TRAINING_KEYS}}
