"""Helpers shared by the transformers adapters: version strings, a cheap weights fingerprint, random-init marks."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .manifest import RequiredFile, require_module

RANDOM_INIT_KEY = "sgalign_random_init"  # a config.json key written by tiny-model factories: the weights are random

WEIGHTS = RequiredFile.of("model.safetensors", "model.safetensors.index.json", purpose="weights (safetensors)")
CONFIG = RequiredFile.of("config.json", purpose="model config")
PREPROCESSOR = RequiredFile.of("preprocessor_config.json", "processor_config.json", purpose="image processor config")


def require_transformers(backend: str) -> None:
    require_module(backend, "torch", "pip install torch")
    require_module(backend, "transformers", "pip install transformers")


def fingerprint(root: Path) -> dict[str, Any]:
    """Size and sha256 of the first and last MiB of the weights file: identifies a checkpoint without reading GBs."""
    p = root / "model.safetensors"
    if not p.is_file():
        p = root / "model.safetensors.index.json"
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return {"weights_file": p.name, "weights_bytes": size, "weights_fingerprint": h.hexdigest()[:16]}


def version_string(config: Any) -> str:
    import transformers  # heavy: the rewards import without transformers and torch

    return f"transformers-{transformers.__version__}/{type(config).__name__}"


def is_random_init(config: Any) -> bool:
    return bool(getattr(config, RANDOM_INIT_KEY, False))


def pick_device(device: str | None) -> str:
    import torch  # heavy: as transformers

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def pooled_features(out: Any) -> Any:
    """The tensor of ``get_image_features`` / ``get_text_features``: transformers 4.x returns it directly, 5.x a
    model output whose ``pooler_output`` holds it (pyproject allows both)."""
    import torch  # heavy: as transformers

    return out if isinstance(out, torch.Tensor) else out.pooler_output
