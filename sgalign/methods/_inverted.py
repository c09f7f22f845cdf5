"""Shared provider of DDIM-InPO and SmPO: invert x₀ up to the pair's t, target τ = noise implied by x̂_t (as the model
predicts it: τ itself, or the v of x̂_t = √ᾱ x₀ + √(1−ᾱ) τ for a v-prediction base; the inversion is on ε)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..diffusion.batching import cat_rows
from ..diffusion.cache import cached_invert
from ..diffusion.inversion import ddim_invert
from ..diffusion.schedule import base_levels, diffusers020_grid, exact_grid
from .base import MethodContext, PairBatch, sample_timesteps
from .diffusion_dpo import dpo_forward
from .functional import inpo_target


def _initial_alpha(cfg, ac: Tensor) -> float | Tensor:
    if cfg.initial_alpha not in ("one", "alpha0"):
        raise ValueError(f"initial_alpha must be 'one' or 'alpha0', got {cfg.initial_alpha!r}")
    return 1.0 if cfg.initial_alpha == "one" else ac[0]


def cache_applies(cfg, ctx: MethodContext) -> bool:
    """The cache is only sound for a deterministic inversion by the frozen reference on a t-independent prefix."""
    return bool(cfg.use_cache and ctx.cache is not None and cfg.inverter == "reference" and cfg.eta == 0
                and cfg.grid == "exact")


def invert_to_t(x0: Tensor, cond: Any, t: Tensor, cfg, ctx: MethodContext, renoise_steps: int,
                renoise_label: str, image_ids: list[str] | None) -> Tensor:
    """x̂_t for each row of ``x0`` (B rows, per-row t)."""
    if cfg.inverter not in ("policy", "reference"):
        raise ValueError(f"inverter must be 'policy' or 'reference', got {cfg.inverter!r}")
    eps_fn = ctx.eps_policy if cfg.inverter == "policy" else ctx.eps_reference
    ac, T = ctx.alphas_cumprod, ctx.num_train_timesteps
    ia = _initial_alpha(cfg, ac)
    kw = dict(renoise_steps=renoise_steps, renoise_label=renoise_label)
    if cfg.grid == "diffusers-0.20":
        g = diffusers020_grid(t, cfg.num_points, T, cfg.steps_offset, ia)
        return ddim_invert(x0, eps_fn, g, ac, cond, eta=cfg.eta, generator=ctx.generator, **kw).final
    if cfg.grid != "exact":
        raise ValueError(f"grid must be 'exact' or 'diffusers-0.20', got {cfg.grid!r}")
    if not cache_applies(cfg, ctx):
        g = exact_grid(t, cfg.num_points, T, label=cfg.label)
        g.initial_alpha = ia
        return ddim_invert(x0, eps_fn, g, ac, cond, eta=cfg.eta, generator=ctx.generator, **kw).final
    if ctx.reference_hash is None:
        raise ValueError("a trajectory cache needs MethodContext.reference_hash (diffusion.model_fingerprint(ref))")
    # cached t-independent prefix clean → Δ → 2Δ …, then one (uncached) step from the last point below t to t
    base = torch.tensor([-1] + base_levels(cfg.num_points, T), device=x0.device)
    lab = base[1:] if cfg.label == "target" else base[:-1].clamp(min=0)
    tr = cached_invert(ctx.cache, x0, eps_fn, base, ac, cond, labels=lab, initial_alpha=ia,
                       model_hash=ctx.reference_hash, grid_spec=f"exact-prefix(points={cfg.num_points},T={T},label={cfg.label})",
                       guidance_spec="cfg=1" + ("" if ctx.prediction == "epsilon" else f":{ctx.prediction}"),
                       image_ids=image_ids, **kw)
    m = (base[None, 1:] < t[:, None]).sum(1)
    x_m = tr.latents[torch.arange(len(t), device=x0.device), m]
    levels = torch.stack([base[m], t], 1)
    labels = levels[:, 1:] if cfg.label == "target" else levels[:, :1].clamp(min=0)
    return ddim_invert(x_m, eps_fn, levels, ac, cond, labels=labels, initial_alpha=ia, **kw).final


def provide_inverted(batch: PairBatch, ctx: MethodContext, cfg, renoise_steps: int = 0,
                     renoise_label: str = "source") -> dict[str, Any]:
    B, dev = batch.size, batch.x0_w.device
    t = sample_timesteps(B, ctx.num_train_timesteps, ctx.generator, dev)
    # official code: timesteps[0] selects the grid and the ᾱ of the target for the whole batch
    t_inv = t if cfg.per_pair_t else t[:1].expand(B)
    x0 = torch.cat([batch.x0_w, batch.x0_l])
    ids = (batch.image_ids_w + batch.image_ids_l) if batch.image_ids_w and batch.image_ids_l else None
    x_t = invert_to_t(x0, cat_rows([batch.cond, batch.cond]), torch.cat([t_inv, t_inv]), cfg, ctx, renoise_steps,
                      renoise_label, ids)
    a = ctx.alphas_cumprod.to(dev)[torch.cat([t_inv, t_inv])]
    # a v model's target is the v of x̂ at its own level t_inv, so x̂ = √ᾱ x₀ + √(1−ᾱ) τ holds for it as for τ (t_inv
    # is t except in the official per-batch quirk, where the network is still told each pair's t, as with ε)
    tau = ctx.target(inpo_target(x_t, x0, a), x0, torch.cat([t_inv, t_inv]))
    return {"x_w": x_t[:B], "x_l": x_t[B:], "t": t, "target_w": tau[:B], "target_l": tau[B:],
            "cache_used": cache_applies(cfg, ctx)}


def inverted_loss(p: dict[str, Any], batch: PairBatch, ctx: MethodContext, loss_fn):
    return dpo_forward(ctx.policy, ctx.reference, p["x_w"], p["x_l"], p["t"], p["t"], p["target_w"], p["target_l"],
                       batch.cond, loss_fn)
