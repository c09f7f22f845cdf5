"""Classifier-free guidance folded into the ε function, so inversion and losses never see it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .batching import cat_rows
from .counter import EpsFn


def zeros_like_cond(cond: Any) -> Any:
    """SDXL's zero-negative convention (Inversion-DPO): every tensor of the conditioning replaced by zeros."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return torch.zeros_like(cond)
    if isinstance(cond, dict):
        return {k: (zeros_like_cond(v) if k != "time_ids" else v) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(zeros_like_cond(v) for v in cond)
    raise TypeError(f"no zero unconditional for {type(cond).__name__}; pass uncond= explicitly")


@dataclass(frozen=True)
class Unconditional:
    """The unconditional branch of guidance as a function of the conditional one, named by ``spec`` (recorded in
    provenance and in trajectory-cache keys, so trajectories guided by different branches never mix). The model's
    own branch is SD1.5's empty-text embedding and SDXL's zeros (``force_zeros_for_empty_prompt``), as
    ``sgalign.models.conditioning.unconditional_conditioning``; the trainer supplies it."""

    fn: Callable[[Any], Any]
    spec: str

    def __call__(self, cond: Any) -> Any:
        return self.fn(cond)


ZEROS = Unconditional(zeros_like_cond, "zeros")


def guided(eps_fn: EpsFn, scale: float, uncond: Any | Callable[[Any], Any] = zeros_like_cond,
           batched: bool = True) -> EpsFn:
    """ε_u + s (ε_c − ε_u). ``uncond``: a fixed conditioning or a function of the conditional one (default:
    zeros, time ids kept). ``batched``: one call on [uncond; cond] rows (as the official code) or two calls.
    Scale 1 returns ``eps_fn`` itself (no extra forward)."""
    if scale == 1.0:
        return eps_fn

    def fn(x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        u = uncond(cond) if callable(uncond) else uncond
        if batched:
            e = eps_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), cat_rows([u, cond]))
            e_u, e_c = e.chunk(2)
        else:
            e_u, e_c = eps_fn(x_t, t, u), eps_fn(x_t, t, cond)
        return e_u + scale * (e_c - e_u)

    fn.guidance_scale = scale  # type: ignore[attr-defined]
    return fn


def rescale_guided(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16):
    the guided prediction scaled per sample to the conditional prediction's standard deviation (over every non-batch
    dimension), mixed back with the unscaled one by ``phi``. Large guidance inflates the prediction's spread, which on
    a zero-terminal-SNR v model over-exposes the image; ``phi`` 0 returns ``guided`` itself."""
    if phi == 0.0:
        return guided
    dims = tuple(range(1, guided.dim()))
    scaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * scaled + (1.0 - phi) * guided
