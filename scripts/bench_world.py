#!/usr/bin/env python
"""The world results table: build pairs -> train every method (same budget, same seed) -> evaluate each vs the base.

    python scripts/bench_world.py --budget table [--out runs/world-table] [--methods diffusion-dpo,smpo] [--seed 0]
    python scripts/bench_world.py --task t2i --budget table [--out runs/world-t2i-table]
    python scripts/bench_world.py --budget table --methods diffusion-dpo,diffusion-dpo@gold,diffusion-dpo@shuffled
    python scripts/bench_world.py --budget table --out runs/world-holdout \\
        --budget-set 'holdout=[red:circle, blue:square]'

    python scripts/bench_world.py --budget demo --seeds 0 1 --out runs/world-seeds --budget-set eval_graphs=128 \
        --budget-set 'eval_seeds=[0, 1, 2]'

``--seeds``: one job per training seed (OUT/seed-<s>), all scored on the same graphs and noise seeds, then
OUT/seeds_table.md: pooled Δ per method (graph-resampled) and each seed's Δ, FID and training diagnostics.
``method@gold`` / ``method@shuffled``: the same trainer on gold pairs (true render over the base's worst candidate, a
ceiling) or reward-shuffled pairs (a floor), derived once from pairs/ into pairs-gold/ / pairs-shuffled/.
``holdout``: pairs from train graphs without those colour:shape pairs, test graphs that all contain one.

Resumable: rerun the same command after a kill; finished stages (pairs, each method's training and evaluation)
are skipped. Writes OUT/results_table.md, OUT/results_table.json and OUT/index.html (links to each method's
report). ``--task t2i``: world Pick-a-Pic pairs from the base -> build_pairs --source pickapic -> train --task t2i
-> evaluate --task t2i; a table of win-rates vs the base. Budgets: ``sgalign.jobs.specs.BUDGETS``
(world-scale CPU choices, not official values).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgalign.jobs.seeds import write_seeds_table  # noqa: E402
from sgalign.jobs.specs import parse_budget_sets  # noqa: E402
from sgalign.jobs.world_job import ALL_METHODS, BUDGETS, TASKS, run_world_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=TASKS, default="compositional")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="table")
    ap.add_argument("--out", default=None,
                    help="job folder (default: runs/world-<budget>; t2i: runs/world-t2i-<budget>)")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated method ids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="several training seeds: one job per seed in OUT/seed-<s> (the same evaluation graphs), "
                         "then OUT/seeds_table.md pooling them (compositional task)")
    ap.add_argument("--base-model", default=None, help="base SG model folder (default: the world SD1.5-SG)")
    ap.add_argument("--budget-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one JobBudget field (e.g. lr=5e-5, train_steps=400); recorded in job.json")
    args = ap.parse_args(argv)
    try:
        overrides = parse_budget_sets(args.budget_set)
    except ValueError as e:
        ap.error(str(e))
    default_out = f"runs/world-{args.budget}" if args.task == "compositional" else f"runs/world-t2i-{args.budget}"
    out = Path(args.out or default_out)
    methods = [m for m in args.methods.split(",") if m]
    if not args.seeds:
        run_world_job(out, budget=args.budget, methods=methods, seed=args.seed, base_model=args.base_model,
                      task=args.task, **overrides)
        return 0
    if args.task != "compositional":
        ap.error("--seeds: the pooled table exists for the compositional task only")
    for s in args.seeds:
        run_world_job(out / f"seed-{s}", budget=args.budget, methods=methods, seed=s, base_model=args.base_model,
                      **overrides)
    paths = write_seeds_table(out, [out / f"seed-{s}" for s in args.seeds], methods)
    print(f"[world-job] table over seeds {args.seeds} -> {paths['markdown']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
