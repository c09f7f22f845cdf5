"""``build_pairs``: the library call behind ``scripts/build_pairs.py`` (typed config in, summary out).

    summary = build_pairs(cfg, out)                      # cfg.source "laion-sg" or "shapes": scored candidates
    summary = build_pairs(cfg, out, input=PATH)          # cfg.source "pickapic": winner-first fixed pairs
    record = build_pairs(cfg, out)                       # cfg.source "world-pickapic": the world Pick-a-Pic file

It raises on bad input (``UserError`` and subclasses, as the command reports them) and returns the dataset summary,
or ``None`` when other processes' shards are still running (the last process to finish returns the summary).
"""
from __future__ import annotations

import os
from typing import Any

from .config import WORLD_ANNOTATIONS, BuildPairsConfig
from .pickapic import import_pickapic


def annotations_path(cfg: BuildPairsConfig) -> str | None:
    """The annotation file a ``laion-sg`` build reads (the embedded world train split by default); else None."""
    return cfg.annotations.path or WORLD_ANNOTATIONS if cfg.source == "laion-sg" else None


def build_pairs(cfg: BuildPairsConfig, out: str | os.PathLike[str], *, input: str | os.PathLike[str] | None = None,
                progress: bool = True, overwrite: bool = False) -> dict[str, Any] | None:
    """Build (or resume) the dataset ``cfg`` describes into ``out``."""
    if cfg.source == "pickapic":
        if input is None:
            raise ValueError("source pickapic needs an input (parquet files, a save_to_disk folder or a shard folder)")
        return import_pickapic(input, cfg.pickapic, out, progress=progress, overwrite=overwrite)
    if cfg.source == "world-pickapic":
        # heavy (torch): keeps build_pairs.py --help light
        from .world_pickapic import WorldPickapicConfig, build_world_pickapic
        if cfg.torch_threads:
            import torch  # heavy: as world_pickapic
            torch.set_num_threads(cfg.torch_threads)
        wcfg = WorldPickapicConfig(**cfg.world_pickapic.model_dump())
        return build_world_pickapic(out, wcfg, cfg.model.path, progress=progress, overwrite=overwrite)
    from .laion_sg import build_candidates, plan_annotations  # heavy (torch): keeps build_pairs.py --help light
    if cfg.source == "laion-sg":
        plan = plan_annotations(annotations_path(cfg), limit=cfg.annotations.limit)
    else:
        from .shapes import plan_world  # heavy (torch): as laion_sg
        plan = plan_world(cfg.world)
    return build_candidates(plan, cfg, out, progress=progress, overwrite=overwrite)
