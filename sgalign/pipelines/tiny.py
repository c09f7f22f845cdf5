"""Tiny random-init SD1.5 / SDXL (and -SG) checkpoints in the real folder layouts, for tests and plumbing.

Everything here is RANDOM-INIT: the weights mean nothing, images are noise-like. The folders say so in
``model_index.json`` (``_sgalign_random_init``) and in a ``README.md`` model card. Layouts:

* ``sd15`` / ``sd15-sg``: as ``stable-diffusion-v1-5``: model_index.json, feature_extractor/, scheduler/,
  text_encoder/ (CLIPTextModel), tokenizer/, unet/, vae/ (safety_checker: null) [+ sg_encoder/];
* ``sdxl`` / ``sdxl-sg``: as ``stable-diffusion-xl-base-1.0``: model_index.json, scheduler/, text_encoder/
  (CLIPTextModel), text_encoder_2/ (CLIPTextModelWithProjection), tokenizer/, tokenizer_2/, unet/, vae/
  [+ sg_encoder/].

Tokenizers are the real CLIP BPE (``sgalign.scene_graph.clip_tokenizer``); the scheduler is DDIM with SD's betas
(the real SDXL folder ships Euler; any diffusers scheduler config loads the same way). Sizes: text width 32
(SDXL: 32 + 32 = 64, pooled 32), UNet channels (32, 64), VAE channels (32, 64) = 2x downsampling, so 16x16 images
have 8x8 latents.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..hashing import RANDOM_INIT_KEY
from ..models.sg_encoder import SGEncoder
from ..scene_graph import clip_tokenizer
from .sd15_sg import StableDiffusionSGPipeline
from .sdxl_sg import StableDiffusionXLSGPipeline

ARCHS = ("sd15", "sdxl", "sd15-sg", "sdxl-sg")
RANDOM_INIT_NOTE = "RANDOM-INIT tiny model from sgalign.pipelines.tiny: for tests and plumbing only, meaningless weights"

_CLIP = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, hidden_act="quick_gelu")


def tiny_text_encoder(seed: int = 0, projection_dim: int | None = None, pad_token_id: int = 49407):
    torch.manual_seed(seed)
    if projection_dim is None:
        return CLIPTextModel(CLIPTextConfig(**_CLIP, pad_token_id=pad_token_id)).eval()
    cfg = CLIPTextConfig(**_CLIP, pad_token_id=pad_token_id, projection_dim=projection_dim)
    return CLIPTextModelWithProjection(cfg).eval()


def tiny_unet(sdxl: bool, cross_attention_dim: int, pooled_dim: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    kw = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
              attention_head_dim=8, norm_num_groups=32)
    if sdxl:  # SDXL's micro-conditioning: pooled text + 6 time ids, each 8-d Fourier features here
        kw.update(addition_embed_type="text_time", addition_time_embed_dim=8, use_linear_projection=True,
                  projection_class_embeddings_input_dim=pooled_dim + 6 * 8)
    return UNet2DConditionModel(**kw)


def tiny_vae(seed: int = 0, sdxl: bool = False):
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=32, sample_size=16,
                         scaling_factor=0.13025 if sdxl else 0.18215)


def tiny_scheduler():
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)


def tiny_sg_encoder(text_dim: int, mode: str = "object", seed: int = 0, gate_init: float = 0.0):
    torch.manual_seed(seed)
    return SGEncoder(text_dim=text_dim, embed_dim=16, hidden_dim=16, num_graph_layers=5, mode=mode,
                     gate_init=gate_init)


def tiny_components(arch: str, seed: int = 0, sg_mode: str = "object", gate_init: float = 0.0) -> dict:
    """The components of a tiny pipeline of ``arch`` (see ``ARCHS``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    sdxl = arch.startswith("sdxl")
    comps: dict = {"vae": tiny_vae(seed, sdxl), "scheduler": tiny_scheduler(), "tokenizer": clip_tokenizer(),
                   "text_encoder": tiny_text_encoder(seed)}
    text_dim = 32
    if sdxl:
        comps["tokenizer_2"] = clip_tokenizer(pad_token="!")
        comps["text_encoder_2"] = tiny_text_encoder(seed + 1, projection_dim=32, pad_token_id=0)
        text_dim = 64
    comps["unet"] = tiny_unet(sdxl, cross_attention_dim=text_dim, seed=seed)
    if arch.endswith("-sg"):
        comps["sg_encoder"] = tiny_sg_encoder(text_dim, sg_mode, seed, gate_init)
    for m in comps.values():  # inference mode, as from_pretrained returns models (matters for bitwise round trips)
        if isinstance(m, torch.nn.Module):
            m.eval()
    return comps


def tiny_pipeline(arch: str, seed: int = 0, sg_mode: str = "object", gate_init: float = 0.0):
    """A tiny pipeline object: ``StableDiffusion[XL]Pipeline`` for base archs, our SG pipelines for -sg."""
    comps = tiny_components(arch, seed, sg_mode, gate_init)
    if arch == "sd15":
        return StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=CLIPImageProcessor(),
                                       requires_safety_checker=False)
    if arch == "sdxl":
        return StableDiffusionXLPipeline(**comps, force_zeros_for_empty_prompt=True)

    return (StableDiffusionXLSGPipeline if arch == "sdxl-sg" else StableDiffusionSGPipeline)(**comps)


def make_tiny(arch: str, out: str | Path, seed: int = 0, sg_mode: str = "object", gate_init: float = 0.0) -> Path:
    """Write a complete tiny ``arch`` folder to ``out`` (created; must be empty or absent)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    pipe = tiny_pipeline(arch, seed, sg_mode, gate_init)
    pipe.save_pretrained(out, safe_serialization=True)
    index = json.loads((out / "model_index.json").read_text())
    index[RANDOM_INIT_KEY] = RANDOM_INIT_NOTE
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(
        f"# tiny {arch} (random init)\n\n{RANDOM_INIT_NOTE}.\n\nMade by `python scripts/make_tiny.py --arch {arch} "
        f"OUT` (seed {seed}{', sg mode ' + sg_mode if arch.endswith('-sg') else ''}). Layout as "
        f"`{'stable-diffusion-xl-base-1.0' if arch.startswith('sdxl') else 'stable-diffusion-v1-5'}`"
        f"{' plus sg_encoder/' if arch.endswith('-sg') else ''}.\n")
    return out
