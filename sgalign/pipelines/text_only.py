"""The text path of a model folder as a plain diffusers pipeline (``StableDiffusionPipeline`` /
``StableDiffusionXLPipeline``).

An SD1.5-SG / SDXL-SG folder is an SD1.5 / SDXL folder plus ``sg_encoder/``; for the t2i task its UNet is driven by
the prompt alone, exactly as the plain pipeline drives it, so the SG encoder is simply not loaded. A plain folder
loads as itself. Returned with the architecture (``sd15`` / ``sdxl``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def text_only_pipeline(path: str | Path) -> tuple[Any, str]:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from ..models.loading import detect_arch, load_components

    path = Path(path)
    arch = detect_arch(path)
    c = load_components(path, arch)
    if arch == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                         text_encoder_2=c["text_encoder_2"], tokenizer_2=c["tokenizer_2"],
                                         unet=c["unet"], scheduler=c["scheduler"])
    else:
        pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                       unet=c["unet"], scheduler=c["scheduler"], safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, arch
