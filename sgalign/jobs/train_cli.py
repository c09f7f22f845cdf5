"""Argument handling of ``scripts/train.py`` (kept here so the script stays thin); the work is
``commands.train_command`` (model.path=auto resolved here, in the command layer, never by the trainer)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..config import load_config
from ..errors import run_main
from ..training.config import TrainConfig
from ..training.runs import TRAIN_ROOT, latest_finished_run

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
    ap.add_argument("--overwrite", action="store_true",
                    help="trainer.output_dir holds another run: delete its contents and start clean")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = ap.parse_args(argv)
    extra = [f"task={args.task}"]
    if args.method:
        extra.append(f"method.name={args.method}")
    if args.resume:
        extra.append(f"checkpointing.resume={args.resume}")
    cfg = load_config(TrainConfig, args.config or default_config(args.task), [*args.overrides, *extra])
    return args, cfg


def next_command(task: str, run_dir: Path) -> str:
    """The evaluate command for a finished run (evaluate.py picks the latest finished run under runs/train)."""
    cmd = ["python", "scripts/evaluate.py", "--task", task]
    latest = latest_finished_run(task, TRAIN_ROOT)
    same = latest is not None and latest.resolve() == run_dir.resolve()
    return shlex.join(cmd if same else [*cmd, "--model", str(run_dir / "final")])  # quoted: paste it as it is


def run(argv=None) -> int:
    args, cfg = parse(argv)
    from .commands import train_command  # heavy (sgalign.world: scipy; the evaluation runner): keeps --help light
    res = train_command(cfg, overwrite=args.overwrite, config_file=args.config or default_config(args.task))
    final = res.run_dir / "final"
    print(f"model: {final if final.is_dir() else res.run_dir} ({res.step} steps; run {res.run_dir})")
    if final.is_dir():
        print(f"next: {next_command(cfg.task, res.run_dir)}")
    return 0


def main(argv=None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    return run_main(lambda: run(argv), debug=debug, prog="train")
