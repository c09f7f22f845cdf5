"""The denoising loop shared by SD1.5-SG and SDXL-SG: scene graphs in, images out.

* ``graphs``: ``SceneGraph``s, ``LaionSGRecord``s or LAION-SG record dicts.
* Many graphs x many seeds in one batched call: image ``g * K + k`` is graph ``g`` with seed ``k``
  (``seeds=[...]`` with ``noise_keys=[...]``, one per graph: each graph its own noise, ``diffusion.noise``'s
  per-graph rule; ``seeds`` alone: the same seed gives the same initial noise for every graph), or
  ``num_images_per_graph`` with ``generator`` (one, or one per image) as in diffusers.
* Classifier-free guidance: ``uncond + s * (cond - uncond)``; the unconditional branch is SDXL's zeros or
  SD1.5's empty text (``sgalign.models.unconditional_conditioning``).
* Graph guidance (not in LAION-SG; off unless asked for or the model folder sets it): the graph's own term guided
  apart, as InstructPix2Pix guides its two conditions. With ``graph_guidance_negative="text"`` (the serialised graph
  without the SG residual), ``uncond + s (text - uncond) + s_g (cond - text)``: what only the SG path says, amplified.
  With ``"swapped"`` (every relation's subject and object exchanged, ``SceneGraph.swapped``), ``uncond + s (cond -
  uncond) + (s_g - s) (cond - swapped)``: what only the relations' directions say, entities cancelled. ``s_g == s``
  is plain guidance (its two-branch path). ``graph_guidance_min_t``: only on the steps with t >= it (where the layout
  is decided; plain guidance after, as guidance-interval sampling does), the third branch computed on those steps
  alone. A model folder may set all three as its defaults (``model_index.json``), and its guidance scale too
  (``guidance_scale``); a call's own values win, and ``graph_guidance_scale=guidance_scale`` asks for plain guidance.
* Guidance rescale (``guidance_rescale``, Lin et al. 2024, as diffusers' SD pipelines; 0 = off, the default): on
  every guided step the guided prediction is scaled to the conditional branch's spread and mixed back by the factor.
  A folder may set it (``model_index.json``); a call's own value wins.
* Deterministic given the generator(s) / seeds.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion.guidance import rescale_guided
from ..diffusion.noise import image_generators, shrink_spatial_mean
from ..models.conditioning import SGConditioning, build_conditioning, unconditional_conditioning
from ..models.graph_inputs import as_scene_graphs
from ..models.sg_encoder import SGEncoder


GraphNegative = Literal["text", "swapped"]  # graph guidance's negative branch (module docstring)


def check_guidance_rescale(value: float, what: str) -> None:
    """A guidance rescale is a mixing factor in [0, 1]."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must be a number in [0, 1] (the guidance rescale's mixing factor), got {value}")


