"""Helpers shared by tests/test_build_pairs_*.py and test_hostile_inputs.py (a helper module, not a test module): the
tiny SD1.5-SG they build with (a module fixture), a small build config, the CLI as a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# 16x16 images = 8x8 latents, 2 DDIM steps, 3 annotations per pipeline call, 1 annotation per shard
SMALL = ["generation.num_inference_steps=2", "generation.height=16", "generation.width=16",
         "generation.annotations_per_call=3", "shards.annotations_per_shard=1", "torch_threads=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random-init SD1.5-SG (gate 0.5), one per test module that imports it."""
    from sgalign.pipelines.tiny import make_tiny
    torch.set_num_threads(1)
    return make_tiny("sd15-sg", tmp_path_factory.mktemp("m") / "tiny", gate_init=0.5)


def small_config(model: Path, **sections):
    from data_builders.config import BuildPairsConfig
    from sgalign.config import apply_overrides
    data = apply_overrides({"model": {"path": str(model)}}, SMALL)
    for k, v in sections.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return BuildPairsConfig.model_validate(data)


def cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``scripts/build_pairs.py args`` as a real subprocess (one thread, offline)."""
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / "build_pairs.py"), *args], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rows(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]
