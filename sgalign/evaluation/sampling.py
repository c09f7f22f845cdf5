"""What an evaluation samples: its inputs (world graph sets, a LAION-SG split, a prompt file), the model folder's
pipeline, the protocol's scheduler and guidance, and the images (image ``g * K + k`` = input ``g``, seed ``k``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..diffusion.noise import image_generators, noise_keys
from ..errors import UserError
from ..progress import quiet_library_bars
from ..hashing import TRAINING_RECORD, file_sha256, folder_sha256, is_random_init, model_index, read_record
from ..scene_graph import SceneGraph, load_split
from ..world import img_id_for, render_array, sample_split
from ..world.prompts import parse_world_prompt
from .protocol import EvalProtocol

_SG_CLASSES = {"StableDiffusionSGPipeline": "sd15", "StableDiffusionXLSGPipeline": "sdxl"}
_T2I_CLASSES = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl"}
_RECORD_KEYS = ("model", "method", "task", "step", "steps", "complete", "random_init_base", "ema")


# ---- models -------------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    pipe: Any
    info: dict[str, Any]


def _pipeline(path: Path, task: str) -> Any:
    """The pipeline of a folder the task accepts (``check_model_folder``), through the one loader: compositional,
    its SG pipeline; t2i, its text path (an SG folder's encoder unused) as the plain diffusers pipeline."""
    # heavy (diffusers): keeps evaluation.run light for the jobs and evaluate.py --help
    from ..pipelines import load_pipeline

    return load_pipeline(path, text_only=task != "compositional")


class ModelFolderError(UserError, ValueError):
    """A model folder the task cannot run (exit 2)."""


class NotAModelFolder(UserError, FileNotFoundError):
    """No model_index.json (exit 2)."""


def check_model_folder(path: str | Path, task: str, weights: bool = True) -> tuple[dict[str, Any], str, dict]:
    """(model_index, _class_name, accepted classes) of a model folder the ``task`` can run; with ``weights``, also
    its layout and every weights file (truncated, or another architecture's: ``models.loading.check_weights``), so
    a bad baseline is refused before the model's images are sampled."""
    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise NotAModelFolder(f"{path}: not a model folder (no model_index.json); pass a diffusers pipeline "
                               "folder, e.g. a training run's final/ or scripts/make_tiny.py output")
    try:
        index = model_index(path)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ModelFolderError(f"{index_file}: not valid JSON; replace the model folder") from None
    cls_name = index.get("_class_name", "") if isinstance(index, dict) else ""
    # t2i also takes an SG folder (e.g. train.py --task t2i from the world SD1.5-SG): its text path, SG encoder unused
    wanted = _SG_CLASSES if task == "compositional" else {**_T2I_CLASSES, **_SG_CLASSES}
    if cls_name not in wanted:
        raise ModelFolderError(f"{index_file}: field _class_name {str(cls_name)[:60]!r} cannot run the {task} task; "
                               f"expected one of {sorted(wanted)}")
    if weights:
        # heavy (diffusers): a folder is checked before the jobs load it
        from ..models.loading import check_layout, check_weights
        check_layout(path)
        if cls_name in _SG_CLASSES and (path / "sg_encoder").is_dir():
            check_weights(path / "sg_encoder")
    return index, cls_name, wanted


def load_evaluated_model(path: str | Path, task: str) -> LoadedModel:
    """The pipeline of a model folder (``model_index.json``), with a ``unet_lora/`` adapter applied when present
    (the trainer's LoRA export), and what provenance needs to know about it."""
    path = Path(path)
    index, cls_name, wanted = check_model_folder(path, task, weights=False)
    import diffusers.utils.logging  # noqa: F401 (loaded now, so that the next line can switch its bars off)
    quiet_library_bars()  # diffusers' "Loading pipeline components" bar ignores the environment variables
    pipe = _pipeline(path, task)
    lora = path / "unet_lora"
    if lora.is_dir():
        pipe.unet.load_lora_adapter(str(lora), prefix=None, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    records = {}
    for name in (TRAINING_RECORD, "training.json"):
        rec = read_record(path, name)
        if rec is not None:
            records[name] = {k: rec.get(k) for k in _RECORD_KEYS if k in rec}
    random_init = is_random_init(index) or any(r.get("random_init_base") for r in records.values())
    info = {"path_name": path.name, "class": cls_name, "arch": wanted[cls_name], "sha256": folder_sha256(path),
            "random_init": bool(random_init), "lora": lora.is_dir(), "records": records,
            "text_path_of_sg_model": task == "t2i" and cls_name in _SG_CLASSES}
    return LoadedModel(pipe, info)


def configure_sampling(pipe: Any, protocol: EvalProtocol) -> dict[str, Any]:
    """Apply the protocol's scheduler; return the values that were actually used (recorded in results)."""
    s = protocol.sampling
    if s.scheduler == "ddim":
        from diffusers import DDIMScheduler  # heavy: as load_pipeline

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    g = s.guidance_scale if s.guidance_scale is not None else getattr(pipe, "default_guidance_scale",
                                                                        5.0 if "XL" in type(pipe).__name__ else 7.5)
    out = {"scheduler_class": type(pipe.scheduler).__name__, "guidance_scale": float(g),
           "prediction_type": pipe.scheduler.config.get("prediction_type")}
    if hasattr(pipe, "guidance_record"):  # an SG pipeline: the graph guidance and rescale it samples with (its folder's)
        out.update(pipe.guidance_record(float(g)))
    return out


@torch.no_grad()
def generate(pipe: Any, inputs: Sequence[Any], protocol: EvalProtocol, guidance_scale: float,
             keys: Sequence[str]) -> np.ndarray:
    """uint8 [G*K, H, W, 3]; image ``g*K + k`` is input ``g`` with seed ``seeds[k]`` under the protocol's noise rule
    (``keys``: the inputs' noise keys, ``Inputs.noise_keys``)."""
    s = protocol.sampling
    if len(keys) != len(inputs):
        raise ValueError(f"got {len(keys)} noise keys for {len(inputs)} inputs")
    size = {} if s.resolution is None else {"height": s.resolution, "width": s.resolution}
    chunks = []
    for start in range(0, len(inputs), s.batch_graphs):
        part = list(inputs[start:start + s.batch_graphs])
        gens = image_generators(s.seeds, keys[start:start + s.batch_graphs], s.noise)
        common = dict(num_inference_steps=s.steps, guidance_scale=guidance_scale, eta=s.eta, output_type="np", **size)
        if protocol.task == "compositional":
            out = pipe(part, num_images_per_graph=len(s.seeds), generator=gens, **common)
        else:
            out = pipe(prompt=part, num_images_per_prompt=len(s.seeds), generator=gens, **common)
        chunks.append(np.asarray(out.images))
    images = np.concatenate(chunks)
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def noise_rule(results: dict[str, Any]) -> str:
    """The noise rule a results.json was sampled under: ``sampling.noise``, or "shared" for results before
    version 3 (which had no such key and drew seed k's noise for every graph)."""
    return results["protocol"]["sampling"].get("noise", "shared")


def check_same_noise(named: dict[str, dict[str, Any]]) -> str:
    """The one noise rule of several results.json (name -> results) about to be compared image by image; a
    ValueError naming both sides when they differ (their images of one graph started from different noise)."""
    rules = {name: noise_rule(r) for name, r in named.items()}
    if len(set(rules.values())) > 1:
        raise ValueError("results sampled under different noise rules cannot be paired: "
                         + ", ".join(f"{n} {r!r}" for n, r in rules.items())
                         + "; re-run the older evaluation (results version 3 draws per-graph noise)")
    return next(iter(rules.values()))


# ---- inputs -------------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    ids: list[str]
    graphs: list[SceneGraph | None]  # None: a t2i prompt that is not a world prompt
    prompts: list[str] | None  # t2i only
    reference_images: np.ndarray | None  # uint8 [G, H, W, 3] renders (world graph sets), for FID
    provenance: dict[str, Any]

    @property
    def noise_keys(self) -> list[str]:
        """Each input's noise identity (``diffusion.noise``): its graph's serialised text, or its prompt."""
        return input_noise_keys(self.graphs, self.prompts)


def input_noise_keys(graphs: Sequence[SceneGraph | None], prompts: Sequence[str] | None = None) -> list[str]:
    """Noise keys of an input set: a prompt's text when there are prompts, else the graph's serialised text."""
    return noise_keys(list(prompts) if prompts is not None else [g.serialize() for g in graphs])


class InputsError(UserError, ValueError):
    """The configured input file is missing, empty or malformed (exit 2 in evaluate.py)."""


def holdout_kwargs(src: Any) -> dict[str, Any]:
    """``sample_split``'s holdout arguments of a world input set; {} without a holdout (provenance as before)."""
    if not src.holdout:
        return {}
    return {"holdout": list(src.holdout), **({"novel_only": True} if src.novel_only else {})}


def load_inputs(protocol: EvalProtocol) -> Inputs:
    src = protocol.inputs
    if src.source == "world":
        scenes = sample_split(src.split, src.n, seed=src.seed, **holdout_kwargs(src))
        graphs = [sc.graph() for sc in scenes]
        ids = [img_id_for(src.split, i) for i in range(len(scenes))]
        prompts = [g.serialize().strip() for g in graphs] if protocol.task == "t2i" else None
        extra = "".join(f", {k}={v!r}" for k, v in holdout_kwargs(src).items())
        prov = {"source": "world", "split": src.split, "n": len(scenes), "seed": src.seed, **holdout_kwargs(src),
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
        prompts = _read_prompts(path)[:src.n]
        graphs = [_world_graph_or_none(p) for p in prompts]
        ids = [str(i) for i in range(len(prompts))]
    if len(ids) < 2:
        raise InputsError(f"inputs.path {path}: need at least 2 graphs/prompts, got {len(ids)}")
    prov = {"source": "file", "file": path.name, "file_sha256": file_sha256(path),
            "n": len(ids)}
    return Inputs(ids, graphs, prompts, None, prov)


def _read_prompts(path: Path) -> list[str]:
    """A prompt file: a JSON list of strings (``.json``) or one prompt a non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
        prompts = json.loads(text) if path.suffix == ".json" else [ln.strip() for ln in text.splitlines()
                                                                   if ln.strip()]
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise InputsError(f"inputs.path {path}: not a readable prompt file ({type(e).__name__}); expected a JSON "
                          "list of prompt strings or one prompt a line") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise InputsError(f"inputs.path {path}: expected a JSON list of prompt strings")
    return prompts


def _world_graph_or_none(prompt: str) -> SceneGraph | None:
    """The world graph a prompt serialises (the world reward scores it); None for any other prompt."""
    try:
        return parse_world_prompt(prompt)
    except ValueError:
        return None
