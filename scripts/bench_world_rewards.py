"""How often the world's rewards rank a render of the true graph above a render of a corrupted graph.

    python scripts/bench_world_rewards.py --n 500 --seed 0

Cases: ``sgalign.rewards.backends.world.corruption_cases`` (test-split scenes, corruption kinds wrong relation /
wrong colour / missing object in turn). Both renders are scored against the TRUE graph with
``sgalign.rewards.world_reward()`` (DPG-Bench + 3-in-1, Eq. 17, world-oracle backends). A case is won when the true
render scores strictly higher (ties lose). Prints the machine, then per image condition (clean, and degraded as
``sgalign.world.robustness.degrade``: Gaussian blur sigma px, noise std 0..255, applied to both renders) one row per
corruption kind: win rates of the combined reward, its two components and 3-in-1's parts A, S, C (S and C only where
the graph's 3-in-1 type uses them; their case counts in brackets).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict

import numpy as np
from PIL import Image

from sgalign.machine import cpu_model
from sgalign.rewards.backends.world import CORRUPTIONS, corruption_cases, world_reward
from sgalign.world import render_array
from sgalign.world.robustness import degrade

CONDITIONS = [(0.0, 0.0), (1.5, 20.0), (2.0, 20.0), (2.5, 0.0)]
COLUMNS = ("reward", "dpg", "compbench_3in1", "A", "S", "C")


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}")


def win_table(cases, good, bad) -> dict[str, dict[str, list[bool]]]:
    wins: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for k, (kind, _, _) in enumerate(cases):
        g = {**good.scores[k], **{c: good.parts[k][f"compbench_3in1/{c}"] for c in "ASC"}}
        b = {**bad.scores[k], **{c: bad.parts[k][f"compbench_3in1/{c}"] for c in "ASC"}}
        for col in COLUMNS:
            if g[col] is None or b[col] is None:
                continue  # S / C not used by this graph's 3-in-1 type
            for key in (kind, "all"):
                wins[key][col].append(g[col] > b[col])
    return wins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    cases, skipped = corruption_cases(args.n, seed=args.seed)
    graphs = [true.graph() for _, true, _ in cases]
    true_imgs = render_array([t for _, t, _ in cases])
    bad_imgs = render_array([c for _, _, c in cases])
    reward = world_reward()
    print(f"{len(cases)} cases (seed {args.seed}; {skipped} scenes skipped: no spatial relation for 'relation'); "
          f"noise seeds 1000 + 2 x condition index (+1 for the corrupted renders)\n")
    print("| blur | noise | corruption | n | reward | dpg | compbench_3in1 | A | S | C | ms / case |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c, (blur, noise) in enumerate(CONDITIONS):
        gi = [Image.fromarray(a) for a in degrade(true_imgs, blur, noise, seed=1000 + 2 * c)]
        bi = [Image.fromarray(a) for a in degrade(bad_imgs, blur, noise, seed=1001 + 2 * c)]
        t = time.perf_counter()
        good, bad = reward(gi, graphs), reward(bi, graphs)
        ms = 1000 * (time.perf_counter() - t) / len(cases)  # both renders of a case
        wins = win_table(cases, good, bad)
        for kind in (*CORRUPTIONS, "all"):
            cells = []
            for col in COLUMNS:
                v = wins[kind][col]
                cell = f"{100 * np.mean(v):.1f} %" if v else "-"
                cells.append(cell if col not in ("S", "C") else f"{cell} ({len(v)})")
            print(f"| {blur:g} | {noise:g} | {kind} | {len(wins[kind]['reward'])} | {' | '.join(cells)} | "
                  f"{ms:.1f} |")


if __name__ == "__main__":
    main()
