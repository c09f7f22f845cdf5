"""Argument handling of ``scripts/train.py`` (kept here so the script stays thin)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import load_config
from .config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def default_config(task: str) -> Path:
    """The world defaults of ``task`` (``configs/world/<task>.yaml``)."""
    return CONFIGS / "world" / f"{task}.yaml"


def parse(argv=None) -> tuple[argparse.Namespace, TrainConfig]:
    ap = argparse.ArgumentParser(description="Align a diffusion model with preferences (one method, one task).")
    ap.add_argument("--task", choices=("compositional", "t2i"), required=True)
    ap.add_argument("--method", help="method name (default: the config's method.name)")
    ap.add_argument("--config", help="YAML config (default: configs/world/<task>.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set optimizer.lr=1e-6 (repeatable)")
    ap.add_argument("--resume", help="'latest' or a checkpoint folder (= checkpointing.resume)")
    args = ap.parse_args(argv)
    extra = [f"task={args.task}"]
    if args.method:
        extra.append(f"method.name={args.method}")
    if args.resume:
        extra.append(f"checkpointing.resume={args.resume}")
    cfg = load_config(TrainConfig, args.config or default_config(args.task), [*args.overrides, *extra])
    return args, cfg


def main(argv=None) -> int:
    from .trainer import TrainingDiverged, train
    _, cfg = parse(argv)
    try:
        train(cfg)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 3
    return 0
