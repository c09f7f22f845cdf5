"""Training step of every method, this working tree against a git revision, in one interleaved run.

    python scripts/bench_step.py [--revision ccb35ef] [--models world-sd15 tiny-sdxl] [--methods ...]
                                 [--batches 1 4] [--steps 6] [--warmup 2] [--rounds 2] [--threads 1] [--out FILE.md]

Benchmark, not a test (see ``sgalign.jobs.step_bench``): s/pair (process CPU and wall), UNet rows per pair and
peak RSS per method on the world SD1.5-SG (text path) and a tiny random-init SDXL, at each batch size; the
revision runs from a temporary git worktree with the same settings. Prints the machine line and a markdown table
(``--out``: also written there).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sgalign.machine import machine_line
from sgalign.jobs.step_bench import METHODS, MODELS, compare, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revision", default="ccb35ef")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=2, help="A/B runs per configuration (order alternates)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(machine_line(), flush=True)
    now, base, configs = compare(a.revision, tuple(a.models), tuple(a.methods), tuple(a.batches), a.steps, a.warmup,
                                 a.rounds, a.threads, log=lambda s: print(s, flush=True))
    md = table(now, base, configs, a.revision)
    print(md)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(f"{machine_line()}\n\n{md}")


if __name__ == "__main__":
    main()
