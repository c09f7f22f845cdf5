"""Our own DDIM stepping for the inversion-based methods.

* ``schedule``: ᾱ look-up with per-sample levels; grids — ``exact`` (default: lands at t, t-independent prefix),
  ``diffusers-0.20`` (the official InPO/SmPO inversion), ``full`` (Inversion-DPO's N-step trajectory).
* ``inversion``: ``ddim_step``, ``ddim_invert`` (per-sample grids, η jitter, ReNoise with 'source'/'target'
  second-evaluation label), ``ddim_sample``; returns a ``Trajectory`` with the ε used at each point.
* ``guidance.guided``: classifier-free guidance inside the ε function; ``Unconditional``: a named uncond branch;
  ``rescale_guided``: guidance rescale (Lin et al. 2024) for samplers.
* ``cache``: trajectory cache (image hash + model hash + grid + guidance), sharded safetensors on disk.
* ``counter.ForwardCounter``: UNet forwards per row, grad / no-grad.
* ``prediction``: ε or v models; ``as_epsilon`` (a v model on the ε contract) and ``prediction_target``.

An ε function is ``eps_fn(x_t, t, cond) -> eps`` with x_t (B, …), integer t (B,), and an opaque ``cond``.
"""
from .batching import cat_rows, select_rows
from .cache import TrajectoryCache, cached_invert, image_hash, model_fingerprint
from .counter import EpsFn, ForwardCounter, ForwardStats
from .guidance import ZEROS, Unconditional, guided, rescale_guided, zeros_like_cond
from .inversion import Trajectory, ddim_invert, ddim_sample, ddim_sigma, ddim_step, ddim_walk
from .prediction import Prediction, as_epsilon, check_prediction, epsilon_from_output, prediction_target
from .schedule import (Grid, alpha_at, base_levels, diffusers020_grid, exact_grid, expected_steps, full_grid,
                       scaled_linear_alphas_cumprod)

__all__ = [
    "EpsFn", "ForwardCounter", "ForwardStats", "Grid", "Prediction", "as_epsilon", "check_prediction",
    "epsilon_from_output", "prediction_target", "Trajectory", "TrajectoryCache", "Unconditional", "ZEROS",
    "alpha_at", "base_levels", "cached_invert", "cat_rows", "ddim_invert", "ddim_sample", "ddim_sigma", "ddim_step",
    "ddim_walk", "diffusers020_grid", "exact_grid", "expected_steps", "full_grid", "guided", "image_hash", "rescale_guided",
    "model_fingerprint", "scaled_linear_alphas_cumprod", "select_rows", "zeros_like_cond",
]
