"""build_pairs throughput (candidates per second, batched vs one image at a time) and the world check.

    python scripts/bench_build_pairs.py [--model FOLDER] [--n 8] [--batch 4] [--steps 25] [--repeats 3]
    python scripts/bench_build_pairs.py --check-world [--n 200] [--out runs/bench_build_pairs_world]

Throughput (benchmark, not a test): the first ``--n`` world train annotations, K = 4 candidates each, DDIM
``--steps`` steps, guidance 3.0, world reward, one torch thread; the same candidates produced twice in one run:
*batched* (``CandidateBuilder``: ``--batch`` annotations x K seeds per pipeline call, one reward call per batch) and
*one image at a time* (one pipeline call and one reward call per candidate, the same seeds). Both include PNG
encoding and scoring; generation-only times are reported too, and the largest pixel difference between the two
(batching changes float summation order, not the images). Model: the world SD1.5-SG when it exists, else a tiny
RANDOM-INIT SD1.5-SG (16x16 images; labelled in the output).

World check (``--check-world``, needs the world SD1.5-SG): ``build_pairs --source shapes`` for ``--n`` annotations
(world defaults: K = 4, 25 steps, guidance 3.0) into ``--out`` (resumable), then every candidate is parsed by the
world oracle (``GraphParserExtractor``, phrase granularity) and scored with SG-IoU against its graph
(``sgalign.evaluation.sg_iou_scores``, normalized mode; label granularity reported too). Reports Spearman rho
between combined reward and SG-IoU over all candidates, the within-annotation rho (both centred per annotation),
and the share of same-annotation candidate pairs with different SG-IoU whose reward orders them the same way.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_builders.config import WORLD_MODEL, BuildPairsConfig  # noqa: E402
from data_builders.laion_sg import CandidateBuilder, png_bytes, build_candidates, candidate_seed  # noqa: E402
from data_builders.scoring import build_reward, score_batch  # noqa: E402
from sgalign.machine import machine_line  # noqa: E402



def model_folder(arg: str | None, tmp: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    if (WORLD_MODEL / "model_index.json").is_file():
        return WORLD_MODEL, "world SD1.5-SG"
    from sgalign.pipelines.tiny import make_tiny
    return make_tiny("sd15-sg", tmp / "tiny", gate_init=0.5), "tiny RANDOM-INIT SD1.5-SG (world model not built yet)"


def model_state(folder: Path) -> dict:
    """What the folder says about itself: random-init flag, training steps and completeness when recorded."""
    from sgalign.hashing import is_random_init, model_index, read_record

    r = read_record(folder) or {}
    return {"random_init": is_random_init(model_index(folder)), "steps": r.get("steps"),
            "planned_steps": r.get("planned_steps"), "complete": r.get("complete")}


def throughput(args) -> dict:
    from data_builders.shapes import plan_world
    from sgalign.scene_graph import SceneGraph

    tmp = Path(tempfile.mkdtemp(prefix="bench_build_pairs_"))
    folder, kind = model_folder(args.model, tmp)
    sets = {"model": {"path": str(folder)}, "world": {"n": args.n},
            "generation": {"num_inference_steps": args.steps, "annotations_per_call": args.batch}}
    if "tiny" in kind:
        sets["generation"].update(height=16, width=16)
    cfg = BuildPairsConfig.model_validate(sets)
    recs = plan_world(cfg.world).records
    b = CandidateBuilder(cfg)
    g, k = cfg.generation, cfg.generation.k
    b.rows(recs[:1])  # warm-up (first-call allocations)
    b.reward = build_reward(cfg.rewards)  # fresh: the world reward caches oracle parses by pixel content

    def batched_pass():
        b.reward = build_reward(cfg.rewards)  # fresh each pass: the world reward caches oracle parses by pixels
        t0, rows, t_gen = time.perf_counter(), [], 0.0
        for s in range(0, len(recs), args.batch):
            r, fails = b.rows(recs[s:s + args.batch])
            assert not fails, fails
            rows += r
        t_all = time.perf_counter() - t0
        for s in range(0, len(recs), args.batch):  # generation alone, same calls
            part = recs[s:s + args.batch]
            t1 = time.perf_counter()
            b.generate(part, [[candidate_seed(g.seed, r.img_id, j) for j in range(k)] for r in part])
            t_gen += time.perf_counter() - t1
        return t_all, t_gen, [c for row in rows for c in row["candidates"]], [x for row in rows for x in row["reward"]]

    def single_pass():
        b.reward = build_reward(cfg.rewards)
        t0, out, t_gen = time.perf_counter(), [], 0.0
        for r in recs:
            graph = SceneGraph.from_record(r)
            for j in range(k):
                t1 = time.perf_counter()
                gen = torch.Generator().manual_seed(candidate_seed(g.seed, r.img_id, j))
                im = b.pipe([graph], num_images_per_graph=1, generator=[gen], num_inference_steps=g.num_inference_steps,
                            guidance_scale=g.guidance_scale, eta=g.eta, height=g.height, width=g.width).images
                t_gen += time.perf_counter() - t1
                scored, _ = score_batch(b.reward, im, [graph])
                out.append((png_bytes(im[0]), scored[0][1]))
        return time.perf_counter() - t0, t_gen, [c for c, _ in out], [x for _, x in out]

    runs = {"batched": [], "one_at_a_time": []}
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both modes alike
        runs["batched"].append(batched_pass())
        runs["one_at_a_time"].append(single_pass())
    med = {m: (float(np.median([x[0] for x in v])), float(np.median([x[1] for x in v]))) for m, v in runs.items()}
    t_batched, t_gen_batched = med["batched"]
    t_single, t_gen_single = med["one_at_a_time"]
    batched_png, batched_r = runs["batched"][0][2], runs["batched"][0][3]
    single_png, single_r = runs["one_at_a_time"][0][2], runs["one_at_a_time"][0][3]

    import io

    from PIL import Image
    a = np.stack([np.asarray(Image.open(io.BytesIO(c))) for c in batched_png]).astype(int)
    s_ = np.stack([np.asarray(Image.open(io.BytesIO(c))) for c in single_png]).astype(int)
    n = len(recs) * k
    return {"model": kind, "model_folder": folder.name, "model_state": model_state(folder),
            "annotations": len(recs), "k": k, "candidates": n,
            "steps": g.num_inference_steps, "guidance": g.guidance_scale, "batch_annotations": args.batch,
            "image_size": list(Image.open(io.BytesIO(batched_png[0])).size), "repeats (median)": args.repeats,
            "all_seconds": {m: [round(x[0], 3) for x in v] for m, v in runs.items()},
            "batched": {"seconds": t_batched, "cand_per_s": n / t_batched, "gen_seconds": t_gen_batched},
            "one_at_a_time": {"seconds": t_single, "cand_per_s": n / t_single, "gen_seconds": t_gen_single},
            "speedup": t_single / t_batched, "gen_speedup": t_gen_single / t_gen_batched,
            "max_pixel_diff": int(np.abs(a - s_).max()),
            "max_reward_diff": float(max(abs(x - y) for x, y in zip(batched_r, single_r)))}


def check_world(args) -> dict:
    from scipy.stats import spearmanr

    from data_builders.laion_sg import load_candidates
    from data_builders.shapes import plan_world
    from sgalign.evaluation import GraphParserExtractor, sg_iou_scores
    from sgalign.scene_graph import LaionSGRecord, SceneGraph
    from sgalign.training.data import decode_image
    from sgalign.world import WorldOracle

    if not args.model and not (WORLD_MODEL / "model_index.json").is_file():
        raise SystemExit("--check-world needs the world SD1.5-SG (sgalign/world/weights/world-sd15-sg/); not built "
                         "yet (or pass --model)")
    sets = {"world": {"n": args.n}, "torch_threads": torch.get_num_threads()}
    if args.model:
        sets["model"] = {"path": args.model}
    cfg = BuildPairsConfig.model_validate(sets)
    t0 = time.perf_counter()
    summary = build_candidates(plan_world(cfg.world), cfg, args.out, rank=0, world_size=1)
    build_s = time.perf_counter() - t0
    ds = load_candidates(args.out)
    oracle = WorldOracle()
    ex = GraphParserExtractor(oracle, granularity="phrase")
    ex_label = GraphParserExtractor(oracle, granularity="label")
    rewards, ious, ent, ious_label, groups = [], [], [], [], []
    for i, row in enumerate(ds):
        gt = SceneGraph.from_record(LaionSGRecord.model_validate_json(row["annotation"]))
        for png, r in zip(row["candidates"], row["reward"]):
            im = decode_image(png)
            sc = sg_iou_scores(gt, ex.extract(im, gt), granularity="phrase")
            ious.append(sc.sg_iou)
            ent.append(sc.entity_iou)
            ious_label.append(sg_iou_scores(gt, ex_label.extract(im, gt), granularity="label").sg_iou)
            rewards.append(r)
            groups.append(i)
    rw, io_, gr = map(np.asarray, (rewards, ious, groups))
    rho = spearmanr(rw, io_).statistic
    cen = lambda x: x - np.array([x[gr == g].mean() for g in gr])  # noqa: E731
    rho_within = spearmanr(cen(rw), cen(io_)).statistic
    agree = tot = 0
    for g in np.unique(gr):
        idx = np.flatnonzero(gr == g)
        for a in range(len(idx)):
            for b_ in range(a + 1, len(idx)):
                d = io_[idx[a]] - io_[idx[b_]]
                if d != 0:
                    tot += 1
                    agree += np.sign(d) == np.sign(rw[idx[a]] - rw[idx[b_]])
    folder = Path(args.model) if args.model else WORLD_MODEL
    return {"model_folder": folder.name, "model_state": model_state(folder),
            "annotations": len(ds), "candidates": len(rw), "spearman_rho": float(rho),
            "spearman_rho_within_annotation": float(rho_within), "pairs_with_different_sg_iou": tot,
            "pair_agreement": float(agree / tot) if tot else None, "mean_sg_iou": float(io_.mean()),
            "entity_iou": {"spearman_rho": float(spearmanr(rw, ent).statistic), "mean": float(np.mean(ent))},
            "label_granularity": {"spearman_rho": float(spearmanr(rw, ious_label).statistic),
                                  "mean_sg_iou": float(np.mean(ious_label))},
            "mean_reward": float(rw.mean()), "build_seconds": build_s,
            "share_pairs_above_margin": summary["pairs"]["share_above_margin"] if summary else None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=None, help="annotations (default 8; --check-world 200)")
    ap.add_argument("--batch", type=int, default=4, help="annotations per pipeline call (batched mode)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="throughput: interleaved repeats, median reported")
    ap.add_argument("--check-world", action="store_true")
    ap.add_argument("--out", default="runs/bench_build_pairs_world")
    args = ap.parse_args(argv)
    args.n = args.n or (200 if args.check_world else 8)
    torch.set_num_threads(args.threads)
    cmd = "python scripts/bench_build_pairs.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    res = check_world(args) if args.check_world else throughput(args)
    res.update(command=cmd, machine=machine_line())
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
