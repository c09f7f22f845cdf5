"""``scripts/build_pairs.py``: candidate datasets (LAION-SG annotations or the shapes world) and Pick-a-Pic import.

    python scripts/build_pairs.py --source laion-sg          # embedded world train split (LAION-SG JSON) ->
                                                             # runs/pairs/laion-sg, what train.py reads by default
    python scripts/build_pairs.py --source shapes --out data/world-candidates [--n 200] [--model FOLDER]
    python scripts/build_pairs.py --source laion-sg --annotations train.json --out data/laion-candidates \\
        --config configs/build_pairs/laion_sg_sdxl.yaml [--set generation.num_inference_steps=50]
    python scripts/build_pairs.py --source pickapic --input pickapic_v2/ --out data/pickapic-pairs
    python scripts/build_pairs.py --source world-pickapic --n 2000   # the world Pick-a-Pic file -> runs/world-pickapic
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
import shlex
import sys
from pathlib import Path

from sgalign.config import load_config
from sgalign.errors import UserError, run_main
from sgalign.outdir import refuse_inputs

from .build import annotations_path, build_pairs
from .config import DEFAULT_OUT, WORLD_MODEL, BuildPairsConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="build_pairs.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=("laion-sg", "shapes", "pickapic", "world-pickapic"), default=None,
                    help="overrides the config's source (default: shapes)")
    ap.add_argument("--annotations", help="--source laion-sg: a LAION-SG split file (one JSON array of records; "
                                          "default: the embedded world train split, data_builders/data/)")
    ap.add_argument("--input", help="--source pickapic: parquet file(s) folder, save_to_disk folder or shard folder")
    ap.add_argument("--out", help="output folder, resumed when it exists (default: runs/pairs/<source>)")
    ap.add_argument("--config", help="YAML (configs/build_pairs/); keys as data_builders.config.BuildPairsConfig")
    ap.add_argument("--model", help="base SG model folder (default: the world SD1.5-SG when it exists)")
    ap.add_argument("--n", type=int, help="annotations to build: world.n (--source shapes), annotations.limit "
                                          "(--source laion-sg, the first N valid records) or world_pickapic.n "
                                          "(--source world-pickapic, rows)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set generation.k=4 (repeatable)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--overwrite", action="store_true",
                    help="--out holds another build: delete its contents and start clean (one process only)")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), debug=args.debug, prog="build_pairs")


def next_command(source: str, out: str | Path) -> str:
    """The train command that reads ``out`` (no --set when it is the default folder train.py reads); after the world
    Pick-a-Pic file, the build_pairs import of it."""
    # shlex-quoted: a folder name with spaces or quotes pastes as one argument
    if source == "world-pickapic":
        return shlex.join(["python", "scripts/build_pairs.py", "--source", "pickapic", "--input", str(out)])
    task = "t2i" if source == "pickapic" else "compositional"
    cmd = ["python", "scripts/train.py", "--task", task]
    default = DEFAULT_OUT["pickapic" if task == "t2i" else "laion-sg"]
    return shlex.join(cmd if Path(out) == Path(default) else [*cmd, "--set", f"data.path={out}"])


def load(args: argparse.Namespace) -> BuildPairsConfig:
    overrides = list(args.overrides)
    if args.source:
        overrides.append(f"source={args.source}")
    if args.model:
        overrides.append(f"model.path={args.model}")
    if args.annotations:
        overrides.append(f"annotations.path={args.annotations}")
    cfg = load_config(BuildPairsConfig, args.config, overrides)
    if args.n is not None:  # after loading: which key --n sets depends on the resolved source
        key = {"shapes": "world.n", "world-pickapic": "world_pickapic.n"}.get(cfg.source, "annotations.limit")
        cfg = load_config(BuildPairsConfig, args.config, [*overrides, f"{key}={args.n}"])
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    progress = not args.no_progress
    out = args.out or DEFAULT_OUT[cfg.source]
    # before any folder is created: --out may be neither an input nor inside one (a model folder, the input data)
    model = cfg.model.path or WORLD_MODEL  # None: the world SD1.5-SG
    if cfg.source == "pickapic":
        if not args.input:
            raise UserError("--source pickapic needs --input PATH (parquet files, a save_to_disk folder or a shard "
                            "folder; the world's: python scripts/build_pairs.py --source world-pickapic --n 2000)")
        refuse_inputs({"--out": out}, {"--input": args.input, "--config": args.config}, emptied=args.overwrite)
    elif cfg.source == "world-pickapic":
        refuse_inputs({"--out": out}, {"--model": model, "--config": args.config}, emptied=args.overwrite)
    else:
        refuse_inputs({"--out": out}, {"--annotations": annotations_path(cfg), "--model": model,
                                       "model.sg_encoder": cfg.model.sg_encoder, "--config": args.config},
                      emptied=args.overwrite)
    summary = build_pairs(cfg, out, input=args.input, progress=progress, overwrite=args.overwrite)
    if summary is None:  # other processes' shards still running: the last one to finish prints the summary
        return 0
    if cfg.source == "world-pickapic":
        print(f"data: {out} (world Pick-a-Pic file, {summary['rows']} rows)")
    else:
        print(f"data: {out} (dataset_id {summary['dataset_id']})")
    print(f"next: {next_command(cfg.source, out)}")
    return 0
