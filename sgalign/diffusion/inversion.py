"""Our own DDIM stepping: step, inversion (with per-sample grids, η jitter, ReNoise) and sampling.

Not diffusers' ``DDIMInverseScheduler``: its grid and step semantics changed after 0.20 (see
``schedule.diffusers020_grid`` for the old ones, which the official InPO/SmPO code relies on).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .batching import select_rows
from .counter import EpsFn
from .schedule import Grid, alpha_at


def broadcast_like(a: Tensor, x: Tensor) -> Tensor:
    """Per-sample (B,) values broadcast against x (B, …); float values take x's dtype, masks stay bool."""
    a = a if a.dtype == torch.bool else a.to(x.dtype)
    return a.reshape(-1, *([1] * (x.dim() - 1)))


def ddim_step(x: Tensor, eps: Tensor, alpha_src: Tensor, alpha_dst: Tensor) -> Tensor:
    """Deterministic DDIM move of ``x`` from ᾱ_src to ᾱ_dst (either direction) with noise estimate ``eps``:
    x̂₀ = (x − √(1−ᾱ_s) ε)/√ᾱ_s, x' = √ᾱ_d x̂₀ + √(1−ᾱ_d) ε. ᾱ's are per sample (B,)."""
    if bool((alpha_src == 0).any()):  # zero-terminal SNR at t = T: x_T is all noise
        raise ValueError("ddim_step: alpha_bar_src = 0 (zero-terminal SNR), so x0 cannot be recovered from epsilon; "
                         "step from the model's x0 (v-prediction: x0 = -v at alpha_bar = 0) instead")
    a_s, a_d = broadcast_like(alpha_src, x), broadcast_like(alpha_dst, x)
    x0 = (x - (1 - a_s).sqrt() * eps) / a_s.sqrt()
    return a_d.sqrt() * x0 + (1 - a_d).sqrt() * eps


def ddim_sigma(alpha_hi: Tensor, alpha_lo: Tensor) -> Tensor:
    """DDIM σ (η = 1) of the sampling step ᾱ_hi → ᾱ_lo (hi = noisier): √((1−ᾱ_lo)/(1−ᾱ_hi) · (1 − ᾱ_hi/ᾱ_lo)).
    The official InPO jitter is 0.1 × this for the inverse step lo → hi (``_get_variance(g+Δ, g)``)."""
    var = (1 - alpha_lo) / (1 - alpha_hi) * (1 - alpha_hi / alpha_lo)
    return var.clamp(min=0).sqrt()


@dataclass
class Trajectory:
    """Result of :func:`ddim_invert`, for B samples and K (padded) steps.

    ``latents`` (B, K+1, …): latents[:, k] is at ᾱ of ``levels[:, k]``; latents[:, 0] = x₀.
    ``labels`` (B, K): timestep told to the ε network at point k. ``eps_point`` (B, K, …): ε evaluated at
    (latents[:, k], labels[:, k]). ``eps`` (B, K, …): ε actually used for step k (the ReNoise average when
    ``renoise_steps`` > 0, else ``eps_point``). Steps k ≥ ``n_steps[b]`` are padding (zero ε, latent repeated)."""

    latents: Tensor
    levels: Tensor
    labels: Tensor
    eps_point: Tensor
    eps: Tensor
    n_steps: Tensor
    initial_alpha: float | Tensor = 1.0

    @property
    def final(self) -> Tensor:
        idx = self.n_steps.view(-1, *([1] * (self.latents.dim() - 1))).expand(-1, 1, *self.latents.shape[2:])
        return self.latents.gather(1, idx).squeeze(1)

    @property
    def final_levels(self) -> Tensor:
        return self.levels.gather(1, self.n_steps[:, None]).squeeze(1)

    @property
    def valid(self) -> Tensor:
        """(B, K) mask of real (non-padding) steps."""
        k = torch.arange(self.labels.shape[1], device=self.n_steps.device)
        return k[None, :] < self.n_steps[:, None]


def _eval(eps_fn: EpsFn, x: Tensor, t: Tensor, cond: Any, active: Tensor) -> Tensor:
    if bool(active.all()):
        return eps_fn(x, t, cond)
    idx = active.nonzero().squeeze(1)
    out = torch.zeros_like(x)
    out[idx] = eps_fn(x[idx], t[idx], select_rows(cond, idx)).to(x.dtype)
    return out


