"""Pretrain the SG encoder (optionally with the UNet) with the diffusion loss, as LAION-SG trains SDXL-SG.

    python scripts/pretrain_sg.py --config configs/pretrain/world_sd15_sg.yaml [--set train.max_steps=100 ...]
    accelerate launch scripts/pretrain_sg.py --config configs/pretrain/sdxl_sg_laion.yaml

See ``sgalign.training.pretrain_sg`` for the loss, the LAION-SG bugs it fixes and the output folder.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from sgalign.config import load_config
from sgalign.training.pretrain_sg import PretrainConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (sections model, data, train)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-4")
    args = ap.parse_args(argv)
    cfg = load_config(PretrainConfig, args.config, args.set)
    from sgalign.jobs.pretrain_sg import run_pretrain_sg  # the world (scipy): after the arguments, as --help needs none
    command = "python scripts/pretrain_sg.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = run_pretrain_sg(cfg, command=command, log=lambda s: print(s, flush=True))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
