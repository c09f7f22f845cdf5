"""SD1.5-SG: Stable Diffusion 1.5 conditioned on scene graphs through the SG encoder (768-d text width)."""
from __future__ import annotations

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
                 guidance_scale: float | None = None, guidance_rescale: float = 0.0) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, sg_encoder=sg_encoder)
        self._register_sampling(initial_noise_mean_scale, graph_guidance_scale, graph_guidance_min_t,
                                graph_guidance_negative, guidance_scale, guidance_rescale)
        self._post_init()
