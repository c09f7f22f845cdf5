"""How often the world's rewards rank a render of the true graph above a render of a corrupted graph.

    python scripts/bench_world_rewards.py --n 500 --seed 0 [--similarity world-clip|oracle] [--threads 1]

Cases: ``sgalign.rewards.backends.world.corruption_cases`` (test-split scenes, corruption kinds wrong relation /
wrong colour / missing object in turn). Both renders are scored against the TRUE graph with
``sgalign.rewards.world_reward(similarity=...)`` (DPG-Bench + 3-in-1, Eq. 17; oracle VQA and detector; 3-in-1's C
= world-CLIP's cosine by default, or the oracle proposition score). A case is won when the true render scores
strictly higher (ties lose). Prints the machine, then per image condition (clean, and degraded as
``sgalign.world.robustness.degrade``: Gaussian blur sigma px, noise std 0..255, applied to both renders) one row per
corruption kind: win rates of the combined reward, its two components and 3-in-1's parts A, S, C (S and C only where
the graph's 3-in-1 type uses them; their case counts in brackets).

Then the C backend alone on the clean TRUE render of every case: how often the true graph's text scores strictly
higher than the corrupted graph's text (ties counted apart), for 3-in-1's C text (the serialised graph without
attributes, what the reward feeds C) and for the full serialised graph (world-CLIP's training text).
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from PIL import Image

from sgalign.machine import machine_info
from sgalign.rewards.backends.world import CORRUPTIONS, SIMILARITIES, corruption_cases, world_reward
from sgalign.rewards.compbench import strip_graph_attributes
from sgalign.world import render_array
from sgalign.world.robustness import degrade

CONDITIONS = [(0.0, 0.0), (1.5, 20.0), (2.0, 20.0), (2.5, 0.0)]
COLUMNS = ("reward", "dpg", "compbench_3in1", "A", "S", "C")


def machine() -> str:
    m = machine_info()
    return (f"{m['cpu']}, {m['logical_cores']} logical cores, {m['os']}, Python {m['python']}, numpy {np.__version__}, "
            f"torch {m['torch']} ({m['torch_threads']} thread(s), {m['device']})")


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
    ap.add_argument("--similarity", choices=SIMILARITIES, default="world-clip", help="3-in-1's C backend")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (world-CLIP); default: torch's")
    args = ap.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    cases, skipped = corruption_cases(args.n, seed=args.seed)
    graphs = [true.graph() for _, true, _ in cases]
    true_imgs = render_array([t for _, t, _ in cases])
    bad_imgs = render_array([c for _, _, c in cases])
    reward = world_reward(similarity=args.similarity)
    sim = reward.rewards[1].similarity
    print(f"C: {sim.info.name} ({sim.info.details.get('definition')})")
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
    c_alone(cases, sim, [Image.fromarray(a) for a in true_imgs])


def c_alone(cases, sim, images) -> None:
    """The C backend alone: true vs corrupted text on the same (clean, true) render."""
    print(f"\nC alone ({sim.info.name}), clean true render: true text > corrupted text (ties apart)\n")
    print("| text | corruption | n | true > corrupted | ties | mean C true | mean C corrupted |")
    print("|---|---|---|---|---|---|---|")
    for label, text in (("3-in-1 C text (no attributes)", lambda sc: strip_graph_attributes(sc.graph())),
                        ("full serialised graph", lambda sc: sc.graph().serialize().strip())):
        good = np.array(sim.similarity(images, [text(t) for _, t, _ in cases]))
        bad = np.array(sim.similarity(images, [text(c) for _, _, c in cases]))
        kinds = np.array([k for k, _, _ in cases])
        for kind in (*CORRUPTIONS, "all"):
            m = np.ones(len(cases), bool) if kind == "all" else kinds == kind
            print(f"| {label} | {kind} | {m.sum()} | {100 * np.mean(good[m] > bad[m]):.1f} % | "
                  f"{100 * np.mean(good[m] == bad[m]):.1f} % | {good[m].mean():.3f} | {bad[m].mean():.3f} |")


if __name__ == "__main__":
    main()
