"""The end-to-end world job: build pairs -> train each method -> evaluate each vs the base -> one results table.

    run_world_job("runs/world-demo", budget="demo")                      # scripts/demo.py (the README's main job)
    run_world_job("runs/world-table", budget="table", methods=ALL_METHODS)  # scripts/bench_world.py

Stages, each skipped on a rerun once finished (so a killed job is resumed by running the same call again):

1. ``base/``: a snapshot (copy) of the base SG model -- the world SD1.5-SG unless ``base_model`` is given -- so that
   every method starts from, and is compared with, the same weights even if the world model is retrained meanwhile.
2. ``pairs/``: ``scripts/build_pairs.py --source shapes`` on the world *train* split (K candidates per graph from
   the base, scored by the world reward); finished when ``pairs/index.json`` exists (build_pairs resumes by shard).
3. ``train/<method>/``: ``scripts/train.py --task compositional`` with ``configs/world/compositional.yaml``, the
   same budget and seed for every method; finished when ``final/model_index.json`` and ``summary.json`` exist
   (a partial run with a checkpoint resumes from it).
4. ``eval/<method>/``: ``sgalign.evaluation.run.evaluate`` on the *test* split with ``baseline = base``; finished
   when ``results.json`` and ``report.html`` exist.
5. ``results_table.md`` / ``.json`` / ``index.html``: per method vs base, SG-IoU, Entity-IoU, Relation-IoU and FID
   with 95 % bootstrap intervals, paired differences with intervals, training wall time, UNet forwards per pair.

Budgets are world-scale choices for a CPU, not official values; the one used is recorded in ``job.json``.
"""
from __future__ import annotations

import html
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "configs" / "world" / "compositional.yaml"
PAIRS_CONFIG = ROOT / "configs" / "build_pairs" / "world.yaml"
EVAL_CONFIG = ROOT / "configs" / "evaluate" / "world_compositional.yaml"

# method id -> (trainer method name, extra --set overrides). Inversion-DPO in both forms (METHODS.md).
METHOD_SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "diffusion-dpo": ("diffusion-dpo", ()),
    "inversion-dpo": ("inversion-dpo", ("method.options.inversion-dpo.faithful=false",)),  # trajectory target
    "inversion-dpo-faithful": ("inversion-dpo", ("method.options.inversion-dpo.faithful=true",)),  # official
    "inpo": ("inpo", ()),
    "smpo": ("smpo", ()),
    "sft": ("sft", ()),
}
ALL_METHODS = ("diffusion-dpo", "inversion-dpo-faithful", "inversion-dpo", "inpo", "smpo", "sft")
METRICS = (("sg_iou", "SG-IoU"), ("entity_iou", "Entity-IoU"), ("relation_iou", "Relation-IoU"))


@dataclass
class JobBudget:
    """Every knob that sets the cost of the job; the same for every method."""

    name: str
    annotations: int  # world train-split graphs for build_pairs
    k: int  # candidates per graph
    gen_steps: int  # DDIM steps of the candidate generation
    train_steps: int  # optimizer steps per method
    batch_size: int  # pairs per step
    lr: float  # per pair (scale_lr: x batch)
    warmup_steps: int
    eval_graphs: int  # world test-split graphs
    eval_seeds: list[int]
    eval_steps: int  # DDIM steps of the evaluation sampling
    n_resamples: int = 1000  # bootstrap resamples (IoU intervals, paired differences)
    fid_resamples: int = 200
    grid_graphs: int = 4
    torch_threads: int = 1  # a busy shared CPU: one thread is faster and steadier


