"""The world job's results tables: rows collected from each method's evaluation and training summary, written as
``results_table.md`` / ``.json`` and ``index.html`` (compositional: IoU per granularity; t2i: per scorer), rendered
by the evaluation report's ``Document``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..evaluation.report import Document
from ..evaluation.sampling import check_same_noise
from ..hashing import write_text_atomic
from .specs import METRICS, split_method_id, trainer_method


def _fmt(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _ci(ci: dict[str, Any] | None, d: int = 3) -> str:
    if not ci:
        return "n/a"
    return f"{_fmt(ci['estimate'], d)} [{_fmt(ci['low'], d)}, {_fmt(ci['high'], d)}]"


def _delta(ci: dict[str, Any] | None, d: int = 4) -> str:
    if not ci:
        return "n/a"
    sign = "+" if ci["estimate"] >= 0 else ""
    mark = " *" if ci["low"] > 0 or ci["high"] < 0 else ""
    return f"{sign}{_fmt(ci['estimate'], d)} [{_fmt(ci['low'], d)}, {_fmt(ci['high'], d)}]{mark}"


def _evaluated(out: Path, methods: Sequence[str]):
    """(method id, its evaluation results, its training summary) for every method evaluated so far, in order."""
    for mid in methods:
        res_path = out / "eval" / mid / "results.json"
        if res_path.exists():
            yield (mid, json.loads(res_path.read_text()),
                   json.loads((out / "train" / mid / "summary.json").read_text()))


def collect_rows(out: Path, methods: Sequence[str], key: str = "phrase/normalized") -> dict[str, Any]:
    """One row per evaluated method (and the base, from the first evaluation's baseline role)."""
    rows, base, base_ids, first = [], None, None, None
    for mid, r, s in _evaluated(out, methods):
        first = first or (mid, r)
        check_same_noise({first[0]: first[1], mid: r})
        m = r["metrics"]
        if key not in m["iou"]["model"]:
            key = next(iter(m["iou"]["model"]))
        fid = m["fid"]
        row = {"method": mid, "trainer_method": trainer_method(mid),
               "pairs": split_method_id(mid)[1] or "reward",  # reward-labelled, or a gold / shuffled variant
               "faithful": s.get("method_provenance", {}).get("faithful"),
               **{name: m["iou"]["model"][key]["ci"][name] for name, _ in METRICS},
               **{f"delta_{name}": m["vs_baseline"][key][name] for name, _ in METRICS},
               "fid": {"estimate": fid["model"]["fid"], **{k: fid["model"]["ci"][k] for k in ("low", "high")}}
               if "model" in fid else None,
               **_spatial_cells(m.get("spatial"), "model"),
               "train_seconds": s["seconds"], "train_steps": s["steps"], "pairs_seen": s["pairs"],
               "unet_forwards_per_pair": s["unet_forwards_per_pair"], "final_loss": s["final_loss"],
               "implicit_acc": s["implicit_acc"], "random_init_model": s["random_init_model"],
               "eval_seconds": r["provenance"]["timing"]["total_s"], "fallbacks": r["provenance"]["fallbacks"],
               "report": f"eval/{mid}/report.html"}
        rows.append(row)
        b_row = {**{name: m["iou"]["baseline"][key]["ci"][name] for name, _ in METRICS},
                 "fid": {"estimate": fid["baseline"]["fid"], **{k: fid["baseline"]["ci"][k] for k in ("low", "high")}}
                 if "baseline" in fid else None, **_spatial_cells(m.get("spatial"), "baseline")}
        per = [x for x in m["iou"]["baseline"][key]["per_image"]]
        if base is None:
            base, base_ids = b_row, per
        elif per != base_ids:  # every evaluation regenerates the base: it must give the same images/scores
            row["fallbacks"] = row["fallbacks"] + ["base scores differ from the first evaluation's (nondeterminism)"]
    return {"key": key, "base": base, "rows": rows}


def _spatial_cells(sp: dict[str, Any] | None, role: str) -> dict[str, Any]:
    """A row's spatial hold rate (with its counts) and paired Δ vs the base, from results.json's metrics.spatial
    (absent before results version 3: the cells read n/a)."""
    if not sp or role not in sp:
        return {"spatial_hold": None, "spatial_counts": None, "delta_spatial_hold": None}
    r = sp[role]
    return {"spatial_hold": r["holds_given_found"], "spatial_counts": [r["both_found"], r["triples"]],
            "delta_spatial_hold": sp.get("vs_baseline") if role == "model" else None}


def _spatial(row: dict[str, Any]) -> str:
    c = row.get("spatial_counts")
    return _ci(row.get("spatial_hold")) + (f" ({c[0]}/{c[1]})" if c else "")


Row = tuple[str, "str | None", list[str]]  # (method, its report link or None, the other cells)


def _rows(t: dict[str, Any]) -> list[Row]:
    """Compositional table rows: base, then each method with its metric, delta, FID and cost cells."""
    rows: list[Row] = []
    if t["base"] is not None:
        bb = t["base"]
        rows.append(("base", None, [_ci(bb[n]) for n, _ in METRICS] + ["-"] * len(METRICS)
                     + [_spatial(bb), "-", _ci(bb["fid"], 2), "-", "-"]))
    for r in t["rows"]:
        rows.append((r["method"], r["report"], [_ci(r[n]) for n, _ in METRICS]
                     + [_delta(r[f"delta_{n}"]) for n, _ in METRICS]
                     + [_spatial(r), _delta(r.get("delta_spatial_hold"))]
                     + [_ci(r["fid"], 2), f"{r['train_seconds']:.0f}", f"{r['unet_forwards_per_pair']:.1f}"]))
    return rows


def _cells(rows: list[Row]) -> list[list[str]]:
    """Table rows with the method cell linked to its evaluation report."""
    return [[f"[{method}]({report})" if report else method, *cells] for method, report, cells in rows]


def write_table(out: Path, job: dict[str, Any], methods: Sequence[str]) -> dict[str, Path]:
    """``results_table.md`` / ``.json`` and ``index.html``: one table per IoU granularity the evaluation computed
    (``phrase`` = "colour size shape" entities, strict; ``label`` = shape names, LAION-SG style)."""
    b = job["budget"]
    keys = ["phrase/normalized", "label/normalized"]
    tables = {k: collect_rows(out, methods, k) for k in keys}
    tables = {t["key"]: t for t in tables.values()}  # an evaluation without a key falls back to its first one
    rows = next(iter(tables.values()))["rows"]
    head = ["method", *[h for _, h in METRICS], *[f"Δ {h} vs base" for _, h in METRICS],
            "spatial hold (found/triples)", "Δ spatial hold", "FID", "train s", "UNet fwd/pair"]
    intro = (f"Per method vs the base: IoU mean [95 % bootstrap CI] over {b['eval_graphs']} world "
             f"{b.get('eval_split', 'test')} graphs x "
             f"{len(b['eval_seeds'])} seeds ({b['eval_steps']} DDIM steps); Δ = paired bootstrap of method - base on "
             "the same graphs and noise (`*` = the interval excludes 0); each graph draws its own noise per seed "
             "(per-graph rule). Spatial hold: the share of the true graphs' spatial triples that hold among those "
             "whose two phrases were drawn (phrase level; the one figure a layout must earn), with its counts. "
             "FID vs the renders of the same graphs, with a "
             "bootstrap interval. train s = training wall time; UNet fwd/pair from the trainer's logs.")
    if b.get("holdout"):
        intro += (f" Held-out colour:shape pairs {', '.join(b['holdout'])}: no training graph contains one"
                  + (", every evaluated graph does (novel combinations)." if b.get("eval_split", "test") == "test"
                     else "."))
    if any("@" in m for m in methods):
        intro += (" `method@gold`: the same trainer on gold pairs (the true render of each graph over the base's "
                  "worst candidate: a ceiling); `method@shuffled`: on the base's candidates with rewards shuffled "
                  "within each graph (a floor).")
    notes, fallbacks, missing = _job_notes(job, rows, methods)
    return _write_files(out, f"World results table ({b['name']} budget)", intro, notes, fallbacks, missing, job,
                        tables, [(f"IoU granularity `{k}`", head, _cells(_rows(t))) for k, t in tables.items()])


def _job_notes(job: dict[str, Any], rows: list[dict[str, Any]], methods: Sequence[str]):
    """(notes, fallbacks, missing methods) under a table: budget, seed, base, fallbacks, unfinished methods."""
    b = job["budget"]
    notes = [f"Budget: {json.dumps(b)}",
             f"Seed: {job['seed']}. Base: {job['base']['source_name']} (sha256 {job['base']['source_sha256'][:12]}, "
             f"training record complete: {(job['base'].get('training_record') or {}).get('complete')})."]
    fallbacks = sorted({f for r in rows for f in r["fallbacks"]})
    if any(r["random_init_model"] for r in rows) or job["base"].get("random_init"):
        fallbacks.insert(0, "RANDOM-INIT base model: the numbers mean nothing (plumbing check)")
    if fallbacks:
        notes.append("Fallbacks: " + "; ".join(fallbacks))
    missing = [m for m in methods if m not in {r["method"] for r in rows}]
    if missing:
        notes.append(f"Not finished: {', '.join(missing)}")
    return notes, fallbacks, missing


def _write_files(out: Path, title: str, intro: str, notes: list[str], fallbacks: list[str], missing: list[str],
                 job: dict[str, Any], tables: dict[str, Any], sections: list[tuple[str, list[str], list[list[str]]]],
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """results_table.md / .json and index.html; ``sections``: (heading, table header, table rows)."""
    doc = Document()
    doc.h(1, title)
    doc.p(intro)
    for heading, head, rows in sections:
        doc.h(2, heading)
        doc.table(head, rows)
    for n in notes:
        doc.p(n)
    md = out / "results_table.md"
    write_text_atomic(md, doc.markdown(out))
    js = out / "results_table.json"
    write_text_atomic(js, json.dumps({"tables": tables, "job": job, "missing": missing, "fallbacks": fallbacks,
                                      **(extra or {})}, indent=2) + "\n")
    idx = out / "index.html"
    write_text_atomic(idx, doc.html(f"World results ({job['budget']['name']})"))
    return {"markdown": md, "json": js, "html": idx}


# ---- t2i table ----------------------------------------------------------------------------------------------------
T2I_SCORERS = (("world_reward", "world reward"), ("world_clip", "world-CLIP cosine"))


def _win(ci: dict[str, Any] | None) -> str:
    """A win-rate with its interval; ``*`` = the interval excludes 0.5 (no preference)."""
    if not ci:
        return "n/a"
    mark = " *" if ci["low"] > 0.5 or ci["high"] < 0.5 else ""
    return f"{_ci(ci)}{mark}"


def collect_rows_t2i(out: Path, methods: Sequence[str], scorer: str) -> dict[str, Any]:
    """Per evaluated method: ``scorer``'s win-rate / mean difference vs the base (paired, bootstrapped by prompt),
    the method's and the base's mean and median, training wall time and UNet forwards per pair."""
    rows, base, base_scores = [], None, None
    for mid, r, s in _evaluated(out, methods):
        vs = r["metrics"]["vs_baseline"].get(scorer)
        if vs is None:  # the scorer was skipped (e.g. no world-CLIP folder); provenance says why
            continue
        rows.append({"method": mid, "trainer_method": trainer_method(mid),
                     "faithful": s.get("method_provenance", {}).get("faithful"),
                     "win_rate": vs["win_rate"], "mean_difference": vs["mean_difference"],
                     "wins": vs["wins"], "ties": vs["ties"], "losses": vs["losses"], "n": vs["n"],
                     "mean": vs["mean_a"], "median": vs["median_a"],
                     "train_seconds": s["seconds"], "train_steps": s["steps"], "pairs_seen": s["pairs"],
                     "unet_forwards_per_pair": s["unet_forwards_per_pair"], "final_loss": s["final_loss"],
                     "implicit_acc": s["implicit_acc"], "random_init_model": s["random_init_model"],
                     "eval_seconds": r["provenance"]["timing"]["total_s"], "fallbacks": r["provenance"]["fallbacks"],
                     "report": f"eval/{mid}/report.html"})
        per = r["metrics"]["scores"]["baseline"][scorer]["per_image"]
        if base is None:
            base, base_scores = {"mean": vs["mean_b"], "median": vs["median_b"]}, per
        elif per != base_scores:  # every evaluation regenerates the base: it must give the same images/scores
            rows[-1]["fallbacks"] = rows[-1]["fallbacks"] + [
                "base scores differ from the first evaluation's (nondeterminism)"]
    return {"scorer": scorer, "base": base, "rows": rows}


def _rows_t2i(t: dict[str, Any]) -> list[Row]:
    """t2i table rows: base, then each method's win-rate, mean difference, mean, median and cost cells."""
    rows: list[Row] = []
    if t["base"] is not None:
        rows.append(("base", None, ["-", "-", _ci(t["base"]["mean"]), _ci(t["base"]["median"]), "-", "-"]))
    for r in t["rows"]:
        rows.append((r["method"], r["report"], [_win(r["win_rate"]), _delta(r["mean_difference"]), _ci(r["mean"]),
                                                _ci(r["median"]), f"{r['train_seconds']:.0f}",
                                                f"{r['unet_forwards_per_pair']:.1f}"]))
    return rows


def write_table_t2i(out: Path, job: dict[str, Any], methods: Sequence[str]) -> dict[str, Path]:
    """The t2i table: one per scorer the evaluations computed (world reward; world-CLIP cosine)."""
    b = job["budget"]
    tables = {name: collect_rows_t2i(out, methods, name) for name, _ in T2I_SCORERS}
    tables = {k: t for k, t in tables.items() if t["rows"]} or {T2I_SCORERS[0][0]: tables[T2I_SCORERS[0][0]]}
    rows = [r for t in tables.values() for r in t["rows"]]
    head = ["method", "win-rate vs base", "Δ mean vs base", "mean", "median", "train s", "UNet fwd/pair"]
    intro = (f"t2i task. Per method vs the base on {b['eval_graphs']} world test prompts x {len(b['eval_seeds'])} "
             f"seeds ({b['eval_steps']} DDIM steps), same prompts and seeds for both: win-rate of the method over "
             "the base (ties count half; `*` = the 95 % interval excludes 0.5), Δ mean = paired mean difference "
             "(`*` = excludes 0), mean / median score [95 % bootstrap CI], all bootstrapped by prompt. Trained on "
             f"world Pick-a-Pic pairs ({b['annotations']} train captions x 2 seeds of the base, {b['gen_steps']} "
             "DDIM steps, world-reward labels, ties dropped). train s = training wall time; UNet fwd/pair from the "
             "trainer's logs.")
    notes, fallbacks, missing = _job_notes(job, rows, methods)
    missing = [m for m in methods if not (out / "eval" / m / "results.json").exists()]
    notes = [n for n in notes if not n.startswith("Not finished")]
    if missing:
        notes.append(f"Not finished: {', '.join(missing)}")
    pk = out / "pickapic" / "world_pickapic.json"
    pairs = out / "pairs" / "summary.json"
    extra = {"pickapic": json.loads(pk.read_text())["labels"] if pk.exists() else None,
             "pairs": json.loads(pairs.read_text()) if pairs.exists() else None}
    if extra["pickapic"]:
        lab = extra["pickapic"]
        notes.append(f"World Pick-a-Pic labels: image 0 wins {lab['wins_image_0']}, image 1 wins "
                     f"{lab['wins_image_1']}, ties {lab['ties']} (tie tolerance {lab['tie_tolerance']}).")
    return _write_files(out, f"World t2i results table ({b['name']} budget)", intro, notes, fallbacks, missing,
                        job, tables, [(f"Scorer `{k}` ({dict(T2I_SCORERS)[k]})", head, _cells(_rows_t2i(t)))
                                      for k, t in tables.items()],
                        extra)
