"""Diffusion-DPO: forward-noised latents, one t and one ε per pair shared by winner and loser; the squared errors in
the model's own output space (ε, or v for a v-prediction base, as diffusers' DPO script)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..diffusion.batching import cat_rows
from ..diffusion.inversion import broadcast_like as _bc
from .base import (Method, MethodConfig, MethodContext, MethodOutput, PairBatch, Positive, randn_like,
                   sample_timesteps)
from .functional import diffusion_dpo_loss, per_sample_mse, preference_metrics
from .registry import register_method


@dataclass
class DiffusionDPOConfig(MethodConfig):
    beta: Positive = 5000.0  # SDXL; 2000–5000 for SD1.5


def forward_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor):
    a = _bc(alphas_cumprod.to(x0.device)[t], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def dpo_forward(policy, reference, x_w, x_l, t_w, t_l, target_w, target_l, cond, loss_fn):
    """Policy (grad) and reference (no grad) on stacked [winners; losers]; per-pair MSEs into ``loss_fn``."""
    x, t, c = torch.cat([x_w, x_l]), torch.cat([t_w, t_l]), cat_rows([cond, cond])
    B = x_w.shape[0]
    m = per_sample_mse(policy(x, t, c), torch.cat([target_w, target_l]))
    with torch.no_grad():
        r = per_sample_mse(reference(x, t, c), torch.cat([target_w, target_l]))
    return loss_fn(m[:B], m[B:], r[:B], r[B:]), m, r


@register_method("diffusion-dpo")
class DiffusionDPO(Method):
    config_class = DiffusionDPOConfig

    def provide(self, batch: PairBatch, ctx: MethodContext) -> dict[str, Any]:
        B, dev = batch.size, batch.x0_w.device
        t = sample_timesteps(B, ctx.num_train_timesteps, ctx.generator, dev)
        eps = randn_like(batch.x0_w, ctx.generator)
        return {"x_w": forward_noise(batch.x0_w, eps, t, ctx.alphas_cumprod),
                "x_l": forward_noise(batch.x0_l, eps, t, ctx.alphas_cumprod), "t": t,
                "target_w": ctx.target(eps, batch.x0_w, t), "target_l": ctx.target(eps, batch.x0_l, t)}

    def loss(self, p: dict[str, Any], batch: PairBatch, ctx: MethodContext) -> MethodOutput:
        beta = self.config.beta
        out, m, r = dpo_forward(ctx.policy, ctx.reference, p["x_w"], p["x_l"], p["t"], p["t"], p["target_w"],
                                p["target_l"], batch.cond, lambda a, b, c, d: diffusion_dpo_loss(a, b, c, d, beta))
        return MethodOutput(out.loss.mean(), out.loss.detach(), preference_metrics(out, m, r))