# World-scale CPU budgets (not official values). lr 1e-5 per pair: the world config's 1e-6 (the SD1.5 value) moves a
# ~2M-parameter UNet by nothing measurable in tens of steps.
BUDGETS: dict[str, JobBudget] = {
    "micro": JobBudget("micro", annotations=2, k=2, gen_steps=2, train_steps=2, batch_size=1, lr=1e-5,
                       warmup_steps=0, eval_graphs=2, eval_seeds=[0], eval_steps=2, n_resamples=50,
                       fid_resamples=10, grid_graphs=1),
    "demo": JobBudget("demo", annotations=96, k=4, gen_steps=15, train_steps=150, batch_size=4, lr=1e-5,
                      warmup_steps=10, eval_graphs=64, eval_seeds=[0, 1], eval_steps=20),
    "table": JobBudget("table", annotations=256, k=4, gen_steps=20, train_steps=200, batch_size=4, lr=1e-5,
                       warmup_steps=10, eval_graphs=64, eval_seeds=[0, 1, 2], eval_steps=20),
}
DEMO_METHODS = ("diffusion-dpo", "smpo")


def resolve_budget(budget: str | JobBudget, **overrides: Any) -> JobBudget:
    if isinstance(budget, JobBudget):
        b = budget
    elif budget in BUDGETS:
        b = BUDGETS[budget]
    else:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)} or pass a JobBudget")
    return replace(b, **overrides) if overrides else b


def _log(msg: str) -> None:
    print(f"[world-job] {msg}", flush=True)


def _data_builders_cli():
    try:
        from data_builders.cli import main
    except ImportError:  # data_builders is a top-level folder of the repository, not part of the package
        sys.path.insert(0, str(ROOT))
        from data_builders.cli import main
    return main


# ---- stages -------------------------------------------------------------------------------------------------------
def stage_base(out: Path, base_model: str | Path | None) -> Path:
    from ..evaluation.run import folder_sha256
    from ..training.modeling import world_model_path

    dst = out / "base"
    src = Path(base_model) if base_model is not None else world_model_path()
    if (dst / "snapshot.json").exists():
        snap = json.loads((dst / "snapshot.json").read_text())
        now = folder_sha256(src) if (src / "model_index.json").exists() else None
        note = "" if now in (None, snap["source_sha256"]) else " (the source has changed since; the snapshot is kept)"
        _log(f"[base] done: snapshot of {snap['source_name']} ({snap['source_sha256'][:12]}){note}")
        return dst
    if not (src / "model_index.json").exists():
        raise FileNotFoundError(f"base model {src}: no model_index.json; train the world SD1.5-SG first "
                                "(scripts/pretrain_sg.py) or pass base_model=FOLDER")
    if dst.exists():
        shutil.rmtree(dst)  # an interrupted copy
    shutil.copytree(src, dst)
    rec = src / "training_record.json"
    record = json.loads(rec.read_text()) if rec.exists() else None
    snap = {"source_name": src.name, "source_sha256": folder_sha256(dst), "training_record": record,
            "random_init": "_sgalign_random_init" in json.loads((src / "model_index.json").read_text())}
    (dst / "snapshot.json").write_text(json.dumps(snap, indent=2) + "\n")
    state = "complete" if record and record.get("complete") else "INTERMEDIATE/unknown"
    _log(f"[base] snapshot of {src.name} -> {dst} (training record: {state})")
    return dst


def stage_pairs(out: Path, base: Path, b: JobBudget, seed: int) -> Path:
    dst = out / "pairs"
    if (dst / "index.json").exists():
        _log(f"[pairs] done: {dst} (skipped)")
        return dst
    _log(f"[pairs] building {b.annotations} world train graphs x {b.k} candidates ({b.gen_steps} DDIM steps) ...")
    t0 = time.perf_counter()
    argv = ["--source", "shapes", "--config", str(PAIRS_CONFIG), "--out", str(dst), "--model", str(base),
            "--n", str(b.annotations), "--set", f"generation.k={b.k}", "--set", f"generation.seed={seed}",
            "--set", f"generation.num_inference_steps={b.gen_steps}", "--set", f"world.seed={seed}",
            "--set", f"torch_threads={b.torch_threads}", "--no-progress"]
    rc = _data_builders_cli()(argv)
    if rc != 0 or not (dst / "index.json").exists():
        raise RuntimeError(f"build_pairs failed (exit {rc}): python scripts/build_pairs.py {' '.join(argv)}")
    _log(f"[pairs] built in {time.perf_counter() - t0:.0f} s -> {dst}")
    return dst


