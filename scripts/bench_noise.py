"""Spread of an evaluation's mean over repetitions with other noise, shared vs per-graph noise (issue 27).

    python scripts/bench_noise.py [--model sgalign/world/weights/world-sd15-sg] [--n-graphs 128] [--reps 8] [--k 2]

Writes OUT/noise_spread.json and prints the table docs/RESULTS.md holds ("Independent noise per graph").
Library: ``sgalign.jobs.noise_spread``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sgalign.jobs.noise_spread import noise_spread, spread_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "sgalign" / "world" / "weights" / "world-sd15-sg"))
    ap.add_argument("--n-graphs", type=int, default=128)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--k", type=int, default=2, help="noise seeds per graph in one repetition")
    ap.add_argument("--split", default="test", choices=("test", "validation"))
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance (default: the model folder's, model_index.json)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/bench_noise")
    a = ap.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    res = noise_spread(a.model, n_graphs=a.n_graphs, reps=a.reps, k=a.k, split=a.split, steps=a.steps,
                       guidance=a.guidance)
    res["command"] = "python scripts/bench_noise.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise_spread.json").write_text(json.dumps(res, indent=1) + "\n")
    print(spread_table(res))
    print(f"done in {res['seconds']:.0f}s: {out / 'noise_spread.json'}")
    print(f"next: python scripts/evaluate.py --task compositional  # every evaluation now draws per-graph noise")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
