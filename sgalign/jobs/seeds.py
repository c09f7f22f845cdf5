"""One table over several training seeds of the world job (compositional task).

Each seed is a finished job folder (``run_world_job(..., seed=s)``) whose evaluations score the same graphs and
noise seeds (``specs.EVAL_GRAPHS_SEED``), so the base's images are identical across folders and every method's
Δ vs the base is paired image by image. Pooled Δ: per graph, the mean over training seeds and noise seeds of
(method − base); the interval resamples graphs (the independent unit), so it covers evaluation noise on the
graphs drawn, while the per-seed columns and their spread show what a different training seed does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..evaluation.sampling import check_same_noise
from ..evaluation.stats import bootstrap_ci
from .specs import METRICS

KEY = "phrase/normalized"


def per_image(res: dict[str, Any], role: str, metric: str, key: str) -> np.ndarray:
    """One IoU metric per image of a results.json role ("model" / "baseline"), image g*K + k."""
    return np.array([r[metric] for r in res["metrics"]["iou"][role][key]["per_image"]], dtype=np.float64)


def _n_seeds(res: dict[str, Any]) -> int:
    return len(res["protocol"]["sampling"]["seeds"])


def graph_deltas(model: np.ndarray, base: np.ndarray, n_seeds: int) -> np.ndarray:
    """Per graph: the mean over its noise seeds of (model − base), from per-image values (image g*K + k)."""
    return np.nanmean((model - base).reshape(-1, n_seeds), axis=1)


def pooled_ci(deltas: Sequence[np.ndarray], n_resamples: int = 1000, seed: int = 0,
              unit: str = "graph (all training and noise seeds)") -> dict[str, Any]:
    """Pooled Δ over training runs scored on the same graphs: per graph, the mean of the runs' ``graph_deltas``;
    the 95 % interval resamples graphs, so each graph carries all its runs and seeds."""
    graphs = np.mean(np.stack(deltas), axis=0)
    return bootstrap_ci(graphs, n_resamples=n_resamples, seed=seed, unit=unit).to_dict()


def seeds_table(job_dirs: Sequence[str | Path], methods: Sequence[str], key: str = KEY, n_resamples: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """Per method: per-seed Δ (metric and interval as the job computed them), the pooled Δ with a graph-resampled
    interval, the spread across seeds, FID per seed, and each seed's training diagnostics (implicit accuracy, weight
    drift). Raises ValueError when folders did not score the same images for the base."""
    dirs = [Path(d) for d in job_dirs]
    jobs = [json.loads((d / "job.json").read_text()) for d in dirs]
    out: dict[str, Any] = {"key": key, "jobs": [str(d) for d in dirs], "seeds": [j["seed"] for j in jobs],
                           "budget": jobs[0]["budget"], "methods": {}}
    base0 = first = None
    for method in methods:
        per_seed, deltas = [], {m: [] for m, _ in METRICS}
        for d, job in zip(dirs, jobs):
            res = json.loads((d / "eval" / method / "results.json").read_text())
            first = res if first is None else first
            check_same_noise({f"{dirs[0]}": first, f"{d / 'eval' / method}": res})
            base = {m: per_image(res, "baseline", m, key) for m, _ in METRICS}
            if base0 is None:
                base0 = base
            elif any(not np.array_equal(base[m], base0[m], equal_nan=True) for m in base):
                raise ValueError(f"{d}: its base scores differ from {dirs[0]}'s; the folders did not evaluate the same "
                                 "graphs and seeds (rerun them with one budget)")
            for m, _ in METRICS:
                deltas[m].append(graph_deltas(per_image(res, "model", m, key), base[m], _n_seeds(res)))
            summary = json.loads((d / "train" / method / "summary.json").read_text())
            fid = res["metrics"]["fid"]
            per_seed.append({"seed": job["seed"],
                             "delta": {m: res["metrics"]["vs_baseline"][key][m] for m, _ in METRICS},
                             "fid": fid["model"]["fid"], "fid_base": fid["baseline"]["fid"],
                             "fid_p_value": fid.get("vs_baseline", {}).get("p_value"),
                             "implicit_acc": summary.get("implicit_acc"), "weight_drift": summary.get("weight_drift"),
                             "train_s": summary.get("seconds")})
        pooled = {}
        for m, _ in METRICS:
            est = [s["delta"][m]["estimate"] for s in per_seed]
            pooled[m] = {**pooled_ci(deltas[m], n_resamples, seed), "seed_spread": float(max(est) - min(est)),
                         "seed_sd": float(np.std(est, ddof=1)) if len(est) > 1 else None}
        out["methods"][method] = {"per_seed": per_seed, "pooled": pooled,
                                  "fid_mean": float(np.mean([s["fid"] for s in per_seed])),
                                  "fid_base": per_seed[0]["fid_base"]}
    return out


def _d(ci: dict[str, Any]) -> str:
    star = " *" if ci["low"] > 0 or ci["high"] < 0 else ""
    return f"{ci['estimate']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]{star}"


def seeds_markdown(t: dict[str, Any]) -> str:
    """The pooled table (one row per method) and the per-seed table (one row per method and seed)."""
    b = t["budget"]
    n_seeds = len(t["seeds"])
    lines = [f"Training seeds {t['seeds']}; {b['eval_graphs']} world {b['eval_split']} graphs x noise seeds "
             f"{b['eval_seeds']} per model, the same for every seed; IoU `{t['key']}`. Pooled Δ: per graph, the mean "
             f"over the {n_seeds} training seeds and the noise seeds of (method − base); 95 % interval resampling "
             "graphs; `*` = it excludes 0. spread = max − min of the per-seed Δ.", "",
             "| method | Δ SG-IoU | Δ Entity-IoU | Δ Relation-IoU | SG-IoU spread | FID (base "
             f"{next(iter(t['methods'].values()))['fid_base']:.2f}) |", "|---|---|---|---|---|---|"]
    for name, r in t["methods"].items():
        p = r["pooled"]
        lines.append(f"| {name} | {_d(p['sg_iou'])} | {_d(p['entity_iou'])} | {_d(p['relation_iou'])} | "
                     f"{p['sg_iou']['seed_spread']:.3f} | {r['fid_mean']:.2f} |")
    lines += ["", "| method | seed | Δ SG-IoU | Δ Entity-IoU | FID | FID p (paired permutation) | implicit acc | "
              "weight drift | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in t["methods"].items():
        for s in r["per_seed"]:
            drift = "n/a" if s["weight_drift"] is None else f"{s['weight_drift']:.2e}"
            p = "n/a" if s["fid_p_value"] is None else f"{s['fid_p_value']:.3f}"
            lines.append(f"| {name} | {s['seed']} | {_d(s['delta']['sg_iou'])} | {_d(s['delta']['entity_iou'])} | "
                         f"{s['fid']:.2f} | {p} | {s['implicit_acc']:.3f} | {drift} | {s['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def write_seeds_table(out: str | Path, job_dirs: Sequence[str | Path], methods: Sequence[str],
                      key: str = KEY) -> dict[str, Path]:
    """``OUT/seeds_table.json`` and ``OUT/seeds_table.md`` over the given seed folders."""
    t = seeds_table(job_dirs, methods, key)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds_table.json").write_text(json.dumps(t, indent=2) + "\n")
    (out / "seeds_table.md").write_text("# World results over training seeds\n\n" + seeds_markdown(t))
    return {"json": out / "seeds_table.json", "markdown": out / "seeds_table.md"}