def train_overrides(method_id: str, run_dir: Path, base: Path, pairs: Path, b: JobBudget, seed: int) -> list[str]:
    name, extra = METHOD_SPECS[method_id]
    return ["--task", "compositional", "--method", name, "--config", str(TRAIN_CONFIG),
            "--set", f"model.path={base}", "--set", f"data.path={pairs}", "--set", f"data.batch_size={b.batch_size}",
            "--set", f"trainer.output_dir={run_dir}", "--set", f"trainer.max_steps={b.train_steps}",
            "--set", f"trainer.seed={seed}", "--set", f"optimizer.lr={b.lr}",
            "--set", f"optimizer.warmup_steps={b.warmup_steps}",
            "--set", f"checkpointing.every={max(1, b.train_steps // 2)}", "--set", "checkpointing.keep=1",
            "--set", "logging.tqdm=false",
            *[a for o in extra for a in ("--set", o)]]


def stage_train(out: Path, method_id: str, base: Path, pairs: Path, b: JobBudget, seed: int) -> Path:
    from ..training.checkpoint import latest_checkpoint
    from ..training.cli import parse
    from ..training.trainer import train

    run = out / "train" / method_id
    if (run / "final" / "model_index.json").exists() and (run / "summary.json").exists():
        _log(f"[train {method_id}] done: {run} (skipped)")
        return run
    argv = train_overrides(method_id, run, base, pairs, b, seed)
    if run.exists() and latest_checkpoint(run) is not None:
        argv += ["--resume", "latest"]
        _log(f"[train {method_id}] resuming {run} from its last checkpoint")
    elif run.exists():
        shutil.rmtree(run)  # started but nothing saved: start clean (metrics.jsonl would double up)
    _log(f"[train {method_id}] {b.train_steps} steps x {b.batch_size} pairs, seed {seed} ...")
    _, cfg = parse(argv)
    res = train(cfg)
    (run / "job_command.txt").write_text("python scripts/train.py " + " ".join(argv) + "\n")
    _log(f"[train {method_id}] {res.step} steps in {res.summary['seconds']:.0f} s, "
         f"{res.summary['unet_forwards_per_pair']:.1f} UNet fwd/pair -> {run / 'final'}")
    return run


def eval_protocol(b: JobBudget, seed: int):
    from ..evaluation.protocol import load_protocol

    return load_protocol(str(EVAL_CONFIG), [
        f"inputs.n={b.eval_graphs}", f"inputs.seed={seed}", f"sampling.seeds={json.dumps(b.eval_seeds)}",
        f"sampling.steps={b.eval_steps}", f"sampling.torch_threads={b.torch_threads}",
        f"stats.n_resamples={b.n_resamples}", f"stats.seed={seed}", f"compositional.fid_resamples={b.fid_resamples}",
        f"report.grid_graphs={min(b.grid_graphs, b.eval_graphs)}"], task="compositional")


def stage_eval(out: Path, method_id: str, model: Path, base: Path, b: JobBudget, seed: int) -> Path:
    from ..evaluation.report import write_report
    from ..evaluation.run import evaluate

    dst = out / "eval" / method_id
    if (dst / "results.json").exists() and (dst / "report.html").exists():
        _log(f"[eval {method_id}] done: {dst} (skipped)")
        return dst
    _log(f"[eval {method_id}] {b.eval_graphs} test graphs x {len(b.eval_seeds)} seeds, {b.eval_steps} DDIM steps, "
         f"vs base ...")
    protocol = eval_protocol(b, seed)
    t0 = time.perf_counter()
    results = evaluate(model, dst, protocol, baseline=base,
                       command=f"sgalign.world.pipeline.run_world_job (budget {b.name}, method {method_id})")
    write_report(dst, results)
    _log(f"[eval {method_id}] {time.perf_counter() - t0:.0f} s -> {dst / 'report.html'}")
    return dst


# ---- table --------------------------------------------------------------------------------------------------------
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


