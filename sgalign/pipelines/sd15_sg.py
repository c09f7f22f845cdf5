"""SD1.5-SG: Stable Diffusion 1.5 conditioned on scene graphs through the SG encoder (768-d text width)."""
from __future__ import annotations

import math

from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTokenizer

from ..models.sg_encoder import SGEncoder
from .sg_pipeline import SGPipelineBase


class StableDiffusionSGPipeline(SGPipelineBase):
    """SD1.5 layout (vae, text_encoder, tokenizer, unet, scheduler) plus ``sg_encoder``.

    Conditioning: the final hidden states of the serialised graph text, with the gated graph residual; CFG's
    unconditional branch is the empty text."""

    arch = "sd15"
    arch_guidance_scale = 7.5
    model_cpu_offload_seq = "text_encoder->sg_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: KarrasDiffusionSchedulers, sg_encoder: SGEncoder,
                 initial_noise_mean_scale: float = 1.0, graph_guidance_scale: float | None = None,
                 graph_guidance_min_t: int = 0, graph_guidance_negative: str = "text",
                 guidance_scale: float | None = None) -> None:
        super().__init__()
        if guidance_scale is not None and not (math.isfinite(guidance_scale) and guidance_scale >= 1.0):
            raise ValueError(f"guidance_scale (the folder's default) must be a finite number >= 1, got {guidance_scale}")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, sg_encoder=sg_encoder)
        # sgalign.diffusion.noise: 1 = plain Gaussian noise (every model's default); stored in model_index.json
        self.register_to_config(initial_noise_mean_scale=float(initial_noise_mean_scale))
        # sg_pipeline's graph guidance defaults (None: plain guidance, every model's default)
        self.register_to_config(graph_guidance_scale=None if graph_guidance_scale is None else float(graph_guidance_scale),
                                graph_guidance_min_t=int(graph_guidance_min_t),
                                graph_guidance_negative=str(graph_guidance_negative),
                                guidance_scale=None if guidance_scale is None else float(guidance_scale))
        self._post_init()
