"""Noise-schedule helpers: ᾱ look-up with per-sample levels, and the inversion grids.

A *level* is an integer training timestep whose ᾱ a latent is at. A negative level means "clean": its ᾱ is
``initial_alpha`` (1.0 = truly clean; diffusers' ``set_alpha_to_one=False`` convention uses ᾱ_0 instead, which
is what the official InPO/SmPO/Inversion-DPO code does). A *label* is the timestep the ε network is told.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GRID_MODES = ("exact", "diffusers-0.20", "full")


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012, dtype: torch.dtype = torch.float32) -> Tensor:
    """ᾱ of Stable Diffusion's ``scaled_linear`` schedule (SD1.5 and SDXL)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).to(dtype)


def alpha_at(alphas_cumprod: Tensor, levels: Tensor, initial_alpha: float | Tensor = 1.0) -> Tensor:
    """ᾱ at integer ``levels`` (any shape); negative levels map to ``initial_alpha``."""
    levels = torch.as_tensor(levels, device=alphas_cumprod.device).long()
    if (levels >= len(alphas_cumprod)).any():
        raise ValueError(f"level {int(levels.max())} is beyond the schedule's {len(alphas_cumprod)} timesteps")
    a = alphas_cumprod[levels.clamp(min=0)]
    init = torch.as_tensor(initial_alpha, dtype=a.dtype, device=a.device)
    return torch.where(levels < 0, init, a)


@dataclass
class Grid:
    """Per-sample inversion path: ``levels`` (B, K+1) from x₀'s level up; ``labels`` (B, K), the timestep the ε
    network is told when stepping out of ``levels[:, k]``; ``n_steps`` (B,), steps actually taken (rows are
    padded by repeating their last level). ``initial_alpha``: ᾱ of negative levels."""

    levels: Tensor
    labels: Tensor
    n_steps: Tensor
    initial_alpha: float | Tensor = 1.0
    spec: str = ""

    @property
    def final_levels(self) -> Tensor:
        return self.levels.gather(1, self.n_steps[:, None]).squeeze(1)


def _pad(rows: list[list[int]], labels: list[list[int]], device) -> tuple[Tensor, Tensor, Tensor]:
    kmax = max(len(r) - 1 for r in rows)
    lv = [r + [r[-1]] * (kmax + 1 - len(r)) for r in rows]
    lb = [lab + [lab[-1]] * (kmax - len(lab)) for lab in labels]
    n = [len(r) - 1 for r in rows]
    return (torch.tensor(lv, device=device), torch.tensor(lb, device=device), torch.tensor(n, device=device))


def base_levels(num_points: int, num_train_timesteps: int = 1000) -> list[int]:
    """Fixed, t-independent prefix of the ``exact`` grid: Δ, 2Δ, … below T (Δ = T // num_points)."""
    d = num_train_timesteps // num_points
    return [j * d for j in range(1, num_points)]


def exact_grid(t: Tensor, num_points: int = 10, num_train_timesteps: int = 1000, label: str = "target") -> Grid:
    """Our default: clean → Δ → 2Δ → … (grid points below t) → exactly t, per sample.

    Same coarse spacing (and so about the same number of steps) as the official 10-point grid, but the latent
    lands at the sampled t. The prefix does not depend on t, so a reference inversion of it is cacheable.
    ``label``: 'target' (ε(x_s, t_next), as current diffusers and Inversion-DPO) or 'source'."""
    if label not in ("target", "source"):
        raise ValueError(f"label must be 'target' or 'source', got {label!r}")
    base = base_levels(num_points, num_train_timesteps)
    rows, labs = [], []
    for tb in t.tolist():
        r = [-1] + [b for b in base if b < tb] + [int(tb)]
        rows.append(r)
        labs.append(r[1:] if label == "target" else [max(v, 0) for v in r[:-1]])
    lv, lb, n = _pad(rows, labs, t.device)
    return Grid(lv, lb, n, 1.0, f"exact(points={num_points},T={num_train_timesteps},label={label})")


def diffusers020_grid(t: Tensor, num_inference_steps: int = 10, num_train_timesteps: int = 1000,
                      steps_offset: int = 1, initial_alpha: float | Tensor = 1.0) -> Grid:
    """diffusers 0.20 ``DDIMInverseScheduler`` as the official InPO/SmPO loop uses it.

    ``set_timesteps(n)`` ('leading' spacing) gives {offset, offset+Δ, …}, rolled by one with the first entry
    replaced by offset − Δ: {−99, 1, 101, …, 801} for n = 10, SD's offset 1. Each ``step`` goes g → g + Δ with ε
    evaluated at (x_g, label g); the loop runs over the grid values < t, so the latent lands at
    (last g) + Δ, not at t. ᾱ of the negative first level is ``initial_alpha`` (ᾱ_0 for SD configs, whose
    ``set_alpha_to_one`` is False)."""
    d = num_train_timesteps // num_inference_steps
    sched = [j * d + steps_offset for j in range(num_inference_steps)]
    sched = [sched[0] - d] + sched[:-1]  # np.roll(…, 1) then timesteps[0] = timesteps[1] − Δ
    rows, labs = [], []
    for tb in t.tolist():
        gs = [g for g in sched if g < tb]
        if not gs:
            raise ValueError(f"t={tb} is below the first diffusers-0.20 grid value {sched[0]}")
        rows.append(gs + [gs[-1] + d])
        labs.append(gs)
    lv, lb, n = _pad(rows, labs, t.device)
    return Grid(lv, lb, n, initial_alpha,
                f"diffusers-0.20(steps={num_inference_steps},T={num_train_timesteps},offset={steps_offset})")


def full_grid(batch_size: int, num_steps: int, num_train_timesteps: int = 1000, device=None,
              initial_alpha: float | Tensor = 1.0) -> Grid:
    """Inversion-DPO's full trajectory: N steps, Δ = T // N, step k goes level (k−1)Δ → kΔ (the first from
    clean) with ε at (x, label kΔ) — diffusers' current ``next_step`` convention the official code re-implements.
    Points visited: labels {0, Δ, …, (N−1)Δ}."""
    d = num_train_timesteps // num_steps
    row = [-d] + [k * d for k in range(num_steps)]
    lv = torch.tensor([row] * batch_size, device=device)
    return Grid(lv, lv[:, 1:].clone(), torch.full((batch_size,), num_steps, device=device), initial_alpha,
                f"full(steps={num_steps},T={num_train_timesteps})")


def expected_steps(num_points: int, num_train_timesteps: int = 1000) -> float:
    """E[#steps] of the ``exact`` grid for t ~ U{0..T−1} (documentation / benchmarks)."""
    base = base_levels(num_points, num_train_timesteps)
    return sum(1 + sum(b < t for b in base) for t in range(num_train_timesteps)) / num_train_timesteps


__all__ = ["GRID_MODES", "Grid", "alpha_at", "base_levels", "diffusers020_grid", "exact_grid", "expected_steps",
           "full_grid", "scaled_linear_alphas_cumprod"]
