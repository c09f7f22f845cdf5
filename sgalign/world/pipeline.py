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

``task="t2i"`` (``scripts/bench_world.py --task t2i``) runs the same stages on the t2i task:

1. ``base/`` as above, plus ``base-t2i/``: the snapshot as a plain ``StableDiffusionPipeline`` folder (its text
   path: same UNet / VAE / text encoder, no SG encoder), what ``train.py --task t2i`` fine-tunes and exports and
   ``evaluate --task t2i`` loads;
2. ``pickapic/``: the world Pick-a-Pic file (``sgalign.world.pickapic``: ``annotations`` train-split captions x 2
   seeds of the base, ``gen_steps`` DDIM steps, labels from the world reward), then ``pairs/``:
   ``build_pairs --source pickapic`` on it (ties dropped, winner first), relabelled with the world-CLIP cosine
   into ``ps_0`` / ``ps_1`` (the score columns of ``configs/world/t2i.yaml``; SmPO's);
3. ``train/<method>/``: ``train.py --task t2i`` with ``configs/world/t2i.yaml``, same budget and seeds;
4. ``eval/<method>/``: ``evaluate --task t2i`` (``configs/evaluate/world_t2i.yaml``) on test-split prompts vs the
   base;
5. ``results_table.md`` / ``.json`` / ``index.html``: per method and scorer (world reward, world-CLIP cosine),
   win-rate vs base and paired mean difference with their bootstrap intervals, mean / median scores of the method
   and the base, training wall time, UNet forwards per pair.

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
T2I_TRAIN_CONFIG = ROOT / "configs" / "world" / "t2i.yaml"
T2I_EVAL_CONFIG = ROOT / "configs" / "evaluate" / "world_t2i.yaml"
TASKS = ("compositional", "t2i")
# task -> (training config, evaluation protocol)
TASK_CONFIGS = {"compositional": (TRAIN_CONFIG, EVAL_CONFIG), "t2i": (T2I_TRAIN_CONFIG, T2I_EVAL_CONFIG)}
T2I_RELABEL = "pickapic.relabel={name: world-clip}"  # ps_0 / ps_1 = world-CLIP cosine (SmPO's score columns)
T2I_GUIDANCE = 3.0  # CFG of the world Pick-a-Pic generation (as configs/evaluate/world_t2i.yaml)

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
    annotations: int  # world train-split graphs for build_pairs (t2i: rows of the world Pick-a-Pic file)
    k: int  # candidates per graph (t2i: not used; 2 images per caption)
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
    # table: ~1 pass over the 1536 same-graph pairs of 256 graphs x 4; lr 1e-5 per pair (5e-5 blew Diffusion-DPO up
    # in a demo-budget probe: FID 55 -> 106); 128 test graphs x 3 seeds so paired intervals resolve ~0.01 effects
    "table": JobBudget("table", annotations=256, k=4, gen_steps=20, train_steps=400, batch_size=4, lr=1e-5,
                       warmup_steps=10, eval_graphs=128, eval_seeds=[0, 1, 2], eval_steps=20),
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


def stage_t2i_base(out: Path, base: Path) -> Path:
    """``base-t2i/``: the base snapshot's text path as a ``StableDiffusionPipeline`` folder (written atomically)."""
    from .pickapic import write_text_only_view

    dst = out / "base-t2i"
    if (dst / "model_index.json").exists():
        _log(f"[base-t2i] done: {dst} (skipped)")
        return dst
    write_text_only_view(base, dst)
    _log(f"[base-t2i] text path of {base.name} (no SG encoder) as a StableDiffusionPipeline folder -> {dst}")
    return dst


def stage_pickapic(out: Path, base: Path, b: JobBudget, seed: int) -> Path:
    from .pickapic import WorldPickapicConfig, build_world_pickapic

    dst = out / "pickapic"
    if (dst / "index.json").exists():
        _log(f"[pickapic] done: {dst} (skipped)")
        return dst
    _log(f"[pickapic] {b.annotations} world train captions x 2 seeds ({b.gen_steps} DDIM steps), world-reward "
         "labels ...")
    cfg = WorldPickapicConfig(n=b.annotations, seed=seed, steps=b.gen_steps, guidance=T2I_GUIDANCE)
    build_world_pickapic(dst, cfg, base, progress=False, log=lambda m: _log(f"[pickapic] {m}"))
    return dst


def stage_pairs(out: Path, base: Path, b: JobBudget, seed: int, task: str = "compositional") -> Path:
    dst = out / "pairs"
    if (dst / "index.json").exists():
        _log(f"[pairs] done: {dst} (skipped)")
        return dst
    if task == "t2i":
        return _pairs_t2i(out, dst, base, b, seed)
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


def _pairs_t2i(out: Path, dst: Path, base: Path, b: JobBudget, seed: int) -> Path:
    pickapic = stage_pickapic(out, base, b, seed)
    t0 = time.perf_counter()
    argv = ["--source", "pickapic", "--input", str(pickapic), "--out", str(dst), "--set", T2I_RELABEL,
            "--set", f"torch_threads={b.torch_threads}", "--no-progress"]
    rc = _data_builders_cli()(argv)
    if rc != 0 or not (dst / "index.json").exists():
        raise RuntimeError(f"build_pairs failed (exit {rc}): python scripts/build_pairs.py {' '.join(argv)}")
    summary = json.loads((dst / "summary.json").read_text())
    if summary["pairs"] == 0:
        raise RuntimeError(f"{dst}: no untied pair among {summary['input_rows']} world Pick-a-Pic rows (every "
                           "reward pair tied); raise the budget's annotations or gen_steps")
    _log(f"[pairs] {summary['pairs']} pairs ({summary['ties_dropped']} ties dropped) in "
         f"{time.perf_counter() - t0:.0f} s -> {dst}")
    return dst


def train_overrides(method_id: str, run_dir: Path, base: Path, pairs: Path, b: JobBudget, seed: int,
                    task: str = "compositional") -> list[str]:
    name, extra = METHOD_SPECS[method_id]
    return ["--task", task, "--method", name, "--config", str(TASK_CONFIGS[task][0]),
            "--set", f"model.path={base}", "--set", f"data.path={pairs}", "--set", f"data.batch_size={b.batch_size}",
            "--set", f"trainer.output_dir={run_dir}", "--set", f"trainer.max_steps={b.train_steps}",
            "--set", f"trainer.seed={seed}", "--set", f"optimizer.lr={b.lr}",
            "--set", f"optimizer.warmup_steps={b.warmup_steps}",
            "--set", f"checkpointing.every={max(1, b.train_steps // 2)}", "--set", "checkpointing.keep=1",
            "--set", "logging.tqdm=false",
            *[a for o in extra for a in ("--set", o)]]


def stage_train(out: Path, method_id: str, base: Path, pairs: Path, b: JobBudget, seed: int,
                task: str = "compositional") -> Path:
    from ..training.checkpoint import latest_checkpoint
    from ..training.cli import parse
    from ..training.trainer import train

    run = out / "train" / method_id
    if (run / "final" / "model_index.json").exists() and (run / "summary.json").exists():
        _log(f"[train {method_id}] done: {run} (skipped)")
        return run
    argv = train_overrides(method_id, run, base, pairs, b, seed, task)
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


def eval_protocol(b: JobBudget, seed: int, task: str = "compositional"):
    from ..evaluation.protocol import load_protocol

    fid = [f"compositional.fid_resamples={b.fid_resamples}"] if task == "compositional" else []
    return load_protocol(str(TASK_CONFIGS[task][1]), [
        f"inputs.n={b.eval_graphs}", f"inputs.seed={seed}", f"sampling.seeds={json.dumps(b.eval_seeds)}",
        f"sampling.steps={b.eval_steps}", f"sampling.torch_threads={b.torch_threads}",
        f"stats.n_resamples={b.n_resamples}", f"stats.seed={seed}", *fid,
        f"report.grid_graphs={min(b.grid_graphs, b.eval_graphs)}"], task=task)


def stage_eval(out: Path, method_id: str, model: Path, base: Path, b: JobBudget, seed: int,
               task: str = "compositional") -> Path:
    from ..evaluation.report import write_report
    from ..evaluation.run import evaluate

    dst = out / "eval" / method_id
    if (dst / "results.json").exists() and (dst / "report.html").exists():
        _log(f"[eval {method_id}] done: {dst} (skipped)")
        return dst
    what = "graphs" if task == "compositional" else "prompts"
    _log(f"[eval {method_id}] {b.eval_graphs} test {what} x {len(b.eval_seeds)} seeds, {b.eval_steps} DDIM steps, "
         f"vs base ...")
    protocol = eval_protocol(b, seed, task)
    t0 = time.perf_counter()
    results = evaluate(model, dst, protocol, baseline=base,
                       command=f"sgalign.world.pipeline.run_world_job (budget {b.name}, method {method_id}"
                               + ("" if task == "compositional" else f", task {task}") + ")")
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


def _evaluated(out: Path, methods: Sequence[str]):
    """(method id, its evaluation results, its training summary) for every method evaluated so far, in order."""
    for mid in methods:
        res_path = out / "eval" / mid / "results.json"
        if res_path.exists():
            yield (mid, json.loads(res_path.read_text()),
                   json.loads((out / "train" / mid / "summary.json").read_text()))


def collect_rows(out: Path, methods: Sequence[str], key: str = "phrase/normalized") -> dict[str, Any]:
    """One row per evaluated method (and the base, from the first evaluation's baseline role)."""
    rows, base, base_ids = [], None, None
    for mid, r, s in _evaluated(out, methods):
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


Row = tuple[str, "str | None", list[str]]  # (method, its report link or None, the other cells)


def _rows(t: dict[str, Any]) -> list[Row]:
    """Compositional table rows: base, then each method with its metric, delta, FID and cost cells."""
    rows: list[Row] = []
    if t["base"] is not None:
        bb = t["base"]
        rows.append(("base", None, [_ci(bb[n]) for n, _ in METRICS] + ["-"] * len(METRICS)
                     + [_ci(bb["fid"], 2), "-", "-"]))
    for r in t["rows"]:
        rows.append((r["method"], r["report"], [_ci(r[n]) for n, _ in METRICS]
                     + [_delta(r[f"delta_{n}"]) for n, _ in METRICS]
                     + [_ci(r["fid"], 2), f"{r['train_seconds']:.0f}", f"{r['unet_forwards_per_pair']:.1f}"]))
    return rows


def _md_table(head: list[str], rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, report, cells in rows:
        name = f"[{method}]({report})" if report else method
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def _html_table(head: list[str], rows: list[Row]) -> str:
    def cells(xs: Sequence[str], tag: str = "td") -> str:
        return "".join(f"<{tag}>{x}</{tag}>" for x in xs)

    body = [f"<tr>{cells(head, 'th')}</tr>"]
    for method, report, rest in rows:
        name = f'<a href="{html.escape(report)}">{html.escape(method)}</a>' if report else html.escape(method)
        body.append("<tr>" + cells([name, *rest]) + "</tr>")
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
    notes, fallbacks, missing = _job_notes(job, rows, methods)
    return _write_files(out, f"World results table ({b['name']} budget)", intro, notes, fallbacks, missing, job,
                        tables, [(f"IoU granularity `{k}`", f"IoU granularity {k}", _md_table(head, _rows(t)),
                                  _html_table(head, _rows(t))) for k, t in tables.items()])


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
                 job: dict[str, Any], tables: dict[str, Any], sections: list[tuple[str, str, list[str], str]],
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """results_table.md / .json and index.html; ``sections``: (markdown heading, html heading, md lines, html)."""
    b = job["budget"]
    lines = [f"# {title}", "", intro, ""]
    for md_head, _, md_lines, _ in sections:
        lines += [f"## {md_head}", "", *md_lines, ""]
    lines += [x for n in notes for x in (n, "")]
    md = out / "results_table.md"
    md.write_text("\n".join(lines))
    js = out / "results_table.json"
    js.write_text(json.dumps({"tables": tables, "job": job, "missing": missing, "fallbacks": fallbacks,
                              **(extra or {})}, indent=2) + "\n")
    page = (f"<!doctype html><meta charset='utf-8'><title>World results ({html.escape(b['name'])})</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse}</style>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
            + "".join(f"<h2>{html.escape(h)}</h2>{tab}" for _, h, _, tab in sections)
            + "".join(f"<p>{html.escape(n)}</p>" for n in notes))
    idx = out / "index.html"
    idx.write_text(page)
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
        rows.append({"method": mid, "trainer_method": METHOD_SPECS[mid][0],
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
                        job, tables, [(f"Scorer `{k}` ({dict(T2I_SCORERS)[k]})", f"Scorer {k}",
                                       _md_table(head, _rows_t2i(t)), _html_table(head, _rows_t2i(t)))
                                      for k, t in tables.items()],
                        extra)


# ---- the job ------------------------------------------------------------------------------------------------------
def run_world_job(out_dir: str | Path, budget: str | JobBudget = "demo", methods: Sequence[str] | None = None,
                  seed: int = 0, base_model: str | Path | None = None, task: str = "compositional",
                  **budget_overrides: Any) -> dict[str, Path]:
    """Run (or resume) the world job into ``out_dir``; return the table paths (``markdown``, ``json``, ``html``).
    ``task``: "compositional" (SG-IoU table) or "t2i" (win-rates vs base on world Pick-a-Pic pairs)."""
    import torch

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    b = resolve_budget(budget, **budget_overrides)
    methods = list(methods or (DEMO_METHODS if b.name == "demo" else ALL_METHODS))
    unknown = [m for m in methods if m not in METHOD_SPECS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(METHOD_SPECS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(b.torch_threads)
    t0 = time.perf_counter()
    _log(f"budget {b.name}, methods {', '.join(methods)}, seed {seed}, out {out}"
         + ("" if task == "compositional" else f", task {task}"))
    base = stage_base(out, base_model)
    job = {"budget": asdict(b), "methods": methods, "seed": seed,
           "base": json.loads((base / "snapshot.json").read_text())}
    if task != "compositional":  # the compositional job.json stays as it was
        job["task"] = task
    job_file = out / "job.json"
    if job_file.exists():
        old = json.loads(job_file.read_text())
        if old.get("task", "compositional") != task:
            raise ValueError(f"{out} holds a {old.get('task', 'compositional')} job; use a new out_dir for the "
                             f"{task} task")
        if old["budget"] != job["budget"] or old["seed"] != seed:
            raise ValueError(f"{out} holds a job with another budget/seed ({old['budget']['name']}, seed "
                             f"{old['seed']}); use a new out_dir or delete it")
    job_file.write_text(json.dumps(job, indent=2) + "\n")
    if task == "t2i":
        base = stage_t2i_base(out, base)
    pairs = stage_pairs(out, base, b, seed, task)
    for mid in methods:
        run = stage_train(out, mid, base, pairs, b, seed, task)
        stage_eval(out, mid, run / "final", base, b, seed, task)
    paths = (write_table if task == "compositional" else write_table_t2i)(out, job, methods)
    _log(f"finished in {time.perf_counter() - t0:.0f} s")
    _log(f"results table: {paths['markdown']} (JSON {paths['json'].name}); index with per-method reports: "
         f"{paths['html']}")
    return paths


