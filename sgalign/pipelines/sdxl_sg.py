"""SDXL-SG, as LAION-SG built it: SDXL base conditioned on scene graphs through the SG encoder (2048-d)."""
from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..models.sg_encoder import SGEncoder
from .sg_pipeline import SGPipelineBase


class StableDiffusionXLSGPipeline(SGPipelineBase):
    """SDXL base layout (vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler) plus
    ``sg_encoder``.

    Conditioning: penultimate states of both encoders concatenated (2048) with the gated graph residual; pooled =
    the serialised text's projected embedding (1280); time ids (h, w, 0, 0, h, w). CFG's unconditional branch is
    all zeros (``force_zeros_for_empty_prompt``), as LAION-SG's inference gets from ``StableDiffusionXLPipeline``.
    LAION-SG's inference defaults: 40 steps, 1024x1024, guidance 5.0."""

    arch = "sdxl"
    arch_guidance_scale = 5.0
    model_cpu_offload_seq = "text_encoder->text_encoder_2->sg_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection,
                 tokenizer: CLIPTokenizer, tokenizer_2: CLIPTokenizer, unet: UNet2DConditionModel,
                 scheduler: KarrasDiffusionSchedulers, sg_encoder: SGEncoder,
                 initial_noise_mean_scale: float = 1.0, graph_guidance_scale: float | None = None,
                 graph_guidance_min_t: int = 0, graph_guidance_negative: str = "text",
                 guidance_scale: float | None = None, guidance_rescale: float = 0.0) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                              sg_encoder=sg_encoder)
        self._register_sampling(initial_noise_mean_scale, graph_guidance_scale, graph_guidance_min_t,
                                graph_guidance_negative, guidance_scale, guidance_rescale)
        self._post_init()
