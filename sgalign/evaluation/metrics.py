"""An evaluation's numbers from its images: the compositional task's SG-IoU family and FID (with the renders'
floor), the t2i task's preference scores; each with intervals that resample graphs/prompts (all seeds together)
and paired model - baseline comparisons."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..rewards import world_reward
from ..rewards.backends.world_clip import WorldCLIPSimilarity
from ..world import WorldOracle, render_array, sample_split
from .extractors import ParsedImages, extract_graphs
from .fid import extract_features, fid_bootstrap, fid_paired
from .fid_features import build_fid_features, world_clip_dir, world_clip_status
from .preference import summarize_preference
from .protocol import EvalProtocol
from .sampling import Inputs, holdout_kwargs
from .sg_iou import compare_sg_iou, compare_spatial_hold, evaluate_sg_iou, spatial_hold, triple_counts
from .stats import bootstrap_ci

GRAPH_UNIT = "graph (all seeds together)"
PROMPT_UNIT = "prompt (all seeds together)"


# ---- compositional ------------------------------------------------------------------------------------------------
def score_compositional(protocol: EvalProtocol, inputs: Inputs, images: dict[str, np.ndarray], out: Path,
                        prov: dict[str, Any]) -> dict[str, Any]:
    """SG-IoU / Entity-IoU / Relation-IoU per role, granularity and mode, paired differences vs the baseline, and
    FID; ``prov`` gains the extractor's (and FID features') provenance, ``out`` the chat extractor's caches."""
    K = len(protocol.sampling.seeds)
    st = protocol.stats
    metrics: dict[str, Any] = {"iou": {}, "fid": {}, "vs_baseline": {}, "resampling_unit": GRAPH_UNIT}
    reports: dict[str, dict[str, Any]] = {}
    prov["extractor"] = {}
    counts: dict[str, np.ndarray] = {}
    for role, imgs in images.items():
        reports[role], phrase_preds = _iou_reports(protocol, inputs, imgs, role, out, prov)
        metrics["iou"][role] = {key: rep.to_dict() for key, rep in reports[role].items()}
        if phrase_preds is not None:
            counts[role] = triple_counts([g for g in inputs.graphs for _ in range(K)], phrase_preds)["spatial"]
    if "baseline" in images:
        for key, rep in reports["model"].items():
            diff = compare_sg_iou(rep, reports["baseline"][key], n_resamples=st.n_resamples, level=st.level,
                                  seed=st.seed)
            metrics["vs_baseline"][key] = {m: ci.to_dict() for m, ci in diff.items()}
    metrics["spatial"] = _spatial(protocol, counts, len(inputs.graphs))
    c = protocol.compositional
    if not c.fid:
        metrics["fid"] = {"skipped": "compositional.fid is false"}
    elif inputs.reference_images is None:
        metrics["fid"] = {"skipped": "no reference images: FID needs a world graph set (renders of the same graphs)"}
    else:
        metrics["fid"] = _fid(protocol, inputs.reference_images, images, K, prov)
    return metrics


def _spatial(protocol: EvalProtocol, counts: dict[str, np.ndarray], n_graphs: int) -> dict[str, Any]:
    """The spatial hold rate per role and its paired Δ vs the baseline (``sg_iou.spatial_hold``)."""
    if not counts:
        return {"skipped": "the spatial hold rate needs the world oracle's phrase-granularity extractions "
                           "(compositional.extractor=world-oracle with phrase in compositional.granularities)"}
    st, K = protocol.stats, len(protocol.sampling.seeds)
    kw = dict(groups=[g for g in range(n_graphs) for _ in range(K)], n_resamples=st.n_resamples, level=st.level,
              seed=st.seed, unit=GRAPH_UNIT)
    out: dict[str, Any] = {"definition": "share of the true graph's spatial triples that hold, among those whose two "
                                         "phrases were both drawn (phrase granularity, pooled over images)"}
    for role, c in counts.items():
        out[role] = spatial_hold(c, **kw)
    if "baseline" in counts:
        out["vs_baseline"] = compare_spatial_hold(counts["model"], counts["baseline"], **kw)
    return out


