"""The pre-training loop: one home for gradient clipping, EMA, the time limit and checkpoint/resume.

Used by the SG pre-training (``training.pretrain_sg``, through ``accelerate``), the world recipe's stages
(``jobs.world_base``: SG-encoder layout, stages 1 and 2) and the world-model pre-training (``world.models.clip`` /
``vae``). A caller supplies what differs: its modules, optimiser and LR schedule, and ``loss_fn(step) -> (loss,
stats)``, which draws its own batch. The preference trainer (``training.trainer``) has a loop of its own.

    loop = Loop({"unet": unet}, opt, sched, ema_decay=0.999, max_seconds=600, checkpoint_dir=out / "checkpoint",
                save_every=200)
    loop.resume()                       # from checkpoint_dir, if a checkpoint is there
    loop.run(total, loss_fn, on_step=log_progress)
    with loop.ema_weights():            # the modules hold the EMA weights inside the block
        pipe.save_pretrained(...)

One optimiser step: ``loss_fn`` once per micro-batch, ``backward`` (summed over micro-batches when an
``accelerator`` accumulates), gradients averaged over processes, clipped to ``max_grad_norm``, optimiser and LR
schedule step, EMA update. ``accelerator``: an ``accelerate.Accelerator`` (gradient accumulation, autocast,
several processes), or None for plain single-process PyTorch.

Checkpoint folder (written whole, then moved into place): ``<name>.safetensors`` and ``<name>.ema.pt`` per module,
``optimizer.pt`` and ``state.json`` (``step``, ``elapsed`` seconds, ``losses``: each step's ``stats["loss"]``,
``scheduler``). Every RNG draw of a step must come from the step index (``loss_fn(step)``), so a resumed run takes
the same steps as a run that never stopped.

``min_snr_weights``: the Min-SNR-gamma loss weights (Hang et al. 2023) of a loss function that uses them.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..hashing import replace_dir, write_json_atomic

LossFn = Callable[[int], "tuple[Tensor, dict[str, float]]"]


def min_snr_weights(scheduler, t: Tensor, gamma: float, prediction_type: str = "epsilon",
                    floor: float = 0.0) -> Tensor:
    """Min-SNR-gamma weights of the per-sample MSE at timesteps ``t``: min(SNR, gamma) / SNR for an epsilon target,
    min(SNR, gamma) / (SNR + 1) for a v target (``v_prediction``); SNR = alpha_bar / (1 - alpha_bar).

    ``floor``: no weight below it. A v target's weights vanish at t = T (SNR 0), where a zero-terminal-SNR model
    decides its layout; the floor keeps those rows in the loss without letting them dominate it."""
    ac = scheduler.alphas_cumprod[t.cpu()].to(torch.float32)
    snr = ac / (1 - ac)
    if prediction_type == "epsilon":
        w = torch.clamp(snr, max=gamma) / snr
    elif prediction_type == "v_prediction":
        w = torch.clamp(snr, max=gamma) / (snr + 1)
    else:
        raise ValueError(f"min-SNR weights for prediction_type {prediction_type!r}: epsilon or v_prediction")
    return w.clamp(min=floor).to(t.device)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` steps times a cosine from 1 at step 0 to 0 at ``total``."""
    def f(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return f


class _Plain:
    """What the loop asks of an ``accelerate.Accelerator``, for plain single-process PyTorch."""

    sync_gradients = True
    num_processes = 1

    def accumulate(self, *_: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params: list[torch.nn.Parameter], max_norm: float) -> Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def average_gradients(acc: Any, params: list[torch.nn.Parameter]) -> None:
    """Mean of the gradients over processes (every process reduces every parameter: a missing grad is zero), for
    modules that are not DDP-wrapped. A no-op in one process."""
    if acc.num_processes == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(acc.reduce(p.grad, reduction="mean"))


class Loop:
    """Optimiser steps of ``loss_fn`` over ``modules`` (name -> module; the names name the checkpoint files).

    State after ``run``: ``step`` (optimiser steps done, resumed ones included), ``elapsed`` (seconds, resumed
    ones included), ``history`` (each step's stats; with accumulation the mean over its micro-batches; resumed
    steps keep their ``loss`` only), ``timed_out`` (stopped by ``max_seconds``)."""

    def __init__(self, modules: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                 scheduler: Any = None, *, max_grad_norm: float | None = 1.0, ema_decay: float | None = None,
                 max_seconds: float | None = None, checkpoint_dir: str | Path | None = None, save_every: int = 0,
                 accelerator: Any = None) -> None:
        self.modules, self.optimizer, self.scheduler = dict(modules), optimizer, scheduler
        self.max_grad_norm, self.max_seconds, self.save_every = max_grad_norm, max_seconds, save_every
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.accelerator = accelerator if accelerator is not None else _Plain()
        self.params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        self.ema: dict[str, Any] = {}
        if ema_decay:
            from diffusers.training_utils import EMAModel  # heavy (diffusers): only when EMA is on

            self.ema = {k: EMAModel(m.parameters(), decay=ema_decay) for k, m in self.modules.items()}
        self.step, self.elapsed, self.timed_out = 0, 0.0, False
        self.history: list[dict[str, float]] = []

    # ---- the steps ----
    def run(self, total: int, loss_fn: LossFn, *, on_step: Callable[[int, dict[str, float]], None] | None = None,
            on_save: Callable[[bool], None] | None = None) -> list[dict[str, float]]:
        """Optimiser steps until ``step == total`` or ``max_seconds`` (checked after each step; the elapsed time of
        a resumed run counts). ``on_step(steps_done, stats)`` after each step. Every ``save_every`` steps and once
        at the end: the checkpoint (with ``checkpoint_dir``) and ``on_save(final)``. Returns ``history``."""
        acc, window = self.accelerator, []
        t_start = time.time() - self.elapsed
        while self.step < total:
            with acc.accumulate(*self.modules.values()):
                with acc.autocast():
                    loss, stats = loss_fn(self.step)
                acc.backward(loss)
                if acc.sync_gradients:  # (an accelerate-prepared optimiser skips the other steps by itself)
                    average_gradients(acc, self.params)
                    if self.max_grad_norm is not None:
                        acc.clip_grad_norm_(self.params, self.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
            window.append(stats)
            if not acc.sync_gradients:
                continue
            self._after_step(window[0] if len(window) == 1 else
                             {k: float(np.mean([s[k] for s in window])) for k in window[0]})
            window = []
            self.elapsed = time.time() - t_start
            if on_step is not None:
                on_step(self.step, self.history[-1])
            if self.max_seconds is not None and self.elapsed > self.max_seconds:
                self.timed_out = True
                break
            if self.save_every and self.step % self.save_every == 0 and self.step < total:
                self.save(on_save, final=False)
        self.save(on_save, final=True)
        return self.history

    def _after_step(self, stats: dict[str, float]) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        for k, e in self.ema.items():
            e.step(self.modules[k].parameters())
        self.step += 1
        self.history.append(stats)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Inside the block the modules hold their EMA weights (unchanged without EMA); the trained ones after."""
        saved = {k: [p.detach().clone() for p in self.modules[k].parameters()] for k in self.ema}
        for k, e in self.ema.items():
            e.copy_to(self.modules[k].parameters())
        try:
            yield
        finally:
            for k, values in saved.items():
                for p, v in zip(self.modules[k].parameters(), values):
                    p.data.copy_(v)

    # ---- checkpoint / resume ----
    def save(self, on_save: Callable[[bool], None] | None = None, final: bool = False) -> None:
        if self.checkpoint_dir is not None:
            self.save_checkpoint(self.checkpoint_dir)
        if on_save is not None:
            on_save(final)

    def save_checkpoint(self, folder: str | Path) -> None:
        """Everything a resumed run needs, written to ``folder.tmp`` and then moved onto ``folder``."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for k, m in self.modules.items():
            save_file({n: p.detach().cpu().contiguous() for n, p in m.state_dict().items()}, tmp / f"{k}.safetensors")
            if k in self.ema:
                torch.save(self.ema[k].state_dict(), tmp / f"{k}.ema.pt")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic(tmp / "state.json", {
            "step": self.step, "elapsed": self.elapsed, "losses": [h["loss"] for h in self.history],
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict()})
        replace_dir(tmp, folder)

    def resume(self, folder: str | Path | None = None) -> bool:
        """Load the checkpoint in ``folder`` (default ``checkpoint_dir``) if there is one; True if loaded."""
        folder = Path(folder) if folder is not None else self.checkpoint_dir
        if folder is None or not (folder / "state.json").is_file():
            return False
        state = json.loads((folder / "state.json").read_text())
        for k, m in self.modules.items():
            m.load_state_dict(load_file(folder / f"{k}.safetensors"))
            if k in self.ema:
                self.ema[k].load_state_dict(torch.load(folder / f"{k}.ema.pt", weights_only=True))
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.history = [{"loss": v} for v in state["losses"]]
        return True
