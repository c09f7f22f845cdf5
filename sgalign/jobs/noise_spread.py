"""How much does the choice of noise move an evaluation's mean, and do its intervals say so? (issue 27)

``noise_spread(model, ...)`` evaluates one model on the same world graphs ``reps`` times, each repetition with other
noise seeds (repetition r: seeds ``[r*K, ..., r*K + K-1]``), once under each noise rule (``diffusion.noise``):

* ``shared``: seed k is the same initial noise for every graph (the rule before results version 3);
* ``per-graph``: image k of graph g has its own noise, hashed from the graph and seed k.

Per rule it reports the spread (standard deviation) of the repetitions' mean Entity-IoU / SG-IoU / spatial hold
rate, against the standard error the graph-resampling bootstrap claims for one repetition (its 95 % interval
width / 3.92). A rule whose repetitions spread more than their intervals claim makes intervals that are too narrow:
the graphs of one repetition are not independent units.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import GraphParserExtractor, evaluate_sg_iou
from ..evaluation.protocol import EvalProtocol
from ..evaluation.sampling import configure_sampling, generate, load_evaluated_model, load_inputs
from ..evaluation.sg_iou import spatial_hold, triple_counts
from ..machine import machine_info
from ..world import WorldOracle

RULES = ("shared", "per-graph")
FIGURES = ("entity_iou", "sg_iou", "spatial_hold")


def noise_spread(model: str | Path, *, n_graphs: int = 128, reps: int = 8, k: int = 2, split: str = "test",
                 steps: int = 25, guidance: float | None = None, n_resamples: int = 1000,
                 log=print) -> dict[str, Any]:
    """Every repetition's means and claimed intervals under both rules, and the spread summary (module docstring)."""
    base = EvalProtocol.model_validate({
        "sampling": {"steps": steps, "guidance_scale": guidance, "seeds": list(range(k))},
        "inputs": {"source": "world", "split": split, "n": n_graphs, "seed": 0},
        "compositional": {"granularities": ["phrase"], "fid": False}, "stats": {"n_resamples": n_resamples}})
    loaded = load_evaluated_model(model, "compositional")
    used = configure_sampling(loaded.pipe, base)
    inputs = load_inputs(base)
    per_gt = [g for g in inputs.graphs for _ in range(k)]
    groups = [g for g in range(len(inputs.graphs)) for _ in range(k)]
    extractor = GraphParserExtractor(WorldOracle(), granularity="phrase")
    runs: dict[str, list[dict[str, Any]]] = {rule: [] for rule in RULES}
    t0 = time.time()
    for r in range(reps):
        seeds = list(range(r * k, (r + 1) * k))
        for rule in RULES:
            protocol = base.model_copy(update={"sampling": base.sampling.model_copy(
                update={"seeds": seeds, "noise": rule})})
            images = generate(loaded.pipe, inputs.graphs, protocol, used["guidance_scale"], inputs.noise_keys)
            preds = [extractor.extract(im, reference=g) for im, g in zip(images, per_gt)]
            rep = evaluate_sg_iou(per_gt, preds, mode="normalized", granularity="phrase", n_resamples=n_resamples,
                                  seed=0, groups=groups)
            sp = spatial_hold(triple_counts(per_gt, preds)["spatial"], groups=groups, n_resamples=n_resamples)
            row = {"seeds": seeds, **{m: {"mean": float(rep.mean[m]), "ci_width": rep.ci[m].high - rep.ci[m].low}
                                      for m in ("entity_iou", "sg_iou")}}
            hold = sp["holds_given_found"]
            row["spatial_hold"] = {"mean": hold["estimate"], "ci_width": hold["high"] - hold["low"]} if hold else None
            runs[rule].append(row)
            log(f"rep {r + 1}/{reps} {rule:9s} seeds {seeds}: Entity-IoU {row['entity_iou']['mean']:.3f} "
                f"SG-IoU {row['sg_iou']['mean']:.3f} spatial {hold['estimate'] if hold else float('nan'):.3f} "
                f"({time.time() - t0:.0f}s)")
    summary = {}
    for rule in RULES:
        summary[rule] = {}
        for m in FIGURES:
            vals = [x[m] for x in runs[rule] if x[m] is not None]
            means = np.array([v["mean"] for v in vals])
            claimed = float(np.mean([v["ci_width"] for v in vals]) / 3.92)  # the bootstrap's standard error
            seen = float(means.std(ddof=1))
            summary[rule][m] = {"mean_of_means": float(means.mean()), "sd_over_reps": seen,
                                "range": [float(means.min()), float(means.max())], "claimed_se": claimed,
                                "sd_over_claimed_se": seen / claimed if claimed else None, "reps": len(vals)}
    return {"model": Path(model).name, "model_sha256": loaded.info["sha256"], "n_graphs": n_graphs,
            "split": split, "reps": reps, "seeds_per_rep": k, "steps": steps, "sampling": used,
            "n_resamples": n_resamples, "runs": runs, "summary": summary, "seconds": round(time.time() - t0, 1),
            "machine": machine_info()}


def spread_table(res: dict[str, Any]) -> str:
    """Markdown: per rule and figure, the mean of the repetitions' means, their SD, the claimed SE and the ratio."""
    lines = ["| noise rule | figure | mean over reps | SD over reps | claimed SE (CI width / 3.92) | SD / claimed SE "
             "| min - max |", "|---|---|---|---|---|---|---|"]
    for rule, figs in res["summary"].items():
        for m, v in figs.items():
            lines.append(f"| {rule} | {m} | {v['mean_of_means']:.3f} | {v['sd_over_reps']:.4f} | "
                         f"{v['claimed_se']:.4f} | {v['sd_over_claimed_se']:.2f} | "
                         f"{v['range'][0]:.3f} - {v['range'][1]:.3f} |")
    return "\n".join(lines)
