"""The optimisation loop shared by the world-model pretraining recipes (world-CLIP, world VAE)."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch


def run_steps(module: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, steps: int,
              batches: Iterator[Any], step_loss: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
              progress: Callable[[int, dict[str, float]], None] | None = None,
              max_grad_norm: float = 1.0, stop: Callable[[], bool] | None = None) -> list[dict[str, float]]:
    """``steps`` optimiser steps of ``step_loss(next(batches))`` with grad-norm clipping (fewer if ``stop()`` turns
    true: a time budget); returns the per-step stats."""
    history = []
    for step in range(steps):
        if stop is not None and stop():
            break
        loss, stats = step_loss(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        history.append(stats)
        if progress is not None:
            progress(step, stats)
    return history
