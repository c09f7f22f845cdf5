#!/usr/bin/env python
"""Validation grid of one method on the world compositional task (``sgalign.jobs.tune.run_tune``).

    python scripts/tune_world.py --method diffusion-dpo --betas 500,2000,5000 --lrs 1e-5,3e-5 --steps 50,100,150 \\
        --budget demo --base-model runs/world-demo/base [--out runs/tune-diffusion-dpo] [--write-config [FILE]]
    python scripts/tune_world.py --method inversion-dpo --options '[{num_steps: 10, subsample: 2}, {num_steps: 20}]'

Each (β, lr, option set) is one training run of max(steps) steps, evaluated at every listed step from its
checkpoints on world *validation* graphs (never test). The choice: the best validation SG-IoU among cells whose FID
is not above the base's x --fid-guard. Writes OUT/grid.json and OUT/grid.md; --write-config also writes the choice
(β, options, lr, steps) to a new YAML (default OUT/tuned.yaml) that includes configs/world/compositional.yaml:
train it with `python scripts/train.py --task compositional --config OUT/tuned.yaml`. No tracked config is edited.
Resumable: rerun the same command.

    python scripts/tune_world.py --task t2i --method diffusion-dpo --steps 50,100,200,400 --budget demo

``--task t2i``: world Pick-a-Pic pairs; each cell's win-rate over the base on validation prompts under the training
reward and the held-out world-CLIP (the curve over steps); the choice: the best training-reward win-rate among cells
that do not lose on world-CLIP (early stopping chosen on validation); --write-config's file includes
configs/world/t2i.yaml.

    python scripts/tune_world.py --method diffusion-dpo --betas 1000,5000 --seeds 0,1 --budget demo

``--seeds``: the grid once per pair draw (each seed draws its own train graphs and pairs, and seeds the trainer) into
OUT/seed-<s>/; every cell is pooled over the draws per validation graph and the choice is made on the pooled
figures (grid.md lists each draw's Δ too). At the demo budget the draw alone moves SG-IoU by about 0.035.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from sgalign.jobs.specs import BUDGETS, parse_budget_sets  # noqa: E402
from sgalign.jobs.tune import DEFAULT_OPTION_SETS, FID_GUARD, TuneGrid, run_tune, run_tune_draws  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["compositional", "t2i"], default="compositional",
                    help="t2i: world Pick-a-Pic pairs, win-rates on validation prompts (training reward and held-out "
                         "world-CLIP)")
    ap.add_argument("--method", required=True, help="a world job method id (e.g. diffusion-dpo, smpo@gold)")
    ap.add_argument("--betas", default="", help="comma-separated β values (default: the config's)")
    ap.add_argument("--lrs", default="", help="comma-separated lr values per pair (default: the budget's)")
    ap.add_argument("--steps", default="", help="comma-separated steps, checkpoints of one run (default: budget's)")
    ap.add_argument("--options", default=None,
                    help="YAML list of method option sets, one per cell (default: the suggested sets for "
                         f"{', '.join(DEFAULT_OPTION_SETS)}, else the config's)")
    ap.add_argument("--fid-guard", type=float, default=FID_GUARD)
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="demo")
    ap.add_argument("--out", default=None, help="tuning folder (default: runs/tune-<method>-<budget>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="",
                    help="comma-separated pair draws (e.g. 0,1): the grid once per draw into OUT/seed-<s>, each cell "
                         "pooled over the draws and the choice made on that (compositional task)")
    ap.add_argument("--base-model", default=None, help="base SG model folder (default: the world SD1.5-SG)")
    ap.add_argument("--budget-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one JobBudget field (e.g. eval_graphs=128)")
    ap.add_argument("--set", dest="train_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a trainer setting for every cell (e.g. data.proportion_empty_prompts=0.2); recorded")
    ap.add_argument("--write-config", nargs="?", const="", default=None, metavar="FILE",
                    help="write the choice to FILE (default OUT/tuned.yaml), a new YAML including the world YAML")
    args = ap.parse_args(argv)
    try:
        overrides = parse_budget_sets(args.budget_set)
    except ValueError as e:
        ap.error(str(e))
    name = args.method.partition("@")[0]
    options = yaml.safe_load(args.options) if args.options else DEFAULT_OPTION_SETS.get(name, [{}])
    if not isinstance(options, list) or not all(isinstance(o, dict) for o in options):
        ap.error(f"--options {args.options!r}: expected a YAML list of mappings, e.g. '[{{beta: 500}}, {{}}]'")
    try:
        steps = [int(x) for x in args.steps.split(",") if x]
        grid = TuneGrid(args.method, betas=_floats(args.betas), lrs=_floats(args.lrs), steps=steps,
                        option_sets=options, fid_guard=args.fid_guard, task=args.task,
                        train_sets=args.train_sets)
    except ValueError as e:
        ap.error(str(e))
    out = args.out or f"runs/tune-{'t2i-' if args.task == 't2i' else ''}{args.method.replace('@', '-')}-{args.budget}"
    try:
        draws = [int(x) for x in args.seeds.split(",") if x]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1")
    write = args.write_config is not None
    if draws:
        if args.task != "compositional" or len(set(draws)) < 2:
            ap.error(f"--seeds {args.seeds!r}: at least 2 distinct pair draws, compositional task only")
        run_tune_draws(out, grid, draws, budget=args.budget, base_model=args.base_model, write_config=write,
                       config_path=args.write_config or None, **overrides)
    else:
        run_tune(out, grid, budget=args.budget, seed=args.seed, base_model=args.base_model, write_config=write,
                 config_path=args.write_config or None, **overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
