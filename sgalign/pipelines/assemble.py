"""Pipeline objects from ``models.loading.load_model``'s components: the SG pipelines (SD1.5-SG / SDXL-SG) or the
text path as a plain diffusers pipeline (``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``).

An SD1.5-SG / SDXL-SG folder is an SD1.5 / SDXL folder plus ``sg_encoder/``; for the t2i task its UNet is driven by
the prompt alone, exactly as the plain pipeline drives it, so its SG encoder is not loaded (``text_only``). A plain
folder loads as itself. The folder's pipeline settings (``model_index.json``, e.g. ``initial_noise_mean_scale``)
are passed as diffusers' ``from_pretrained`` passes them: each one the pipeline class takes."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from ..models.loading import MissingModelFileError, load_model
from .sd15_sg import StableDiffusionSGPipeline
from .sdxl_sg import StableDiffusionXLSGPipeline


def pipeline_class(arch: str, text_only: bool = False) -> type:
    """The pipeline class of ``arch`` (``"sd15"`` / ``"sdxl"``): ours, or with ``text_only`` diffusers' own."""
    if text_only:
        return StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    return StableDiffusionXLSGPipeline if arch == "sdxl" else StableDiffusionSGPipeline


def build_pipeline(model: Mapping[str, Any], *, text_only: bool = False, **settings: Any) -> Any:
    """The pipeline object of ``model`` (``ModelComponents`` or a plain {component: module} dict): an SG pipeline
    (``model`` must hold an ``sg_encoder``), or with ``text_only`` the plain diffusers pipeline of its text path
    (SD1.5: no safety checker). ``settings`` (e.g. ``initial_noise_mean_scale``) override the folder's."""
    arch = getattr(model, "arch", None) or ("sdxl" if "text_encoder_2" in model else "sd15")
    cls = pipeline_class(arch, text_only)
    if not text_only and model.get("sg_encoder") is None:
        where = getattr(model, "path", None)
        raise MissingModelFileError(f"{where or 'these components'}: no SG encoder, so no SG pipeline; load the "
                                    "model with one (load_model's sg_encoder / init_sg_encoder) or build its text "
                                    "path (text_only=True)")
    params = inspect.signature(cls.__init__).parameters
    kw = {k: v for k, v in {**getattr(model, "settings", {}), **settings}.items() if k in params}
    kw.update({k: v for k, v in model.items() if k in params and not (text_only and k == "sg_encoder")})
    if text_only and arch == "sd15":
        kw.update(safety_checker=None, feature_extractor=model.get("feature_extractor"), requires_safety_checker=False)
    return cls(**kw)


def load_pipeline(path: str | Path, *, text_only: bool = False, **load: Any) -> Any:
    """``build_pipeline(load_model(path, ...))``: the folder's SG pipeline (its SG encoder required), or with
    ``text_only`` its text path as the plain diffusers pipeline (an SG folder's encoder not loaded). ``load``:
    ``load_model``'s keywords (``arch``, ``sg_encoder``, ``init_sg_encoder``, ``torch_dtype``, ``variant``...)."""
    model = load_model(path, text_only=text_only, require_sg_encoder=not text_only, **load)
    return build_pipeline(model, text_only=text_only)
