#!/usr/bin/env python
"""The README's main job (sgalign.jobs.demo): smoke checks, then the shapes-world job at the demo budget -- build pairs
-> train Diffusion-DPO and SmPO -> evaluate vs the world base model -> results table and reports. Ends by printing
where the report is. Rerun to resume (finished stages are skipped).

    python scripts/demo.py [--out runs/world-demo] [--budget demo] [--smoke-only]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgalign.jobs.demo import run_demo, run_smoke  # noqa: E402
from sgalign.jobs.specs import BUDGETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/world-demo", help="job folder (resumed when it exists)")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="demo",
                    help="demo (default); micro = a seconds-long plumbing run (tests)")
    ap.add_argument("--base-model", default=None, help="base SG model folder (default: the world SD1.5-SG)")
    ap.add_argument("--smoke-only", action="store_true", help="only the cheap smoke checks")
    args = ap.parse_args(argv)
    if args.smoke_only:
        run_smoke()
        return 0
    run_demo(args.out, budget=args.budget, base_model=args.base_model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
