"""Checkpoints: ``<run>/checkpoints/step-XXXXXXXX/`` = accelerate state (model, optimizer, RNG, accumulation
step) + ``trainer_state.json`` (step, sampler position, lr scheduler) + ``ema.safetensors`` + the policy weights in
diffusers format (``policy/unet`` or ``policy/unet_lora``, ``policy/sg_encoder``). Written to ``*.tmp`` and renamed
when complete, so an interrupted save never hides the previous (last good) checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..errors import UserError

_NAME = re.compile(r"^step-(\d+)$")


def checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if p.is_dir() and _NAME.match(p.name)] if root.exists() else []
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    c = checkpoints(run_dir)
    return c[-1] if c else None


def _policy_parts(trainer) -> tuple[Any, Any]:
    pol = trainer.acc.unwrap_model(trainer.policy)
    return pol.unet, pol.sg_encoder


def save_policy(trainer, out: Path) -> None:
    """The trained parts in diffusers format: ``unet/`` (full) or ``unet_lora/`` (peft adapter), ``sg_encoder/``."""
    m = trainer.cfg.model
    unet, sg = _policy_parts(trainer)
    if m.train_unet == "full":
        unet.save_pretrained(out / "unet", safe_serialization=True)
    elif m.train_unet == "lora":
        unet.save_lora_adapter(str(out / "unet_lora"), safe_serialization=True)
    if sg is not None and m.train_sg_encoder:
        sg.save_pretrained(out / "sg_encoder", safe_serialization=True)


def save_checkpoint(trainer, run_dir: Path, step: int) -> Path:
    acc = trainer.acc
    final = Path(run_dir) / "checkpoints" / f"step-{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    if acc.is_main_process:
        save_policy(trainer, tmp / "policy")
        if trainer.ema is not None:
            save_file({f"p{i}": t.detach().cpu().contiguous() for i, t in enumerate(trainer.ema.shadow_params)},
                      str(tmp / "ema.safetensors"), metadata={"optimization_step": str(trainer.ema.optimization_step)})
        (tmp / "trainer_state.json").write_text(json.dumps(trainer.state_dict(), indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    acc.wait_for_everyone()
    return final


class CheckpointError(UserError, ValueError):
    """checkpointing.resume names no checkpoint of this run (exit 2)."""


def load_checkpoint(trainer, path: Path) -> None:
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"checkpointing.resume {path}: not a complete sgalign checkpoint (no "
                              "trainer_state.json); pass 'latest' or a folder under <run>/checkpoints/")
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except ValueError:
        raise CheckpointError(f"{path / 'trainer_state.json'}: not valid JSON; resume from another checkpoint") \
            from None
    if state.get("method") != trainer.cfg.method.name:
        raise CheckpointError(f"{path} was saved by method {state.get('method')!r}, this run is "
                              f"{trainer.cfg.method.name!r}")
    trainer.acc.load_state(str(path))
    trainer.load_state_dict(state)
    if trainer.ema is not None:
        shadow = load_file(str(path / "ema.safetensors"))
        for i, p in enumerate(trainer.ema.shadow_params):
            p.data.copy_(shadow[f"p{i}"].to(p.device))
        with safe_open(str(path / "ema.safetensors"), "pt") as f:
            trainer.ema.optimization_step = int((f.metadata() or {}).get("optimization_step", 0))


def prune_checkpoints(run_dir: Path, keep: int, acc) -> None:
    if acc.is_main_process:
        for p in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(p)
    acc.wait_for_everyone()


def export_pipeline(trainer, out: Path) -> None:
    """The base model folder with the policy's trained parts swapped in (EMA weights when EMA is on); LoRA runs
    keep the base ``unet/`` and add ``unet_lora/`` (load the base, then ``unet.load_lora_adapter``)."""
    acc = trainer.acc
    if acc.is_main_process:
        base = Path(trainer.cfg.model.path)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(base, out, ignore=shutil.ignore_patterns(".*"))
        params = [p for p in trainer.policy.parameters() if p.requires_grad]
        if trainer.ema is not None:
            trainer.ema.store(params)
            trainer.ema.copy_to(params)
        try:
            save_policy(trainer, out / "policy_tmp")
            for p in (out / "policy_tmp").iterdir():
                if (out / p.name).exists():
                    shutil.rmtree(out / p.name)
                os.replace(p, out / p.name)
            (out / "policy_tmp").rmdir()
        finally:
            if trainer.ema is not None:
                trainer.ema.restore(params)
        (out / "training.json").write_text(json.dumps({
            "method": trainer.cfg.method.name, "task": trainer.cfg.task, "step": trainer.step,
            "random_init_base": trainer.cfg.model.random_init, "notes": trainer.notes, "ema": trainer.ema is not None,
            "config": trainer.cfg.model_dump(mode="json")}, indent=1, default=str) + "\n")
    acc.wait_for_everyone()
