"""Where the world's shipped weights live (the one home of these paths; ``world/models`` trains and loads them).

``WORLD_SD15_SG``: the world SD1.5-SG, the base model of every world command (``model.path: auto`` of the trainer,
build_pairs' default model, the world job's base). ``world_model_path()`` returns it.
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WORLD_SD15_SG = WEIGHTS_DIR / "world-sd15-sg"


def world_model_path() -> Path:
    """Where the world SD1.5-SG is trained to (the ``model.path: auto`` default once it exists)."""
    return WORLD_SD15_SG
