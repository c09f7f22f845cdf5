"""``scripts/build_pairs.py``: candidate datasets (LAION-SG annotations or the shapes world) and Pick-a-Pic import.

    python scripts/build_pairs.py --source shapes --out data/world-candidates [--n 200] [--model FOLDER]
    python scripts/build_pairs.py --source laion-sg --annotations train.json --out data/laion-candidates \\
        --config configs/build_pairs/laion_sg_sdxl.yaml [--set generation.num_inference_steps=50]
    python scripts/build_pairs.py --source pickapic --input pickapic_v2/ --out data/pickapic-pairs
    accelerate launch --num_processes 4 scripts/build_pairs.py ...   # each process a disjoint share of shards

Processes: RANK / WORLD_SIZE from the environment (``accelerate launch`` on GPUs, torchrun, or set by hand). On a
CPU-only machine use ``accelerate launch --multi_gpu --num_processes N`` (its torchrun launcher, which sets them);
``accelerate launch --cpu --num_processes N`` starts ONE process (accelerate wants MPI for multi-CPU), which then
builds every shard alone.

Rerun the same command after a crash or kill: finished shards are kept, the rest is built. The output folder
(``index.json`` once complete) is what the trainer's ``data.path`` points at.
"""
from __future__ import annotations

import argparse
import sys

from sgalign.config import ConfigError, load_config

from .config import BuildPairsConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="build_pairs.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=("laion-sg", "shapes", "pickapic"), default=None,
                    help="overrides the config's source (default: shapes)")
    ap.add_argument("--annotations", help="--source laion-sg: a LAION-SG split file (one JSON array of records)")
    ap.add_argument("--input", help="--source pickapic: parquet file(s) folder, save_to_disk folder or shard folder")
    ap.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    ap.add_argument("--config", help="YAML (configs/build_pairs/); keys as data_builders.config.BuildPairsConfig")
    ap.add_argument("--model", help="base SG model folder (default: the world SD1.5-SG when it exists)")
    ap.add_argument("--n", type=int, help="--source shapes: number of world annotations (world.n)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set generation.k=4 (repeatable)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.source:
        overrides.append(f"source={args.source}")
    if args.model:
        overrides.append(f"model.path={args.model}")
    if args.n is not None:
        overrides.append(f"world.n={args.n}")
    try:
        cfg = load_config(BuildPairsConfig, args.config, overrides)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    progress = not args.no_progress
    if cfg.source == "pickapic":
        if not args.input:
            print("--source pickapic needs --input PATH (parquet files, a save_to_disk folder or a shard folder)",
                  file=sys.stderr)
            return 2
        from .pickapic import import_pickapic
        import_pickapic(args.input, cfg.pickapic, args.out, progress=progress)
        return 0
    from .laion_sg import build_candidates, plan_annotations
    if cfg.source == "laion-sg":
        if not args.annotations:
            print("--source laion-sg needs --annotations FILE (a LAION-SG split: one JSON array of records)",
                  file=sys.stderr)
            return 2
        plan = plan_annotations(args.annotations)
    else:
        from .shapes import plan_world
        plan = plan_world(cfg.world)
    try:
        build_candidates(plan, cfg, args.out, progress=progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"build_pairs: {e}", file=sys.stderr)
        return 2
    return 0
