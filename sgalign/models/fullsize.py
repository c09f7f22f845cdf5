"""RANDOM-INIT full-size models from configuration-only folders (``configs/fullsize/<arch>/``).

Those folders hold the exact architectures of stable-diffusion-v1-5 / stable-diffusion-xl-base-1.0 (UNet, CLIP-L,
OpenCLIP-bigG, VAE: their published ``config.json`` values) plus the SG encoder (LAION-SG's SDXL-SG encoder,
faithful mode; SD1.5-SG: the same widths on 768-d text), in the HF layout but **without weights**: the components
built here are random-init (seeded) and mean nothing. They exist to measure time and memory of the real code at full
size without downloading anything (``scripts/bench_fullsize.py``). Tokenizers are the real CLIP BPE, built offline
(``sgalign.scene_graph.clip_tokenizer``); the scheduler is DDIM with SD's betas (the training schedule of both).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..scene_graph import clip_tokenizer
from .sg_encoder import SGEncoder

FULLSIZE_ROOT = Path(__file__).resolve().parents[2] / "configs" / "fullsize"
RANDOM_INIT_NOTE = "RANDOM-INIT full-size architecture (configs/fullsize): meaningless weights, for benchmarks only"
# published parameter counts (the released checkpoints), checked by the bench and a test
REFERENCE_COUNTS = {"sd15-sg": {"unet": 859_520_964}, "sdxl-sg": {"unet": 2_567_463_684}}


@contextlib.contextmanager
def _default(dtype: torch.dtype | None, device: str | torch.device | None):
    """Modules created inside are born in ``dtype`` on ``device`` (no fp32 copy first: SDXL's UNet alone is 10 GB)."""
    old = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with (torch.device(device) if device is not None else contextlib.nullcontext()):
            yield
    finally:
        torch.set_default_dtype(old)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def build_components(path: str | Path, *, dtype: torch.dtype | None = None, unet_dtype: torch.dtype | None = None,
                     device: str | torch.device | None = None, seed: int = 0) -> dict[str, Any]:
    """The components of ``path`` (``load_model``'s keys, ``sg_encoder`` when the folder has one), random
    init. ``dtype``: VAE, text encoders and SG encoder; ``unet_dtype``: the UNet (default ``dtype``);
    ``device="meta"`` builds shapes only."""
    path = Path(path)
    sched_cfg = _read(path / "scheduler" / "scheduler_config.json")
    comps: dict[str, Any] = {"scheduler": getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)}
    torch.manual_seed(seed)
    with _default(unet_dtype or dtype, device):
        comps["unet"] = UNet2DConditionModel.from_config(_read(path / "unet" / "config.json"))
    with _default(dtype, device):
        comps["vae"] = AutoencoderKL.from_config(_read(path / "vae" / "config.json"))
        comps["tokenizer"] = clip_tokenizer()
        comps["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_json_file(path / "text_encoder" / "config.json"))
        if (path / "text_encoder_2").is_dir():
            comps["tokenizer_2"] = clip_tokenizer(pad_token="!")
            comps["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_json_file(path / "text_encoder_2" / "config.json"))
        if (path / "sg_encoder").is_dir():
            cfg = {k: v for k, v in _read(path / "sg_encoder" / "config.json").items() if not k.startswith("_")}
            comps["sg_encoder"] = SGEncoder(**cfg)
    for m in comps.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
    return comps


def parameter_counts(path: str | Path) -> dict[str, int]:
    """Parameters per component of ``path``, built on the meta device (no memory, seconds)."""
    comps = build_components(path, device="meta")
    return {k: sum(p.numel() for p in m.parameters()) for k, m in comps.items() if isinstance(m, torch.nn.Module)}
