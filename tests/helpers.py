"""Small helpers shared by several test modules (no tests here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the LAION-SG dataset card's example record (shipped with sgalign.scene_graph)
CARD = REPO / "sgalign" / "scene_graph" / "data" / "laion_sg_card_example.json"


def evaluate_main():
    """``scripts/evaluate.py``'s ``main``, loaded from the script file (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main