def ddim_walk(x: Tensor, eps_fn: EpsFn, levels: Tensor, labels: Tensor, alphas_cumprod: Tensor, cond: Any = None,
              *, n_steps: Tensor | None = None, initial_alpha: float | Tensor = 1.0, eta: float = 0.0,
              generator: torch.Generator | None = None, renoise_steps: int = 0,
              renoise_label: str = "source") -> Trajectory:
    """Walk ``x`` along per-sample ``levels`` (B, K+1), up (inversion) or down (sampling).

    Step k from level s = levels[:, k] to d = levels[:, k+1]: ε₁ = ε(x, labels[:, k]); with ReNoise, r times:
    x' = step(x, ε̄), ε_i = ε(x', label₂), ε̄ = mean(ε₁..ε_i) where label₂ is labels[:, k] ('source', the
    official SmPO code) or d ('target', published ReNoise); then x ← step(x, ε̄). η > 0 adds η·σ_DDIM·z after
    each upward step (official InPO: η = 0.1)."""
    if renoise_label not in ("source", "target"):
        raise ValueError(f"renoise_label must be 'source' or 'target', got {renoise_label!r}")
    B, K = labels.shape
    if levels.shape != (B, K + 1) or x.shape[0] != B:
        raise ValueError(f"levels must be (B, K+1)=({B}, {K + 1}) for labels {tuple(labels.shape)} and "
                         f"x of batch {x.shape[0]}; got {tuple(levels.shape)}")
    n_steps = torch.full((B,), K, device=x.device) if n_steps is None else n_steps.to(x.device)
    alphas = alpha_at(alphas_cumprod, levels, initial_alpha).to(x.device)
    lats, eps_pts, eps_used = [x], [], []
    for k in range(K):
        active = k < n_steps
        a_s, a_d = alphas[:, k], alphas[:, k + 1]
        lab = labels[:, k].to(x.device)
        e1 = _eval(eps_fn, x, lab, cond, active)
        e = e1
        if renoise_steps:
            lab2 = lab if renoise_label == "source" else levels[:, k + 1].to(x.device)
            acc = e1
            for i in range(renoise_steps):
                xp = ddim_step(x, e, a_s, a_d)
                acc = acc + _eval(eps_fn, xp, lab2, cond, active)
                e = acc / (i + 2)
        x_new = ddim_step(x, e, a_s, a_d)
        if eta:
            up = (levels[:, k + 1] > levels[:, k]).to(x.device)
            sig = torch.where(up, ddim_sigma(a_d, a_s), torch.zeros_like(a_s))
            gdev = generator.device if generator is not None else x.device
            z = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)
            x_new = x_new + eta * broadcast_like(sig, x) * z
        x = torch.where(broadcast_like(active, x), x_new, x)
        lats.append(x)
        eps_pts.append(e1)
        eps_used.append(torch.where(broadcast_like(active, e), e, torch.zeros_like(e)))
    stack = (lambda xs: torch.stack(xs, 1)) if K else (lambda xs: x.new_zeros((B, 0, *x.shape[1:])))
    return Trajectory(torch.stack(lats, 1), levels, labels, stack(eps_pts), stack(eps_used), n_steps,
                      initial_alpha)


def ddim_invert(x0: Tensor, eps_fn: EpsFn, timesteps: Tensor | Grid, alphas_cumprod: Tensor, cond: Any = None, *,
                labels: Tensor | None = None, n_steps: Tensor | None = None, initial_alpha: float | Tensor = 1.0,
                eta: float = 0.0, generator: torch.Generator | None = None, renoise_steps: int = 0,
                renoise_label: str = "source") -> Trajectory:
    """DDIM inversion of clean latents ``x0`` (B, …) up the levels ``timesteps``: a :class:`Grid`, or an
    increasing integer tensor (K+1,) shared by the batch or (B, K+1) per sample, starting at x₀'s level
    (negative = clean, ᾱ = ``initial_alpha``). ``labels`` default to the target level of each step (ε(x_s, t_next),
    current diffusers / Inversion-DPO). Guidance belongs inside ``eps_fn`` (see ``guidance.guided``).
    Returns the :class:`Trajectory` with the ε used at each point."""
    if isinstance(timesteps, Grid):
        g = timesteps
        levels, labels, n_steps, initial_alpha = g.levels, g.labels if labels is None else labels, g.n_steps, \
            g.initial_alpha
    else:
        levels = torch.as_tensor(timesteps, device=x0.device).long()
        if levels.dim() == 1:
            levels = levels[None].expand(x0.shape[0], -1)
        if labels is None:
            labels = levels[:, 1:]
    if labels.dim() == 1:
        labels = labels[None].expand(x0.shape[0], -1)
    return ddim_walk(x0, eps_fn, levels, labels, alphas_cumprod, cond, n_steps=n_steps, initial_alpha=initial_alpha,
                     eta=eta, generator=generator, renoise_steps=renoise_steps, renoise_label=renoise_label)


def ddim_sample(x_t: Tensor, eps_fn: EpsFn, timesteps: Tensor, alphas_cumprod: Tensor, cond: Any = None, *,
                initial_alpha: float | Tensor = 1.0, renoise_steps: int = 0) -> Tensor:
    """Deterministic DDIM sampling (η = 0) down decreasing ``timesteps`` (K+1,) or (B, K+1) ending at the clean
    level (negative). ε at (x_t, t) — the standard sampler; with ``renoise_steps`` = 1 and target labels it is the
    second-order (Heun-type) counterpart of ReNoise inversion."""
    levels = torch.as_tensor(timesteps, device=x_t.device).long()
    if levels.dim() == 1:
        levels = levels[None].expand(x_t.shape[0], -1)
    labels = levels[:, :-1].clamp(min=0)
    return ddim_walk(x_t, eps_fn, levels, labels, alphas_cumprod, cond, initial_alpha=initial_alpha,
                     renoise_steps=renoise_steps, renoise_label="target").final
