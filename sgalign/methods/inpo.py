"""DDIM-InPO: DDIM-invert each image up to the pair's t; target τ = (x̂_t − √ᾱ_t x₀)/√(1−ᾱ_t); DPO loss.

``faithful=True`` reproduces the official code: diffusers-0.20 grid (lands near, not at, t), η = 0.1 jitter,
ᾱ_0 for the clean level, and the first pair's t for every pair's grid and target (batch > 1 bug)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import (Count, Grid, InitialAlpha, Inverter, Label, Method, MethodConfig, MethodContext, MethodOutput,
                   NonNegative, Offset, PairBatch, Positive)
from ._inverted import inverted_loss, provide_inverted
from .functional import diffusion_dpo_loss, preference_metrics
from .registry import register_method

INVERTED_CORRECTED = {"grid": "exact", "eta": 0.0, "per_pair_t": True, "initial_alpha": "one"}
INVERTED_OFFICIAL = {"grid": "diffusers-0.20", "eta": 0.1, "per_pair_t": False, "initial_alpha": "alpha0"}


@dataclass
class InPOConfig(MethodConfig):
    beta: Positive = 5000.0  # SDXL; official SD1.5 launcher 2000
    num_points: Count = 10  # coarse grid (the official set_timesteps(10))
    inverter: Inverter = "policy"  # official: the current policy (no grad); 'reference' is deterministic, cacheable
    label: Label = "target"  # exact grid: ε(x_s, t_next) ('target') or ε(x_s, s) ('source')
    steps_offset: Offset = 1  # diffusers-0.20 grid: SD scheduler configs' offset
    use_cache: bool = True  # effective only with inverter='reference', eta 0, exact grid and a cache
    grid: Grid | None = None
    eta: NonNegative | None = None
    per_pair_t: bool | None = None
    initial_alpha: InitialAlpha | None = None
    _corrected = INVERTED_CORRECTED
    _official = INVERTED_OFFICIAL


@register_method("inpo")
class InPO(Method):
    config_class = InPOConfig

    def provide(self, batch: PairBatch, ctx: MethodContext) -> dict[str, Any]:
        return provide_inverted(batch, ctx, self.config.resolve())

    def loss(self, p: dict[str, Any], batch: PairBatch, ctx: MethodContext) -> MethodOutput:
        beta = self.config.beta
        out, m, r = inverted_loss(p, batch, ctx, lambda a, b, c, d: diffusion_dpo_loss(a, b, c, d, beta))
        return MethodOutput(out.loss.mean(), out.loss.detach(), preference_metrics(out, m, r),
                            provenance={"cache_used": p["cache_used"]})