def collect_rows(out: Path, methods: Sequence[str], key: str = "phrase/normalized") -> dict[str, Any]:
    """One row per evaluated method (and the base, from the first evaluation's baseline role)."""
    rows, base, base_ids = [], None, None
    for mid in methods:
        res_path = out / "eval" / mid / "results.json"
        if not res_path.exists():
            continue
        r = json.loads(res_path.read_text())
        s = json.loads((out / "train" / mid / "summary.json").read_text())
        m = r["metrics"]
        if key not in m["iou"]["model"]:
            key = next(iter(m["iou"]["model"]))
        fid = m["fid"]
        row = {"method": mid, "trainer_method": METHOD_SPECS[mid][0],
               "faithful": s.get("method_provenance", {}).get("faithful"),
               **{name: m["iou"]["model"][key]["ci"][name] for name, _ in METRICS},
               **{f"delta_{name}": m["vs_baseline"][key][name] for name, _ in METRICS},
               "fid": {"estimate": fid["model"]["fid"], **{k: fid["model"]["ci"][k] for k in ("low", "high")}}
               if "model" in fid else None,
               "train_seconds": s["seconds"], "train_steps": s["steps"], "pairs_seen": s["pairs"],
               "unet_forwards_per_pair": s["unet_forwards_per_pair"], "final_loss": s["final_loss"],
               "implicit_acc": s["implicit_acc"], "random_init_model": s["random_init_model"],
               "eval_seconds": r["provenance"]["timing"]["total_s"], "fallbacks": r["provenance"]["fallbacks"],
               "report": f"eval/{mid}/report.html"}
        rows.append(row)
        b_row = {**{name: m["iou"]["baseline"][key]["ci"][name] for name, _ in METRICS},
                 "fid": {"estimate": fid["baseline"]["fid"], **{k: fid["baseline"]["ci"][k] for k in ("low", "high")}}
                 if "baseline" in fid else None}
        per = [x for x in m["iou"]["baseline"][key]["per_image"]]
        if base is None:
            base, base_ids = b_row, per
        elif per != base_ids:  # every evaluation regenerates the base: it must give the same images/scores
            row["fallbacks"] = row["fallbacks"] + ["base scores differ from the first evaluation's (nondeterminism)"]
    return {"key": key, "base": base, "rows": rows}


