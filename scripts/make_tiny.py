"""Write a complete tiny RANDOM-INIT model folder in the real layout (tests, plumbing, the world's scaffolding).

    python scripts/make_tiny.py --arch sd15-sg|sdxl-sg|sd15|sdxl OUT
"""
from __future__ import annotations

import argparse

from sgalign.pipelines.tiny import ARCHS, make_tiny


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, choices=ARCHS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sg-mode", default="object", choices=("object", "faithful"),
                    help="SG-encoder graph mode for -sg archs (default: object, the corrected graph)")
    ap.add_argument("out", help="output folder (created; must be empty or absent)")
    args = ap.parse_args(argv)
    out = make_tiny(args.arch, args.out, seed=args.seed, sg_mode=args.sg_mode)
    print(f"wrote tiny random-init {args.arch} to {out}")


if __name__ == "__main__":
    main()
