"""world-CLIP similarity: 3-in-1's C on the shapes world as a real cosine (``ImageTextSimilarity``).

The shapes world's CLIP (``sgalign.world.models.clip``, a trained ``transformers.CLIPModel``; docs/WORLD_MODELS.md)
through the real CLIP adapter: ``WorldCLIPSimilarity`` *is* ``CLIPSimilarity`` (same tokenisation, image processor,
``get_image_features`` / ``get_text_features``, L2 normalisation, raw cosine: no x100, no clipping, as the official
``CLIP_similarity.py``), loaded from the world-CLIP folder layout (tokenizer in ``tokenizer/``, text tower in a
shard of its own) and labelled ``kind="world"``. Only the loading and the provenance differ.

Its numbers are world numbers (a 4 M-parameter CLIP on 64x64 renders), never CLIPScore values. A folder without the
pretraining's ``training_record.json`` (or flagged random-init) is marked ``fallback=True``. Missing files raise
``BackendUnavailable`` naming them; nothing falls back silently.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...hashing import read_record
from ..provenance import BackendInfo
from ._hf import CONFIG, PREPROCESSOR, WEIGHTS, is_random_init, version_string
from .clip_similarity import CLIPSimilarity, load_clip
from .manifest import BackendUnavailable, Manifest, RequiredFile

NAME = "world-clip-similarity"
DEFINITION = ("raw cosine of world-CLIP's projected, L2-normalised image and text embeddings (CLIPScore's C as "
              "T2I-CompBench's CLIP_similarity.py computes it: no x100, no clipping)")
MANIFEST = Manifest(NAME, (
    CONFIG, WEIGHTS, PREPROCESSOR,
    RequiredFile.of("tokenizer/tokenizer.json", "tokenizer.json", purpose="CLIP BPE tokenizer (tokenizer/ subfolder)"),
), origin="the world-CLIP shipped in sgalign/world/weights/world-clip/ (restore it from the repository), or train "
          "one with `python scripts/pretrain_clip.py --out DIR` and pass that folder; or build the world reward "
          "with similarity='oracle' (the oracle proposition score, not a cosine)")


def default_world_clip_dir() -> Path:
    from ...world.models.clip import WORLD_CLIP_DIR  # heavy (torch via world.models): the rewards import without torch

    return WORLD_CLIP_DIR


def _weight_files(root: Path) -> list[Path]:
    """The safetensors files the checkpoint consists of: the single file, or every shard the index names."""
    if (root / "model.safetensors").is_file():
        return [root / "model.safetensors"]
    index = root / "model.safetensors.index.json"
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError) as err:
        raise BackendUnavailable(f"{NAME}: cannot read the shard index {index}: {err}") from err
    missing = [s for s in shards if not (root / s).is_file()]
    if missing:
        raise BackendUnavailable(f"{NAME}: {index.name} in {root} names missing weight shard(s) {missing}. "
                                 f"Origin: {MANIFEST.origin}. Nothing is downloaded.")
    return [root / s for s in shards]


def _fingerprint(root: Path, files: list[Path]) -> dict[str, Any]:
    """sha256 over every weight file in order (world-CLIP's are ~17 MB: cheap to hash in full)."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.read_bytes())
    return {"weights_files": [p.relative_to(root).as_posix() for p in files],
            "weights_bytes": sum(p.stat().st_size for p in files), "weights_sha256": h.hexdigest()[:16]}


class WorldCLIPSimilarity(CLIPSimilarity):
    """``CLIPSimilarity`` on world-CLIP: ``similarity(images, texts)`` is the raw cosine of image i with text i."""

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None, dtype=None,
                        truncate: bool = True) -> "WorldCLIPSimilarity":
        """``path``: a world-CLIP folder (``save_world_clip`` layout, or a plain ``CLIPModel`` folder with its
        tokenizer); None: the shipped world-CLIP."""
        root = MANIFEST.check(default_world_clip_dir() if path is None else path)
        files = _weight_files(root)
        tok_root = root / "tokenizer" if (root / "tokenizer" / "tokenizer.json").is_file() else root
        model, tok, proc = load_clip(root, NAME, device, dtype, tokenizer_root=tok_root)
        record = read_record(root)
        random_init = is_random_init(model.config)
        trained = record is not None and not random_init
        training = None if record is None else {k: record.get(k) for k in ("steps", "batch", "seed", "test_metrics")}
        info = BackendInfo(NAME, version_string(model.config), "world", fallback=not trained, details={
            "definition": DEFINITION, "cosine": True, **_fingerprint(root, files), "folder": root.name,
            "trained": trained, "training": training, "random_init": random_init, "truncate": truncate,
            "dtype": str(model.dtype), "image_size": model.config.vision_config.image_size})
        return cls(model, tok, proc, info, truncate)