def _md_table(t: dict[str, Any], head: list[str]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if t["base"] is not None:
        bb = t["base"]
        lines.append("| base | " + " | ".join(_ci(bb[n]) for n, _ in METRICS) + " | - | - | - | "
                     + _ci(bb["fid"], 2) + " | - | - |")
    for r in t["rows"]:
        lines.append(f"| [{r['method']}]({r['report']}) | " + " | ".join(_ci(r[n]) for n, _ in METRICS) + " | "
                     + " | ".join(_delta(r[f"delta_{n}"]) for n, _ in METRICS) + f" | {_ci(r['fid'], 2)} | "
                     f"{r['train_seconds']:.0f} | {r['unet_forwards_per_pair']:.1f} |")
    return lines


def _html_table(t: dict[str, Any], head: list[str]) -> str:
    cells = lambda xs, tag="td": "".join(f"<{tag}>{x}</{tag}>" for x in xs)  # noqa: E731
    body = [f"<tr>{cells(head, 'th')}</tr>"]
    if t["base"] is not None:
        body.append("<tr>" + cells(["base", *[_ci(t["base"][n]) for n, _ in METRICS], "-", "-", "-",
                                    _ci(t["base"]["fid"], 2), "-", "-"]) + "</tr>")
    for r in t["rows"]:
        link = f'<a href="{html.escape(r["report"])}">{html.escape(r["method"])}</a>'
        body.append("<tr>" + cells([link, *[_ci(r[n]) for n, _ in METRICS],
                                    *[_delta(r[f"delta_{n}"]) for n, _ in METRICS], _ci(r["fid"], 2),
                                    f"{r['train_seconds']:.0f}", f"{r['unet_forwards_per_pair']:.1f}"]) + "</tr>")
    return f"<table>{''.join(body)}</table>"


def write_table(out: Path, job: dict[str, Any], methods: Sequence[str]) -> dict[str, Path]:
    """``results_table.md`` / ``.json`` and ``index.html``: one table per IoU granularity the evaluation computed
    (``phrase`` = "colour size shape" entities, strict; ``label`` = shape names, LAION-SG style)."""
    b = job["budget"]
    keys = ["phrase/normalized", "label/normalized"]
    tables = {k: collect_rows(out, methods, k) for k in keys}
    tables = {t["key"]: t for t in tables.values()}  # an evaluation without a key falls back to its first one
    rows = next(iter(tables.values()))["rows"]
    head = ["method", *[h for _, h in METRICS], *[f"Δ {h} vs base" for _, h in METRICS], "FID",
            "train s", "UNet fwd/pair"]
    intro = (f"Per method vs the base: IoU mean [95 % bootstrap CI] over {b['eval_graphs']} world test graphs x "
             f"{len(b['eval_seeds'])} seeds ({b['eval_steps']} DDIM steps); Δ = paired bootstrap of method - base on "
             "the same graphs and seeds (`*` = the interval excludes 0). FID vs the renders of the same graphs, with a "
             "bootstrap interval. train s = training wall time; UNet fwd/pair from the trainer's logs.")
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
    lines = [f"# World results table ({b['name']} budget)", "", intro, ""]
    for k, t in tables.items():
        lines += [f"## IoU granularity `{k}`", "", *_md_table(t, head), ""]
    lines += [x for n in notes for x in (n, "")]
    md = out / "results_table.md"
    md.write_text("\n".join(lines))
    js = out / "results_table.json"
    js.write_text(json.dumps({"tables": tables, "job": job, "missing": missing, "fallbacks": fallbacks},
                             indent=2) + "\n")
    page = (f"<!doctype html><meta charset='utf-8'><title>World results ({html.escape(b['name'])})</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse}</style>"
            f"<h1>World results table ({html.escape(b['name'])} budget)</h1><p>{html.escape(intro)}</p>"
            + "".join(f"<h2>IoU granularity {html.escape(k)}</h2>{_html_table(t, head)}" for k, t in tables.items())
            + "".join(f"<p>{html.escape(n)}</p>" for n in notes))
    idx = out / "index.html"
    idx.write_text(page)
    return {"markdown": md, "json": js, "html": idx}


# ---- the job ------------------------------------------------------------------------------------------------------
def run_world_job(out_dir: str | Path, budget: str | JobBudget = "demo", methods: Sequence[str] | None = None,
                  seed: int = 0, base_model: str | Path | None = None, **budget_overrides: Any) -> dict[str, Path]:
    """Run (or resume) the world job into ``out_dir``; return the table paths (``markdown``, ``json``, ``html``)."""
    import torch

    b = resolve_budget(budget, **budget_overrides)
    methods = list(methods or (DEMO_METHODS if b.name == "demo" else ALL_METHODS))
    unknown = [m for m in methods if m not in METHOD_SPECS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(METHOD_SPECS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(b.torch_threads)
    t0 = time.perf_counter()
    _log(f"budget {b.name}, methods {', '.join(methods)}, seed {seed}, out {out}")
    base = stage_base(out, base_model)
    job = {"budget": asdict(b), "methods": methods, "seed": seed,
           "base": json.loads((base / "snapshot.json").read_text())}
    job_file = out / "job.json"
    if job_file.exists():
        old = json.loads(job_file.read_text())
        if old["budget"] != job["budget"] or old["seed"] != seed:
            raise ValueError(f"{out} holds a job with another budget/seed ({old['budget']['name']}, seed "
                             f"{old['seed']}); use a new out_dir or delete it")
    job_file.write_text(json.dumps(job, indent=2) + "\n")
    pairs = stage_pairs(out, base, b, seed)
    for mid in methods:
        run = stage_train(out, mid, base, pairs, b, seed)
        stage_eval(out, mid, run / "final", base, b, seed)
    paths = write_table(out, job, methods)
    _log(f"finished in {time.perf_counter() - t0:.0f} s")
    _log(f"results table: {paths['markdown']} (JSON {paths['json'].name}); index with per-method reports: "
         f"{paths['html']}")
    return paths


