"""Initial noise for sampling: Gaussian, optionally with its per-channel spatial mean shrunk.

Why: SD's noise schedule leaves signal at its first sampling step (ᾱ ≈ 0.008 at t = 951), so a UNet can read an
image's mean latent from the spatial mean of x_T. A well-calibrated model shrinks that reading (the noise's mean is
mostly noise); a small, briefly trained one takes it at face value and amplifies it ~1/sqrt(ᾱ) ≈ 11x. On 16x16
latents the noise mean per channel has std 1/16, so the world base drew per-image latent means with 2-6x the spread
of real renders: colours and brightness of whole images drift, and phrase Entity-IoU fell (docs/RESULTS.md, "World
base model"). Shrinking the noise's spatial mean by ``scale`` (1 = plain Gaussian, 0 = mean-free) restores the data's
spread; the world recipe calibrates ``scale`` on validation graphs by that statistic alone and stores it in the
pipeline's config (``initial_noise_mean_scale``), so every sampling path of that model uses it.
"""
from __future__ import annotations

import torch


def shrink_spatial_mean(noise: torch.Tensor, scale: float) -> torch.Tensor:
    """``noise - (1 - scale) * mean_{h,w}(noise)`` per image and channel (``noise``: [B, C, H, W])."""
    if not 0.0 <= scale <= 1.0:
        raise ValueError(f"initial noise mean scale must be in [0, 1], got {scale}")
    if scale == 1.0:
        return noise
    return noise - (1.0 - scale) * noise.mean(dim=(-2, -1), keepdim=True)