def _iou_reports(protocol: EvalProtocol, inputs: Inputs, imgs: np.ndarray, role: str, out: Path,
                 prov: dict[str, Any]) -> tuple[dict[str, Any], list[Any] | None]:
    """One role's ``SGIoUReport`` per "granularity/mode"; each extraction made once and shared by the modes that
    read it. Also the phrase-granularity world-oracle extractions (None otherwise), for the spatial hold rate."""
    K = len(protocol.sampling.seeds)
    st, c = protocol.stats, protocol.compositional
    per_gt = [g for g in inputs.graphs for _ in range(K)]
    graph_of_image = [g for g in range(len(inputs.graphs)) for _ in range(K)]  # resampling unit: the graph
    keys = [f"{i}/seed{s}" for i in inputs.ids for s in protocol.sampling.seeds]
    parsed = phrase_preds = None
    if c.extractor == "world-oracle":  # parse each image once for every granularity and mode
        parsed = ParsedImages(WorldOracle(), imgs)
    reports = {}
    for gran in c.granularities:
        extractions: dict[bool, list[Any]] = {}
        for mode in c.iou_modes:
            # paper mode needs LAION-SG's closed vocabulary (GT triple names only); the chat extractor's
            # vocabulary is fixed by chat.paper (the protocol requires it for paper mode)
            paper = c.chat.paper if c.extractor == "chat" else mode == "paper"
            if paper not in extractions:
                preds, ex_prov = extract_graphs(protocol, imgs, per_gt, keys, gran, out, f"{role}_{gran}",
                                                paper=paper, parsed=parsed)
                calls = {k: ex_prov.pop(k) for k in ("status_counts", "retries") if k in ex_prov}
                prov["extractor"][gran if not extractions else f"{gran}/paper"] = ex_prov
                if calls:  # chat extractor: requests made in this run (cached extractions make none)
                    prov.setdefault("extractor_calls", {})[f"{role}/{gran}"] = calls
                extractions[paper] = preds
            reports[f"{gran}/{mode}"] = evaluate_sg_iou(
                per_gt, extractions[paper], mode=mode, granularity=gran, failures=c.failures,
                n_resamples=st.n_resamples, level=st.level, seed=st.seed, groups=graph_of_image, unit=GRAPH_UNIT)
        if gran == "phrase" and parsed is not None:
            phrase_preds = extractions[False] if False in extractions else extract_graphs(
                protocol, imgs, per_gt, keys, gran, out, f"{role}_{gran}", paper=False, parsed=parsed)[0]
    return reports, (phrase_preds if parsed is not None and "phrase" in c.granularities else None)


def _fid(protocol: EvalProtocol, reference: np.ndarray, images: dict[str, np.ndarray], K: int,
         prov: dict[str, Any]) -> dict[str, Any]:
    """FID of each role's images against the renders of the same graphs, paired model - baseline, and the floor."""
    c, st = protocol.compositional, protocol.stats
    feats, feat_prov, fallbacks = build_fid_features(protocol)
    prov["fid_features"] = feat_prov
    prov["fallbacks"] += fallbacks
    real = extract_features(torch.from_numpy(reference).permute(0, 3, 1, 2), feats)
    fid: dict[str, Any] = {}
    fakes = {}
    for role, imgs in images.items():
        fakes[role] = extract_features(torch.from_numpy(imgs).permute(0, 3, 1, 2), feats)
        res = fid_bootstrap(real, fakes[role], feat_prov, n_resamples=c.fid_resamples, level=st.level,
                            seed=st.seed, fake_per_real=K)
        fid[role] = {"fid": res.fid, "ci": res.ci.to_dict(), "n_real": res.n_real, "n_fake": res.n_fake,
                     "reference": "renders of the same graphs (one per graph)"}
    if "baseline" in fakes:  # FIDs of two models are compared paired, never by their separate intervals
        fid["vs_baseline"] = fid_paired(real, fakes["model"], fakes["baseline"], fake_per_real=K,
                                        n_resamples=c.fid_resamples, level=st.level, seed=st.seed).to_dict()
    if c.fid_floor and protocol.inputs.source == "world":
        fid["floor"] = fid_floor(protocol, real, feats, len(images["model"]), feat_prov)
    return fid


def fid_floor(protocol: EvalProtocol, real: torch.Tensor, feats: Any, n_fake: int,
              feat_prov: dict[str, Any]) -> dict[str, Any]:
    """FID of the reference renders against renders of ``n_fake`` OTHER graphs of the split: what a perfect
    renderer scores at this N (FID's small-N bias and graph-to-graph spread), the number a model's FID is read
    against."""
    src = protocol.inputs
    others = sample_split(src.split, src.n + n_fake, seed=src.seed, **holdout_kwargs(src))[src.n:]  # first n: inputs
    fo = extract_features(torch.from_numpy(render_array(others)).permute(0, 3, 1, 2), feats)
    res = fid_bootstrap(real, fo, feat_prov, n_resamples=protocol.compositional.fid_resamples,
                        level=protocol.stats.level, seed=protocol.stats.seed)
    return {"fid": res.fid, "ci": res.ci.to_dict(), "n_real": res.n_real, "n_fake": res.n_fake,
            "reference": f"renders of {n_fake} other {src.split} graphs (sample_split({src.split!r}, "
                         f"{src.n + n_fake}, seed={src.seed})[{src.n}:])"}


