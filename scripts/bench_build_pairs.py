"""build_pairs throughput (candidates per second, batched vs one image at a time) and the world check.

    python scripts/bench_build_pairs.py [--model FOLDER] [--n 8] [--batch 4] [--steps 25] [--repeats 3] [--only MODE]
    python scripts/bench_build_pairs.py --check-world [--n 200] [--out runs/bench_build_pairs_world]
    python scripts/bench_build_pairs.py --check-world --pairs runs/world-demo/pairs     # a dataset already built

Throughput (benchmark, not a test): the first ``--n`` world train annotations, K = 4 candidates each, DDIM
``--steps`` steps, guidance 3.0, world reward, one torch thread; the same candidates built twice per repeat, the two
passes interleaved (order alternating) in one process: *batched* (``CandidateBuilder.rows``: ``--batch``
annotations x K seeds per pipeline call, one reward call per batch) and *one at a time* (``rows(...,
batched=False)``: one pipeline call and one reward call per candidate, the same seeds). Both include PNG encoding
and row assembly. Reported: process CPU seconds per pass and per stage (generation, scoring, rest) and wall
seconds, medians over ``--repeats``; the speed-ups are medians of the per-repeat ratios (CPU time is the figure
to quote on a shared machine); and how far the two builds differ (pixels, every score column; batching changes
float summation order only). ``--only MODE`` runs one mode (to time the two as whole processes). Model: the world
SD1.5-SG when it exists, else a tiny RANDOM-INIT SD1.5-SG (16x16 images; labelled in the output).

World check (``--check-world``, needs the world SD1.5-SG): ``build_pairs --source shapes`` for ``--n`` annotations
(world defaults: K = 4, 25 steps, guidance 3.0) into ``--out`` (resumable), then every candidate is parsed by the
world oracle (``GraphParserExtractor``, phrase granularity) and scored with SG-IoU against its graph
(``sgalign.evaluation.sg_iou_scores``, normalized mode; label granularity reported too). Reports Spearman rho
between combined reward and SG-IoU over all candidates, the within-annotation rho (both centred per annotation),
and the share of same-annotation candidate pairs with different SG-IoU whose reward orders them the same way, and
the mean SG-IoU of each graph's best and worst candidate by reward beside all candidates and the oracle's best of K
(what selecting by the reward is worth). ``--pairs DIR`` scores an existing candidates dataset instead of building.
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
from data_builders.laion_sg import CandidateBuilder, build_candidates  # noqa: E402
from data_builders.scoring import build_reward  # noqa: E402
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
    stage: dict[str, float] = {}

    def timed(name, fn):  # process CPU seconds per stage: wall time on a shared machine measures the neighbours
        def run(*a, **kw):
            t = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                stage[name] = stage.get(name, 0.0) + time.process_time() - t
        return run

    b.generate, b._score = timed("generation", b.generate), timed("scoring", b._score)

    def one_pass(batched: bool) -> dict:
        b.reward = build_reward(cfg.rewards)  # fresh each pass: the world reward caches oracle parses by pixels
        stage.clear()
        w0, c0, rows = time.perf_counter(), time.process_time(), []
        for s in range(0, len(recs), args.batch):
            r, fails = b.rows(recs[s:s + args.batch], batched=batched)
            assert not fails, fails
            rows += r
        cpu = time.process_time() - c0
        return {"wall": time.perf_counter() - w0, "cpu": cpu, "cpu_generation": stage["generation"],
                "cpu_scoring": stage["scoring"], "cpu_rest": cpu - stage["generation"] - stage["scoring"],
                "rows": rows}

    modes = {"batched": True, "one_at_a_time": False}
    if args.only:
        modes = {args.only.replace("-", "_"): args.only == "batched"}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for i in range(args.repeats):  # interleaved, the order alternating, so load changes hit both modes alike
        for m in (list(modes) if i % 2 == 0 else list(modes)[::-1]):
            runs[m].append(one_pass(modes[m]))
    n = len(recs) * k
    med = {m: {f: float(np.median([r[f] for r in v])) for f in ("wall", "cpu", "cpu_generation", "cpu_scoring",
                                                                    "cpu_rest")} for m, v in runs.items()}
    out = {"model": kind, "model_folder": folder.name, "model_state": model_state(folder),
           "annotations": len(recs), "k": k, "candidates": n, "steps": g.num_inference_steps,
           "guidance": g.guidance_scale, "batch_annotations": args.batch, "repeats (median)": args.repeats,
           "seconds_per_pass": {m: [{f: round(r[f], 3) for f in ("wall", "cpu")} for r in v]
                                for m, v in runs.items()},
           **{m: {**{f: round(x, 3) for f, x in d.items()}, "cand_per_cpu_s": n / d["cpu"]} for m, d in med.items()}}
    if len(modes) == 2:
        bt, ot = runs["batched"], runs["one_at_a_time"]
        paired = lambda f: float(np.median([o[f] / b_[f] for o, b_ in zip(ot, bt)]))  # noqa: E731
        out.update(speedup_cpu=paired("cpu"), speedup_wall=paired("wall"),
                   speedup_generation_cpu=paired("cpu_generation"), speedup_scoring_cpu=paired("cpu_scoring"),
                   **same_outputs(bt[0]["rows"], ot[0]["rows"]))
    return out


def same_outputs(rows_a: list[dict], rows_b: list[dict]) -> dict:
    """How far two builds of the same annotations differ: largest pixel and score differences (batching changes
    float summation order only)."""
    import io

    from PIL import Image

    px = lambda rows: np.stack([np.asarray(Image.open(io.BytesIO(c))) for r in rows  # noqa: E731
                                for c in r["candidates"]]).astype(int)
    a, b = px(rows_a), px(rows_b)
    flat = lambda rows, c: [x for r in rows for x in r["scores"][c]]  # noqa: E731
    diffs = {c: max((abs(x - y) for x, y in zip(flat(rows_a, c), flat(rows_b, c)) if x is not None), default=0.0)
             for c in rows_a[0]["scores"]}
    rw = [abs(x - y) for ra, rb in zip(rows_a, rows_b) for x, y in zip(ra["reward"], rb["reward"])]
    return {"image_size": list(a.shape[1:3]), "max_pixel_diff": int(np.abs(a - b).max()),
            "max_reward_diff": float(max(rw)), "max_score_diff": diffs}


def check_world(args) -> dict:
    from data_builders.shapes import plan_world

    if args.pairs:  # score a dataset already built (e.g. a world job's pairs/) instead of building one
        return score_candidates(args, Path(args.pairs), None, None)
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
    return score_candidates(args, Path(args.out), summary, build_s)


def score_candidates(args, folder: Path, summary: dict | None, build_s: float | None) -> dict:
    """Reward vs the oracle's phrase SG-IoU of every candidate of a candidates dataset (``--check-world``)."""
    from scipy.stats import spearmanr

    from data_builders.laion_sg import load_candidates
    from sgalign.evaluation import GraphParserExtractor, sg_iou_scores
    from sgalign.evaluation.extractors import ParsedImages
    from sgalign.scene_graph import LaionSGRecord, SceneGraph
    from sgalign.pair_schema import decode_image
    from sgalign.world import WorldOracle

    images, gts, rewards, groups = [], [], [], []
    for i, row in enumerate(load_candidates(folder)):
        gt = SceneGraph.from_record(LaionSGRecord.model_validate_json(row["annotation"]))
        for png, r in zip(row["candidates"], row["reward"]):
            images.append(decode_image(png))
            gts.append(gt)
            rewards.append(r)
            groups.append(i)
    parsed = ParsedImages(WorldOracle(), np.stack(images))  # one oracle pass, read at both granularities
    by_phrase, by_label = (GraphParserExtractor(parsed, granularity=g) for g in ("phrase", "label"))
    phrase = [sg_iou_scores(g, by_phrase.extract(k, g), granularity="phrase") for k, g in enumerate(gts)]
    ious, ent = [sc.sg_iou for sc in phrase], [sc.entity_iou for sc in phrase]
    ious_label = [sg_iou_scores(g, by_label.extract(k, g), granularity="label").sg_iou for k, g in enumerate(gts)]
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
    # what selecting by the reward is worth: the SG-IoU of each graph's best / worst candidate by reward, against
    # all candidates and the oracle's own best of K (the headroom a method trained on these pairs could reach)
    by = [np.flatnonzero(gr == g) for g in np.unique(gr)]
    selection = {"all": float(io_.mean()),
                 "best_by_reward": float(np.mean([io_[i[np.argmax(rw[i])]] for i in by])),
                 "worst_by_reward": float(np.mean([io_[i[np.argmin(rw[i])]] for i in by])),
                 "oracle_best_of_k": float(np.mean([io_[i].max() for i in by]))}
    model = Path(args.model) if args.model else (None if args.pairs else WORLD_MODEL)
    return {"pairs": str(folder) if args.pairs else None,
            "model_folder": model.name if model else None, "model_state": model_state(model) if model else None,
            "phrase_sg_iou_by_selection": selection,
            "annotations": int(gr.max()) + 1, "candidates": len(rw), "spearman_rho": float(rho),
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
    ap.add_argument("--only", choices=("batched", "one-at-a-time"), default=None,
                    help="throughput: run one mode only (to time the two as whole processes)")
    ap.add_argument("--check-world", action="store_true")
    ap.add_argument("--pairs", default=None, help="--check-world: score this candidates dataset (e.g. a world job's "
                    "pairs/) instead of building one")
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
