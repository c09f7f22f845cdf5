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
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..hashing import file_sha256, folder_sha256
from ..machine import machine_info
from ..world.prompts import parse_world_prompt
from ..hashing import write_json_atomic as _write_json_atomic
from ..scene_graph import SceneGraph, load_split
from .protocol import EvalProtocol
from .stats import bootstrap_ci

RESULTS_NAME = "results.json"
FAILURE_NAME = "failure.json"  # written instead of results.json when too many extractions failed
RESULTS_VERSION = 2  # 2: intervals resample graphs/prompts (all seeds together); FID intervals re-centred
GRAPH_UNIT = "graph (all seeds together)"
PROMPT_UNIT = "prompt (all seeds together)"


# ---- files --------------------------------------------------------------------------------------------------------
def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """``results.json`` / ``failure.json``: strict JSON (a NaN is an error, never written), atomically."""
    return _write_json_atomic(path, obj, allow_nan=False)


# ---- models -------------------------------------------------------------------------------------------------------
_SG_CLASSES = {"StableDiffusionSGPipeline": "sd15", "StableDiffusionXLSGPipeline": "sdxl"}
_T2I_CLASSES = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl"}


@dataclass
class LoadedModel:
    pipe: Any
    info: dict[str, Any]


def load_model(path: str | Path, task: str) -> LoadedModel:
    """The pipeline of a model folder (``model_index.json``), with a ``unet_lora/`` adapter applied when present
    (the trainer's LoRA export), and what provenance needs to know about it."""
    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{path}: not a model folder (no model_index.json); pass a diffusers pipeline folder, "
                                "e.g. a training run's final/ or scripts/make_tiny.py output")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    cls_name = index.get("_class_name", "")
    # t2i also takes an SG folder (e.g. train.py --task t2i from the world SD1.5-SG): its text path, SG encoder unused
    wanted = _SG_CLASSES if task == "compositional" else {**_T2I_CLASSES, **_SG_CLASSES}
    if cls_name not in wanted:
        raise ValueError(f"{index_file}: _class_name {cls_name!r} cannot run the {task} task; expected one of "
                         f"{sorted(wanted)} ({'scene-graph' if task == 'compositional' else 'text'}-conditioned)")
    if task == "compositional":
        from ..pipelines import StableDiffusionSGPipeline, StableDiffusionXLSGPipeline

        cls = StableDiffusionSGPipeline if cls_name == "StableDiffusionSGPipeline" else StableDiffusionXLSGPipeline
        pipe = cls.from_pretrained(path)
    elif cls_name in _SG_CLASSES:
        from ..pipelines.text_only import text_only_pipeline

        pipe, _ = text_only_pipeline(path)
    else:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if cls_name == "StableDiffusionPipeline":
            pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
        else:
            pipe = StableDiffusionXLPipeline.from_pretrained(path)
    lora = path / "unet_lora"
    if lora.is_dir():
        pipe.unet.load_lora_adapter(str(lora), prefix=None, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    records = {}
    for name in ("training_record.json", "training.json"):
        if (path / name).is_file():
            rec = json.loads((path / name).read_text(encoding="utf-8"))
            records[name] = {k: rec.get(k) for k in ("model", "method", "task", "step", "steps", "complete",
                                                      "random_init_base", "ema") if k in rec}
    random_init = "_sgalign_random_init" in index or any(r.get("random_init_base") for r in records.values())
    info = {"path_name": path.name, "class": cls_name, "arch": wanted[cls_name], "sha256": folder_sha256(path),
            "random_init": bool(random_init), "lora": lora.is_dir(), "records": records,
            "text_path_of_sg_model": task == "t2i" and cls_name in _SG_CLASSES}
    return LoadedModel(pipe, info)


def configure_sampling(pipe: Any, protocol: EvalProtocol) -> dict[str, Any]:
    """Apply the protocol's scheduler; return the values that were actually used (recorded in results)."""
    s = protocol.sampling
    if s.scheduler == "ddim":
        from diffusers import DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    g = s.guidance_scale if s.guidance_scale is not None else getattr(pipe, "default_guidance_scale",
                                                                        5.0 if "XL" in type(pipe).__name__ else 7.5)
    return {"scheduler_class": type(pipe.scheduler).__name__, "guidance_scale": float(g),
            "prediction_type": pipe.scheduler.config.get("prediction_type")}


@torch.no_grad()
def generate(pipe: Any, inputs: Sequence[Any], protocol: EvalProtocol, guidance_scale: float) -> np.ndarray:
    """uint8 [G*K, H, W, 3]; image ``g*K + k`` is input ``g`` with seed ``seeds[k]`` (same noise for every g)."""
    s = protocol.sampling
    size = {} if s.resolution is None else {"height": s.resolution, "width": s.resolution}
    chunks = []
    for start in range(0, len(inputs), s.batch_graphs):
        part = list(inputs[start:start + s.batch_graphs])
        common = dict(num_inference_steps=s.steps, guidance_scale=guidance_scale, eta=s.eta, output_type="np", **size)
        if protocol.task == "compositional":
            out = pipe(part, seeds=s.seeds, **common)
        else:
            gens = [torch.Generator("cpu").manual_seed(int(seed)) for _ in part for seed in s.seeds]
            out = pipe(prompt=part, num_images_per_prompt=len(s.seeds), generator=gens, **common)
        chunks.append(np.asarray(out.images))
    images = np.concatenate(chunks)
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


# ---- inputs -------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    ids: list[str]
    graphs: list[SceneGraph | None]  # None: a t2i prompt that is not a world prompt
    prompts: list[str] | None  # t2i only
    reference_images: np.ndarray | None  # uint8 [G, H, W, 3] renders (world graph sets), for FID
    provenance: dict[str, Any]


class InputsError(UserError, ValueError):
    """The configured input file is missing, empty or malformed (exit 2 in evaluate.py)."""


def _held(src) -> dict[str, Any]:
    """``sample_split``'s holdout arguments of a world input set; {} without a holdout (provenance as before)."""
    if not src.holdout:
        return {}
    return {"holdout": list(src.holdout), **({"novel_only": True} if src.novel_only else {})}


def load_inputs(protocol: EvalProtocol) -> Inputs:
    src = protocol.inputs
    if src.source == "world":
        from ..world import img_id_for, render_array, sample_split

        scenes = sample_split(src.split, src.n, seed=src.seed, **_held(src))
        graphs = [sc.graph() for sc in scenes]
        ids = [img_id_for(src.split, i) for i in range(len(scenes))]
        prompts = [g.serialize().strip() for g in graphs] if protocol.task == "t2i" else None
        extra = "".join(f", {k}={v!r}" for k, v in _held(src).items())
        prov = {"source": "world", "split": src.split, "n": len(scenes), "seed": src.seed, **_held(src),
                "definition": f"sgalign.world.sample_split({src.split!r}, {src.n}, seed={src.seed}{extra})"}
        return Inputs(ids, list(graphs), prompts, render_array(scenes), prov)
    path = Path(src.path)
    if not path.is_file():
        raise InputsError(f"inputs.path {path}: file not found")
    if protocol.task == "compositional":
        records = load_split(path).records[:src.n]
        graphs = [SceneGraph.from_record(r) for r in records]
        ids = [str(r.img_id) for r in records]
        prompts = None
    else:
        text = path.read_text(encoding="utf-8")
        prompts = json.loads(text) if path.suffix == ".json" else [ln.strip() for ln in text.splitlines()
                                                                    if ln.strip()]
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise InputsError(f"inputs.path {path}: expected a JSON list of prompt strings")
        prompts = prompts[:src.n]
        graphs = []
        for p in prompts:
            try:
                graphs.append(parse_world_prompt(p))
            except ValueError:
                graphs.append(None)
        ids = [str(i) for i in range(len(prompts))]
    if len(ids) < 2:
        raise InputsError(f"inputs.path {path}: need at least 2 graphs/prompts, got {len(ids)}")
    prov = {"source": "file", "file": path.name, "file_sha256": file_sha256(path),
            "n": len(ids)}
    return Inputs(ids, graphs, prompts, None, prov)


# ---- feature / scoring backends -----------------------------------------------------------------------------------
def world_clip_dir(path: str | None) -> Path:
    from ..world.models.clip import WORLD_CLIP_DIR

    return Path(path) if path else WORLD_CLIP_DIR


def world_clip_status(path: Path) -> tuple[bool, bool]:
    """(usable, trained): a folder with config.json; trained = it has the pretraining's training_record.json."""
    return (path / "config.json").is_file(), (path / "training_record.json").is_file()


class _ClipImageTower(torch.nn.Module):
    """world-CLIP's projected image embedding (unnormalised) from CLIP-normalised pixels."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


class RandomInitEncoder(torch.nn.Module):
    """FALLBACK FID backbone: a seeded random-init 2-layer CNN (64 px in, 16-d pooled features). Its FIDs compare
    images under one fixed random projection only; they are not world-CLIP or Inception FIDs."""

    def __init__(self, seed: int = 0, dim: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.conv2 = torch.nn.Conv2d(16, dim, 4, stride=4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.conv2(torch.nn.functional.gelu(self.conv1(x)))).mean((2, 3))


def build_fid_features(protocol: EvalProtocol) -> tuple[Any, dict[str, Any], list[str]]:
    """(FIDFeatures, provenance, fallbacks) for ``compositional.fid_features``."""
    from .fid import CLIP_MEAN, CLIP_STD, FIDFeatures, ImageEncoderFeatures, inception_fid_features

    c = protocol.compositional
    choice = c.fid_features
    clip_dir = world_clip_dir(c.world_clip_path)
    usable, trained = world_clip_status(clip_dir)
    if choice == "auto":
        choice = "world-clip" if usable and trained else "random-init"
    if choice == "inception":
        feats = inception_fid_features(c.inception_path, c.fid_preprocess)
        return feats, {"choice": "inception", **feats.describe()}, []
    if choice == "world-clip":
        if not usable:
            raise FileNotFoundError(f"compositional.fid_features=world-clip: no world-CLIP at {clip_dir} (config.json "
                                    "missing); train it with scripts/pretrain_clip.py or set fid_features=random-init")
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(clip_dir).eval()
        name = "world-CLIP image tower (projected)" + ("" if trained else " [UNTRAINED: no training_record.json]")
        feats = FIDFeatures(ImageEncoderFeatures(_ClipImageTower(clip), image_size=clip.config.vision_config.image_size,
                                                 mean=CLIP_MEAN, std=CLIP_STD, name=name),
                            num_features=clip.config.projection_dim, preprocess=c.fid_preprocess, name="world-CLIP")
        fallbacks = [] if trained else [f"FID features: world-CLIP folder {clip_dir.name} has no training_record.json "
                                        "(not the trained world-CLIP)"]
        return feats, {"choice": "world-clip", "folder": clip_dir.name, "trained": trained, **feats.describe()}, \
            fallbacks
    enc = RandomInitEncoder(seed=0)
    feats = FIDFeatures(ImageEncoderFeatures(enc, image_size=64, name="RANDOM-INIT 2-layer CNN (fallback, seed 0)"),
                        num_features=16, preprocess=c.fid_preprocess, name="random-init CNN (fallback)")
    why = "requested" if c.fid_features == "random-init" else f"no trained world-CLIP at {clip_dir.name}"
    return feats, {"choice": "random-init", "fallback": True, **feats.describe()}, \
        [f"FID features: random-init CNN fallback ({why}); FID values are not world-CLIP FIDs"]


class _ParsedImages:
    """The world oracle's readings of a fixed image list, parsed once; ``extract(index, reference)``."""

    name = "world-oracle"

    def __init__(self, oracle: Any, images: np.ndarray) -> None:
        self.oracle, self.scenes = oracle, oracle.parse_batch(list(images))

    def extract(self, index: int, reference: SceneGraph | None = None) -> SceneGraph:
        return self.scenes[index].extract(reference)

    def config(self) -> dict[str, Any]:
        return self.oracle.config()


def extract_graphs(protocol: EvalProtocol, images: np.ndarray, refs: Sequence[SceneGraph], keys: Sequence[str],
                   granularity: str, cache_dir: Path, role: str, paper: bool = False,
                   parsed: Any = None) -> tuple[list[Any], dict[str, Any]]:
    """The extractions of one role at one granularity. ``paper``: the world oracle answers only with the GT
    triples' names, as LAION-SG's GPT (the chat extractor follows ``chat.paper``). ``parsed``: the oracle's
    readings of ``images`` (parsed once per role). More failures than ``max_failure_rate`` allows raise
    ``TooManyExtractionFailures``."""
    from .extractors import ChatCompletionsExtractor, GraphParserExtractor, TooManyExtractionFailures, extract_all

    c = protocol.compositional
    limit = int(np.floor(c.max_failure_rate * len(images)))
    if c.extractor == "world-oracle":
        ex = GraphParserExtractor(parsed, granularity=granularity, name="world-oracle", paper=paper)
        preds = [ex.extract(i, ref) for i, ref in enumerate(refs)]
        failed = sum(not p.ok for p in preds)
        if failed > limit:
            counts = {st: sum(p.status == st for p in preds) for st in sorted({p.status for p in preds})}
            raise TooManyExtractionFailures(failed, len(preds), len(preds), limit, counts)
        return preds, ex.provenance()
    o = c.chat
    ex = ChatCompletionsExtractor(o.model, temperature=o.temperature, seed=o.seed, timeout=o.timeout,
                                  max_retries=o.max_retries, paper=o.paper, api_key_env=o.api_key_env,
                                  base_url_env=o.base_url_env, require_api_key=o.require_api_key)
    cache = cache_dir / f"extractions_{role}.jsonl" if o.cache else None
    preds = extract_all(ex, list(images), list(refs), keys=list(keys), cache_path=cache, max_failures=limit)
    return preds, ex.provenance()


def _ci_dict(ci: Any) -> dict[str, Any]:
    return ci.to_dict()


# ---- tasks --------------------------------------------------------------------------------------------------------
def _compositional(protocol: EvalProtocol, inputs: Inputs, images: dict[str, np.ndarray], out: Path,
                   prov: dict[str, Any]) -> dict[str, Any]:
    from .fid import extract_features, fid_bootstrap, fid_paired
    from .sg_iou import compare_sg_iou, evaluate_sg_iou

    K = len(protocol.sampling.seeds)
    st = protocol.stats
    per_gt = [g for g in inputs.graphs for _ in range(K)]
    graph_of_image = [g for g in range(len(inputs.graphs)) for _ in range(K)]  # resampling unit: the graph
    keys = [f"{i}/seed{s}" for i in inputs.ids for s in protocol.sampling.seeds]
    c = protocol.compositional
    metrics: dict[str, Any] = {"iou": {}, "fid": {}, "vs_baseline": {}, "resampling_unit": GRAPH_UNIT}
    reports: dict[str, dict[str, Any]] = {}
    prov["extractor"] = {}
    for role, imgs in images.items():
        reports[role] = {}
        metrics["iou"][role] = {}
        parsed = None
        if c.extractor == "world-oracle":  # parse each image once for every granularity and mode
            from ..world import WorldOracle

            parsed = _ParsedImages(WorldOracle(), imgs)
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
                preds = extractions[paper]
                rep = evaluate_sg_iou(per_gt, preds, mode=mode, granularity=gran,
                                      failures=protocol.compositional.failures, n_resamples=st.n_resamples,
                                      level=st.level, seed=st.seed, groups=graph_of_image, unit=GRAPH_UNIT)
                reports[role][f"{gran}/{mode}"] = rep
                metrics["iou"][role][f"{gran}/{mode}"] = rep.to_dict()
    if "baseline" in images:
        for key, rep in reports["model"].items():
            diff = compare_sg_iou(rep, reports["baseline"][key], n_resamples=st.n_resamples, level=st.level,
                                  seed=st.seed)
            metrics["vs_baseline"][key] = {m: _ci_dict(ci) for m, ci in diff.items()}
    # FID: generated images vs the renders of the same graphs
    if not c.fid:
        metrics["fid"] = {"skipped": "compositional.fid is false"}
    elif inputs.reference_images is None:
        metrics["fid"] = {"skipped": "no reference images: FID needs a world graph set (renders of the same graphs)"}
    else:
        feats, feat_prov, fallbacks = build_fid_features(protocol)
        prov["fid_features"] = feat_prov
        prov["fallbacks"] += fallbacks
        real = extract_features(torch.from_numpy(inputs.reference_images).permute(0, 3, 1, 2), feats)
        fakes = {}
        for role, imgs in images.items():
            fakes[role] = extract_features(torch.from_numpy(imgs).permute(0, 3, 1, 2), feats)
            res = fid_bootstrap(real, fakes[role], feat_prov, n_resamples=c.fid_resamples, level=st.level,
                                seed=st.seed, fake_per_real=K)
            metrics["fid"][role] = {"fid": res.fid, "ci": _ci_dict(res.ci), "n_real": res.n_real,
                                    "n_fake": res.n_fake, "reference": "renders of the same graphs (one per graph)"}
        if "baseline" in fakes:  # FIDs of two models are compared paired, never by their separate intervals
            metrics["fid"]["vs_baseline"] = fid_paired(real, fakes["model"], fakes["baseline"], fake_per_real=K,
                                                       n_resamples=c.fid_resamples, level=st.level,
                                                       seed=st.seed).to_dict()
        if c.fid_floor and protocol.inputs.source == "world":
            metrics["fid"]["floor"] = _fid_floor(protocol, real, feats, len(images["model"]), feat_prov)
    return metrics


def _fid_floor(protocol: EvalProtocol, real: torch.Tensor, feats: Any, n_fake: int,
               feat_prov: dict[str, Any]) -> dict[str, Any]:
    """FID of the reference renders against renders of ``n_fake`` OTHER graphs of the split: what a perfect
    renderer scores at this N (FID's small-N bias and graph-to-graph spread), the number a model's FID is read
    against."""
    from ..world import render_array, sample_split
    from .fid import extract_features, fid_bootstrap

    src = protocol.inputs
    others = sample_split(src.split, src.n + n_fake, seed=src.seed, **_held(src))[src.n:]  # first n: the inputs
    fo = extract_features(torch.from_numpy(render_array(others)).permute(0, 3, 1, 2), feats)
    res = fid_bootstrap(real, fo, feat_prov, n_resamples=protocol.compositional.fid_resamples,
                        level=protocol.stats.level, seed=protocol.stats.seed)
    return {"fid": res.fid, "ci": _ci_dict(res.ci), "n_real": res.n_real, "n_fake": res.n_fake,
            "reference": f"renders of {n_fake} other {src.split} graphs (sample_split({src.split!r}, "
                         f"{src.n + n_fake}, seed={src.seed})[{src.n}:])"}


def _world_clip_scores(path: Path, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    import torch.nn.functional as F

    from ..world.models.clip import image_embeds, load_world_clip, text_embeds

    model, tok = load_world_clip(path)
    size = model.config.vision_config.image_size
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        img = torch.cat([image_embeds(model, x[i:i + 64]) for i in range(0, len(x), 64)])
        txt = text_embeds(model, tok, list(prompts))
    return (img * txt).sum(-1).double().numpy()


def _t2i(protocol: EvalProtocol, inputs: Inputs, images: dict[str, np.ndarray], prov: dict[str, Any]) -> dict[str, Any]:
    from .preference import summarize_preference

    K = len(protocol.sampling.seeds)
    st, t = protocol.stats, protocol.t2i
    per_prompt = [p for p in inputs.prompts for _ in range(K)]
    per_graph = [g for g in inputs.graphs for _ in range(K)]
    groups = [i for i in inputs.ids for _ in range(K)] if t.group_by_prompt else None
    scores: dict[str, dict[str, np.ndarray]] = {role: {} for role in images}
    prov["scorers"] = {}
    for scorer in t.scorers:
        if scorer == "world_reward":
            bad = [inputs.prompts[i] for i, g in enumerate(inputs.graphs) if g is None]
            if bad:
                raise ValueError(f"t2i scorer world_reward: {len(bad)} prompt(s) are not world prompts, e.g. "
                                 f"{bad[0]!r}; drop world_reward from t2i.scorers or use world prompts")
            from ..rewards import world_reward

            reward = world_reward()
            for role, imgs in images.items():
                from PIL import Image

                out = reward([Image.fromarray(a) for a in imgs], per_graph)
                scores[role][scorer] = np.array([s["reward"] for s in out.scores], dtype=np.float64)
            prov["scorers"][scorer] = {"definition": "(DPG-Bench + T2I-CompBench 3-in-1) / 2 on the world oracle "
                                                     "(Inversion-DPO Eq. 17), prompt parsed back to its world graph",
                                       "provenance": [p.to_dict() for p in out.provenance]}
            if out.any_fallback:
                prov["fallbacks"].append("world_reward: a fallback backend was used")
        else:
            path = world_clip_dir(t.world_clip_path)
            usable, trained = world_clip_status(path)
            if not usable:
                prov["fallbacks"].append(f"t2i scorer world_clip skipped: no world-CLIP at {path.name}")
                prov["scorers"][scorer] = {"skipped": f"no world-CLIP folder ({path.name}/config.json missing)"}
                continue
            for role, imgs in images.items():
                scores[role][scorer] = _world_clip_scores(path, imgs, per_prompt)
            prov["scorers"][scorer] = {"definition": "cosine of world-CLIP projected image and prompt embeddings",
                                       "folder": path.name, "trained": trained}
            if not trained:
                prov["fallbacks"].append(f"world_clip scorer: {path.name} has no training_record.json (untrained)")
    kw = dict(n_resamples=st.n_resamples, level=st.level, seed=st.seed, groups=groups,
              unit=PROMPT_UNIT if groups is not None else "image")
    metrics: dict[str, Any] = {"scores": {}, "vs_baseline": {}, "resampling_unit": kw["unit"]}
    for role in images:
        metrics["scores"][role] = {}
        for name, v in scores[role].items():
            metrics["scores"][role][name] = {"mean": _ci_dict(bootstrap_ci(v, np.mean, **kw)),
                                             "median": _ci_dict(bootstrap_ci(v, np.median, **kw)),
                                             "per_image": v.tolist()}
    if "baseline" in images:
        for name in scores["model"]:
            metrics["vs_baseline"][name] = summarize_preference(
                scores["model"][name], scores["baseline"][name], metric=name, tie_tolerance=t.tie_tolerance,
                **kw).to_dict()
    return metrics


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
             chain: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the protocol on ``model`` (and ``baseline``); write ``out/results.json`` and ``out/images/*.npz``.
    ``chain``: the training run's ids (run, dataset, base model hash), recorded as ``provenance.chain``.

    The run writes into a fresh staging folder next to ``out`` and replaces what the previous run owned in
    ``out`` only when it finishes. Too many failed extractions (``TooManyExtractionFailures``) still replace it,
    with ``failure.json`` and no results.json: a failed run never leaves an older headline number behind."""
    from .extractors import TooManyExtractionFailures

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a folder; pass a folder path")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    for cache in sorted(out.glob(CACHE_GLOB)) if out.is_dir() else []:
        shutil.copy2(cache, stage / cache.name)
    try:
        results = _evaluate_in(model, stage, protocol, baseline, command, chain)
    except TooManyExtractionFailures as e:
        shutil.rmtree(stage / "images", ignore_errors=True)
        write_json_atomic(stage / FAILURE_NAME, {
            "version": RESULTS_VERSION, "error": str(e), "failed": e.failed, "done": e.done, "total": e.total,
            "allowed": e.limit, "status_counts": e.statuses, "command": command})
        _publish(stage, out)
        raise
    except BaseException:
        _publish(stage, out, only_caches=True)
        raise
    _publish(stage, out)
    return results


def _evaluate_in(model: str | Path, out: Path, protocol: EvalProtocol | None, baseline: str | Path | None,
                 command: str | None, chain: dict[str, Any] | None) -> dict[str, Any]:
    """``evaluate``'s work, every file written into ``out`` (the staging folder)."""
    import diffusers
    import transformers

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
        loaded = load_model(path, protocol.task)
        used = configure_sampling(loaded.pipe, protocol)
        if resolved and used != {k: resolved[k] for k in used}:
            raise ValueError(f"model and baseline resolve the protocol differently: {resolved} vs {used}; set "
                             "sampling.guidance_scale and sampling.scheduler explicitly")
        resolved.update(used)
        images[role] = generate(loaded.pipe, gen_inputs, protocol, used["guidance_scale"])
        np.savez_compressed(out / "images" / f"{role}.npz", images=images[role])
        prov["models"][role] = loaded.info
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
    t1 = time.time()
    if protocol.task == "compositional":
        metrics = _compositional(protocol, inputs, images, out, prov)
    else:
        metrics = _t2i(protocol, inputs, images, prov)
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
                   "image_order": "image g*K + k = input g with seed sampling.seeds[k]",
                   "images": {role: f"images/{role}.npz" for role in images},
                   "reference_images": None if inputs.reference_images is None else "images/reference.npz"},
        "metrics": metrics, "provenance": prov,
    }
    write_json_atomic(out / RESULTS_NAME, results)
    return results