class SGPipelineBase(DiffusionPipeline):
    """Shared by ``StableDiffusionSGPipeline`` and ``StableDiffusionXLSGPipeline`` (which define ``__init__``)."""

    arch = "sd15"
    arch_guidance_scale = 7.5  # the architecture's usual classifier-free guidance, when the folder sets none

    @property
    def default_guidance_scale(self) -> float:
        """The guidance a call without ``guidance_scale`` samples with: the model folder's ``guidance_scale``
        (``model_index.json``; a zero-terminal-SNR v-prediction model wants less than an epsilon one), else the
        architecture's usual value."""
        g = self.config.get("guidance_scale")
        return float(self.arch_guidance_scale if g is None else g)

    @property
    def default_guidance_rescale(self) -> float:
        """The guidance rescale a call without ``guidance_rescale`` samples with: the folder's, else 0 (off)."""
        return float(self.config.get("guidance_rescale") or 0.0)

    def guidance_rescale(self, value: float | None = None) -> float:
        """The guidance rescale a call samples with: its own ``value``, else the folder's; refused outside [0, 1]."""
        rescale = self.default_guidance_rescale if value is None else float(value)
        check_guidance_rescale(rescale, "guidance_rescale")
        return rescale

    def _register_sampling(self, initial_noise_mean_scale: float, graph_guidance_scale: float | None,
                           graph_guidance_min_t: int, graph_guidance_negative: str,
                           guidance_scale: float | None, guidance_rescale: float) -> None:
        """The folder's sampler settings, stored in ``model_index.json``: the initial-noise mean scale
        (sgalign.diffusion.noise; 1 = plain Gaussian noise), the graph guidance defaults (None: plain guidance), the
        guidance scale (None: the architecture's) and the guidance rescale (0: off)."""
        if guidance_scale is not None and not (math.isfinite(guidance_scale) and guidance_scale >= 1.0):
            raise ValueError(f"guidance_scale (the folder's default) must be a finite number >= 1, "
                             f"got {guidance_scale}")
        check_guidance_rescale(guidance_rescale, "the folder's default")
        gg = None if graph_guidance_scale is None else float(graph_guidance_scale)
        self.register_to_config(initial_noise_mean_scale=float(initial_noise_mean_scale), graph_guidance_scale=gg,
                                graph_guidance_min_t=int(graph_guidance_min_t),
                                graph_guidance_negative=str(graph_guidance_negative),
                                guidance_scale=None if guidance_scale is None else float(guidance_scale),
                                guidance_rescale=float(guidance_rescale))

    def _post_init(self) -> None:
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def graph_guidance(self, guidance_scale: float, scale: float | None = None, min_t: int | None = None,
                       negative: GraphNegative | None = None) -> tuple[float | None, int, GraphNegative]:
        """The graph guidance a call samples with, (scale, min_t, negative): its own values, else the model folder's
        defaults (none: plain guidance; a call without classifier-free guidance does not take the folder's scale).
        A scale equal to ``guidance_scale`` is plain guidance (scale None)."""
        if scale is None and guidance_scale <= 1.0:
            scale = None  # the folder's default needs classifier-free guidance; without it, plain sampling
        elif scale is None:
            scale = self.config.get("graph_guidance_scale")
        min_t = int(self.config.get("graph_guidance_min_t") or 0) if min_t is None else int(min_t)
        negative = (self.config.get("graph_guidance_negative") or "text") if negative is None else negative
        if negative not in get_args(GraphNegative):
            raise ValueError(f"graph_guidance_negative must be one of {get_args(GraphNegative)}, got {negative!r}")
        if scale is None or float(scale) == float(guidance_scale):
            return None, 0, negative
        return float(scale), min_t, negative

    def guidance_record(self, guidance_scale: float, scale: float | None = None, min_t: int | None = None,
                        negative: GraphNegative | None = None, rescale: float | None = None) -> dict[str, Any]:
        """What a call samples with beyond its guidance scale, as a results record: ``graph_guidance``'s result
        (None: plain) and the guidance rescale (the call's, else the folder's)."""
        s, t, neg = self.graph_guidance(guidance_scale, scale, min_t, negative)
        on = s is not None
        return {"graph_guidance_scale": s, "graph_guidance_min_t": t if on else None,
                "graph_guidance_negative": neg if on else None,
                "guidance_rescale": self.guidance_rescale(rescale)}

    def graph_negatives(self, graphs: Sequence, negative: GraphNegative, height: int | None = None,
                        width: int | None = None) -> SGConditioning:
        """The negative branch of graph guidance for ``graphs`` (SceneGraphs)."""
        if negative == "text":
            return self.encode_graphs(graphs, height, width, use_graph=False)
        return self.encode_graphs([g.swapped() for g in graphs], height, width)

    @property
    def noise_mean_scale(self) -> float:
        """How much of the initial noise's per-channel spatial mean sampling keeps (``diffusion.noise``)."""
        return float(self.config.get("initial_noise_mean_scale", 1.0))

    # ---- conditioning -------------------------------------------------------------------------------------
    @property
    def tokenizers(self) -> list:
        return [self.tokenizer] + ([self.tokenizer_2] if self.arch == "sdxl" else [])

    @property
    def text_encoders(self) -> list:
        return [self.text_encoder] + ([self.text_encoder_2] if self.arch == "sdxl" else [])

    def encode_graphs(self, graphs: Any, height: int | None = None, width: int | None = None,
                      use_graph: bool = True) -> SGConditioning:
        """The conditioning of ``graphs`` (one row per graph); the trainer uses this same value everywhere."""
        height, width = self._size(height, width)
        return build_conditioning(graphs, self.sg_encoder, self.tokenizers, self.text_encoders, use_graph=use_graph,
                                  height=height, width=width)

    def unconditional(self, cond: SGConditioning) -> SGConditioning:
        pad = self.sg_encoder.config.pad_with_eos_copies if self.sg_encoder is not None else True
        return unconditional_conditioning(cond, self.tokenizers, self.text_encoders, pad_with_eos_copies=pad)

    def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
        default = self.unet.config.sample_size * self.vae_scale_factor
        return height or default, width or default

    # ---- generation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, graphs: Any = None, *, conditioning: SGConditioning | None = None,
                 num_images_per_graph: int = 1, seeds: Sequence[int] | None = None,
                 noise_keys: Sequence[str] | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 50,
                 guidance_scale: float | None = None, graph_guidance_scale: float | None = None,
                 graph_guidance_min_t: int | None = None, graph_guidance_negative: GraphNegative | None = None,
                 guidance_rescale: float | None = None,
                 negative_conditioning: SGConditioning | None = None, eta: float = 0.0,
                 latents: torch.Tensor | None = None, output_type: str = "pil",
                 return_dict: bool = True) -> ImagePipelineOutput | tuple:
        """Images for ``graphs`` (or a precomputed ``conditioning``, one row per graph). Graph guidance (module
        docstring) needs the graphs, or ``negative_conditioning`` (``graph_negatives``' rows) with ``conditioning``."""
        height, width = self._size(height, width)
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        graph_guidance_scale, graph_guidance_min_t, negative = self.graph_guidance(
            guidance_scale, graph_guidance_scale, graph_guidance_min_t, graph_guidance_negative)
        dual = graph_guidance_scale is not None
        rescale = self.guidance_rescale(guidance_rescale)
        if dual and guidance_scale <= 1.0:
            raise ValueError("graph_guidance_scale needs classifier-free guidance (guidance_scale > 1)")
        device = self._execution_device
        if conditioning is None:
            if graphs is None:
                raise ValueError("pass graphs (SceneGraph / LAION-SG records) or conditioning")
            graphs = as_scene_graphs(graphs)
            conditioning = self.encode_graphs(graphs, height, width)
            if dual and negative_conditioning is None:
                negative_conditioning = self.graph_negatives(graphs, negative, height, width)
        if dual and (negative_conditioning is None or len(negative_conditioning) != len(conditioning)):
            raise ValueError("graph guidance with a precomputed conditioning needs negative_conditioning, the same "
                             "graphs' graph_negatives (one row per graph)")
        n_graphs = len(conditioning)
        if seeds is not None:
            if generator is not None:
                raise ValueError("pass seeds or generator, not both")
            if noise_keys is not None and len(noise_keys) != n_graphs:
                raise ValueError(f"got {len(noise_keys)} noise keys for {n_graphs} graphs")
            num_images_per_graph = len(seeds)
            generator = image_generators(seeds, noise_keys if noise_keys is not None else range(n_graphs),
                                         "per-graph" if noise_keys is not None else "shared")
        elif noise_keys is not None:
            raise ValueError("noise_keys go with seeds")
        batch = n_graphs * num_images_per_graph
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images ({n_graphs} graphs x "
                             f"{num_images_per_graph})")

        dtype = self.unet.dtype
        cond = conditioning.to(device=device, dtype=dtype).repeat_interleave(num_images_per_graph)
        do_cfg = guidance_scale > 1.0
        kwargs_by_branches = {1: cond.unet_kwargs()}
        if do_cfg:
            uncond = self.unconditional(cond).to(device=device, dtype=dtype)
            kwargs_by_branches[2] = SGConditioning.cat([uncond, cond]).unet_kwargs()
            if dual:
                neg = negative_conditioning.to(device=device, dtype=dtype).repeat_interleave(num_images_per_graph)
                kwargs_by_branches[3] = SGConditioning.cat([uncond, neg, cond]).unet_kwargs()

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
            latents = shrink_spatial_mean(latents, self.noise_mean_scale)
        elif latents.shape != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(generator, eta)

        for t in self.progress_bar(self.scheduler.timesteps):
            n_branches = (3 if dual and int(t) >= graph_guidance_min_t else 2) if do_cfg else 1
            x = torch.cat([latents] * n_branches)
            x = self.scheduler.scale_model_input(x, t)
            eps = self.unet(x, t, **kwargs_by_branches[n_branches], return_dict=False)[0]
            if n_branches == 3 and negative == "text":
                eps_uncond, eps_text, eps_cond = eps.chunk(3)
                eps = (eps_uncond + guidance_scale * (eps_text - eps_uncond)
                       + graph_guidance_scale * (eps_cond - eps_text))
            elif n_branches == 3:
                eps_uncond, eps_neg, eps_cond = eps.chunk(3)
                eps = (eps_uncond + guidance_scale * (eps_cond - eps_uncond)
                       + (graph_guidance_scale - guidance_scale) * (eps_cond - eps_neg))
            elif do_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            if do_cfg:
                eps = rescale_guided(eps, eps_cond, rescale)
            latents = self.scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]

        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(self._decode(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        # SDXL's VAE overflows in fp16 (its config says force_upcast): decode in fp32, as diffusers' SDXL does
        upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if upcast:
            self.vae.to(torch.float32)
        try:
            z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            return self.vae.decode(z, return_dict=False)[0]
        finally:
            if upcast:
                self.vae.to(torch.float16)

    def _step_kwargs(self, generator: Any, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kw: dict = {}
        if "eta" in params:
            kw["eta"] = eta
        if "generator" in params:
            kw["generator"] = generator
        return kw

    # ---- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_local(cls, path: str | Path, sg_encoder: SGEncoder | str | Path | None = None, *,
                   init_sg_encoder: dict | None = None, torch_dtype: Any = None, variant: str | None = None):
        """Load from a local folder in the base layout (``stable-diffusion-v1-5`` / ``-xl-base-1.0``) through the one
        loader (``models.loading.load_model``; ``sgalign.pipelines.load_pipeline`` with this class's arch).

        The SG encoder is, in order: ``sg_encoder`` (module, ``sg_encoder/`` folder or LAION-SG ``.pt``), the
        folder's own ``sg_encoder/``, or -- only if ``init_sg_encoder`` (config overrides) is given -- a fresh
        random-init encoder sized to the text encoders."""
        from .assemble import load_pipeline  # cycle: assemble imports sd15_sg / sdxl_sg, which import this module

        return load_pipeline(path, arch=cls.arch, sg_encoder=sg_encoder, init_sg_encoder=init_sg_encoder,
                             torch_dtype=torch_dtype, variant=variant)