# ---- t2i ----------------------------------------------------------------------------------------------------------
def score_t2i(protocol: EvalProtocol, inputs: Inputs, images: dict[str, np.ndarray],
              prov: dict[str, Any]) -> dict[str, Any]:
    """Every ``t2i.scorers`` score per image, mean and median with intervals, win-rates vs the baseline;
    ``prov["scorers"]`` says what each scorer is (or why it was skipped)."""
    K = len(protocol.sampling.seeds)
    st, t = protocol.stats, protocol.t2i
    groups = [i for i in inputs.ids for _ in range(K)] if t.group_by_prompt else None
    scores: dict[str, dict[str, np.ndarray]] = {role: {} for role in images}
    prov["scorers"] = {}
    for scorer in t.scorers:
        score = _world_reward if scorer == "world_reward" else _world_clip
        per_role = score(protocol, inputs, images, prov)
        for role, v in (per_role or {}).items():
            scores[role][scorer] = v
    kw = dict(n_resamples=st.n_resamples, level=st.level, seed=st.seed, groups=groups,
              unit=PROMPT_UNIT if groups is not None else "image")
    metrics: dict[str, Any] = {"scores": {}, "vs_baseline": {}, "resampling_unit": kw["unit"]}
    for role in images:
        metrics["scores"][role] = {}
        for name, v in scores[role].items():
            metrics["scores"][role][name] = {"mean": bootstrap_ci(v, np.mean, **kw).to_dict(),
                                             "median": bootstrap_ci(v, np.median, **kw).to_dict(),
                                             "per_image": v.tolist()}
    if "baseline" in images:
        for name in scores["model"]:
            metrics["vs_baseline"][name] = summarize_preference(
                scores["model"][name], scores["baseline"][name], metric=name, tie_tolerance=t.tie_tolerance,
                **kw).to_dict()
    return metrics


def _world_reward(protocol: EvalProtocol, inputs: Inputs, images: dict[str, np.ndarray],
                  prov: dict[str, Any]) -> dict[str, np.ndarray]:
    """The world reward of each image on its prompt parsed back to a world graph."""
    bad = [inputs.prompts[i] for i, g in enumerate(inputs.graphs) if g is None]
    if bad:
        raise ValueError(f"t2i scorer world_reward: {len(bad)} prompt(s) are not world prompts, e.g. "
                         f"{bad[0]!r}; drop world_reward from t2i.scorers or use world prompts")
    per_graph = [g for g in inputs.graphs for _ in range(len(protocol.sampling.seeds))]
    reward = world_reward()
    scores = {}
    for role, imgs in images.items():
        out = reward([Image.fromarray(a) for a in imgs], per_graph)
        scores[role] = np.array([s["reward"] for s in out.scores], dtype=np.float64)
    prov["scorers"]["world_reward"] = {"definition": "(DPG-Bench + T2I-CompBench 3-in-1) / 2 on the world oracle "
                                                     "(Inversion-DPO Eq. 17), prompt parsed back to its world graph",
                                       "provenance": [p.to_dict() for p in out.provenance]}
    if out.any_fallback:
        prov["fallbacks"].append("world_reward: a fallback backend was used")
    return scores


def _world_clip(protocol: EvalProtocol, inputs: Inputs, images: dict[str, np.ndarray],
                prov: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The world-CLIP cosine of each image with its prompt, by the rewards' backend (the world reward's 3-in-1 C
    reads the same numbers); None, with a fallback note, without a world-CLIP folder."""
    path = world_clip_dir(protocol.t2i.world_clip_path)
    usable, trained = world_clip_status(path)
    if not usable:
        prov["fallbacks"].append(f"t2i scorer world_clip skipped: no world-CLIP at {path.name}")
        prov["scorers"]["world_clip"] = {"skipped": f"no world-CLIP folder ({path.name}/config.json missing)"}
        return None
    sim = WorldCLIPSimilarity.from_pretrained(path, device="cpu")  # the evaluation samples and scores on the CPU
    per_prompt = [p for p in inputs.prompts for _ in range(len(protocol.sampling.seeds))]
    scores = {role: world_clip_scores(sim, imgs, per_prompt) for role, imgs in images.items()}
    prov["scorers"]["world_clip"] = {"definition": "cosine of world-CLIP projected image and prompt embeddings",
                                     "folder": path.name, "trained": trained}
    if not trained:
        prov["fallbacks"].append(f"world_clip scorer: {path.name} has no training_record.json (untrained)")
    return scores


def world_clip_scores(sim: Any, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """float64 [N]: ``sim``'s cosine of uint8 image i [N, H, W, 3] with prompt i."""
    return np.array(sim.similarity([Image.fromarray(a) for a in images], list(prompts)), dtype=np.float64)
