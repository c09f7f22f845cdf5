"""Shared set-up of the training tests (a helper module, not a test module): tiny models and tiny datasets written once per session,
and a config factory. Sizes: make_tiny models (8x8 latents from 16x16 images), batch 2, one torch thread."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgalign.config import load_config
from sgalign.training.config import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    from sgalign.pipelines.tiny import make_tiny
    from sgalign.training.synthetic import write_candidate_dataset, write_pickapic

    root = tmp_path_factory.mktemp("training_assets")
    return {
        "sd15-sg": make_tiny("sd15-sg", root / "sd15-sg", gate_init=0.5),
        "sd15": make_tiny("sd15", root / "sd15"),
        # two candidates per annotation: exactly one pair each, so "the training pairs" are a fixed set
        "candidates": write_candidate_dataset(root / "cands", rows=2, k=2, seed=1),
        "pickapic": write_pickapic(root / "pap.parquet", rows=3, ties=[2], scores=True, seed=2),
    }


# methods at tiny scale: short inversion grids so 20 steps stay cheap
METHOD_OPTIONS = {
    "diffusion-dpo": {"beta": 200.0},
    "inpo": {"beta": 200.0, "num_points": 3},
    "smpo": {"beta": 200.0, "num_points": 3, "s_min": 0.0, "s_max": 1.0},
    "inversion-dpo": {"beta": 200.0, "num_steps": 3},
    "sft": {},
}


def make_config(assets: dict[str, Path], out: Path, task: str = "compositional", method: str = "diffusion-dpo",
                overrides: list[str] = ()) -> TrainConfig:
    opts = dict(METHOD_OPTIONS[method]) if method in METHOD_OPTIONS else {}
    if task == "t2i" and method == "smpo":
        opts.update(s_min=0.1, s_max=0.3)
    base = {
        "task": task,
        "model": {"path": str(assets["sd15-sg" if task == "compositional" else "sd15"])},
        "data": {"path": str(assets["candidates" if task == "compositional" else "pickapic"]), "batch_size": 2,
                 "vae_sample": False, "cache_latents": True,
                 **({"score_columns": ["ps_0", "ps_1"]} if task == "t2i" else {})},
        "method": {"name": method, "options": {method: opts} if opts else {}},
        "optimizer": {"lr": 3e-4, "scale_lr": False, "warmup_steps": 0, "lr_scheduler": "constant"},
        "trainer": {"output_dir": str(out), "max_steps": 20},
        "checkpointing": {"every": 0, "final_pipeline": False},
        "logging": {"tqdm": False, "tensorboard": "off"},
    }
    return load_config(TrainConfig, None, list(overrides), base=base)
