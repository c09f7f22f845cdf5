"""The end-to-end world job: build pairs -> train each method -> evaluate each vs the base -> one results table.

Budgets, method ids and the stages' typed configs are in ``jobs/specs.py``; the tables in ``jobs/tables.py``.

    run_world_job("runs/world-demo", budget="demo")                      # scripts/demo.py (the README's main job)
    run_world_job("runs/world-table", budget="table", methods=ALL_METHODS)  # scripts/bench_world.py

Stages, each skipped on a rerun once finished (so a killed job is resumed by running the same call again):

1. ``base/``: a snapshot (copy) of the base SG model -- the world SD1.5-SG unless ``base_model`` is given -- so that
   every method starts from, and is compared with, the same weights even if the world model is retrained meanwhile.
2. ``pairs/``: ``scripts/build_pairs.py --source shapes`` on the world *train* split (K candidates per graph from
   the base, scored by the world reward); finished when ``pairs/index.json`` exists (build_pairs resumes by shard).
   ``pairs-gold/`` / ``pairs-shuffled/``: for method ids ``<method>@gold`` / ``<method>@shuffled``, the ceiling and
   floor datasets derived from ``pairs/`` (``data_builders.variants``), built once and shared by the methods.
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
2. ``pickapic/``: the world Pick-a-Pic file (``data_builders.world_pickapic``: ``annotations`` train-split captions x 2
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

import dataclasses
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from data_builders.build import build_pairs
from data_builders.variants import derive_variant
from data_builders.world_pickapic import WorldPickapicConfig, build_world_pickapic, write_text_only_view

from ..evaluation.report import write_report
from ..evaluation.run import evaluate
from ..hashing import folder_sha256, is_random_init, model_index, read_record
from ..progress import quiet_library_bars
from ..world.paths import world_model_path
from .specs import (ALL_METHODS, BUDGETS, DEMO_METHODS, METHOD_SPECS, PAIRS_VARIANTS,  # noqa: F401 (API)
                    T2I_GUIDANCE, TASKS, JobBudget, eval_protocol, pairs_command, pairs_config, resolve_budget,
                    split_method_id, train_config, train_overrides)
from .tables import write_table, write_table_t2i


def _log(msg: str) -> None:
    print(f"[world-job] {msg}", flush=True)


def _done(stage: str, dst: Path, *files: str) -> bool:
    """True (and logged) when the stage's output ``dst`` holds all of ``files``: the stage is skipped."""
    if all((dst / f).exists() for f in files):
        _log(f"[{stage}] done: {dst} (skipped)")
        return True
    return False


def _build_pairs(dst: Path, base: Path | None, b: JobBudget, seed: int, task: str, input: Path | None = None):
    """``build_pairs`` with the job's config; an unfinished dataset afterwards is an error naming the command."""
    build_pairs(pairs_config(base, b, seed, task), dst, input=input, progress=False)
    if not (dst / "index.json").exists():
        raise RuntimeError(f"build_pairs left {dst} unfinished: {pairs_command(dst, base, b, seed, task, input)}")


# ---- stages -------------------------------------------------------------------------------------------------------
def stage_base(out: Path, base_model: str | Path | None) -> Path:
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
    record = read_record(src)
    snap = {"source_name": src.name, "source_sha256": folder_sha256(dst), "training_record": record,
            "random_init": is_random_init(model_index(src))}
    (dst / "snapshot.json").write_text(json.dumps(snap, indent=2) + "\n")
    state = "complete" if record and record.get("complete") else "INTERMEDIATE/unknown"
    _log(f"[base] snapshot of {src.name} -> {dst} (training record: {state})")
    return dst


def stage_t2i_base(out: Path, base: Path) -> Path:
    """``base-t2i/``: the base snapshot's text path as a ``StableDiffusionPipeline`` folder (written atomically)."""
    dst = out / "base-t2i"
    if _done("base-t2i", dst, "model_index.json"):
        return dst
    write_text_only_view(base, dst)
    _log(f"[base-t2i] text path of {base.name} (no SG encoder) as a StableDiffusionPipeline folder -> {dst}")
    return dst


def stage_pickapic(out: Path, base: Path, b: JobBudget, seed: int) -> Path:
    dst = out / "pickapic"
    if _done("pickapic", dst, "index.json"):
        return dst
    _log(f"[pickapic] {b.annotations} world train captions x 2 seeds ({b.gen_steps} DDIM steps), world-reward "
         "labels ...")
    cfg = WorldPickapicConfig(n=b.annotations, seed=seed, steps=b.gen_steps, guidance=T2I_GUIDANCE)
    build_world_pickapic(dst, cfg, base, progress=False, log=lambda m: _log(f"[pickapic] {m}"))
    return dst


def stage_pairs(out: Path, base: Path, b: JobBudget, seed: int, task: str = "compositional") -> Path:
    dst = out / "pairs"
    if _done("pairs", dst, "index.json"):
        return dst
    if task == "t2i":
        return _pairs_t2i(out, dst, base, b, seed)
    _log(f"[pairs] building {b.annotations} world train graphs x {b.k} candidates ({b.gen_steps} DDIM steps) ...")
    t0 = time.perf_counter()
    _build_pairs(dst, base, b, seed, task)
    _log(f"[pairs] built in {time.perf_counter() - t0:.0f} s -> {dst}")
    return dst


def stage_pairs_variant(out: Path, pairs: Path, variant: str, seed: int) -> Path:
    """``pairs-<variant>/``: the gold or shuffled dataset derived from ``pairs/`` (built once, shared by methods)."""
    dst = out / f"pairs-{variant}"
    if _done(f"pairs-{variant}", dst, "index.json"):
        return dst
    s = derive_variant(pairs, dst, variant, seed=seed)
    _log(f"[pairs-{variant}] {s['annotations']['built']} graphs, {s['annotations_with_a_pair']} with a pair -> {dst}")
    return dst


def _pairs_t2i(out: Path, dst: Path, base: Path, b: JobBudget, seed: int) -> Path:
    pickapic = stage_pickapic(out, base, b, seed)
    t0 = time.perf_counter()
    _build_pairs(dst, None, b, seed, "t2i", input=pickapic)
    summary = json.loads((dst / "summary.json").read_text())
    if summary["pairs"] == 0:
        raise RuntimeError(f"{dst}: no untied pair among {summary['input_rows']} world Pick-a-Pic rows (every "
                           "reward pair tied); raise the budget's annotations or gen_steps")
    _log(f"[pairs] {summary['pairs']} pairs ({summary['ties_dropped']} ties dropped) in "
         f"{time.perf_counter() - t0:.0f} s -> {dst}")
    return dst


def stage_train(out: Path, method_id: str, base: Path, pairs: Path, b: JobBudget, seed: int,
                task: str = "compositional") -> Path:
    from ..training.checkpoint import latest_checkpoint  # heavy (diffusers, accelerate): keeps world_job light
    from ..training.trainer import train

    run = out / "train" / method_id
    if _done(f"train {method_id}", run, "final/model_index.json", "summary.json"):
        return run
    argv = train_overrides(method_id, run, base, pairs, b, seed, task)
    resume = None
    if run.exists() and latest_checkpoint(run) is not None:
        resume = "latest"
        argv += ["--resume", resume]
        _log(f"[train {method_id}] resuming {run} from its last checkpoint")
    elif run.exists():
        shutil.rmtree(run)  # started but nothing saved: start clean (metrics.jsonl would double up)
    cfg = train_config(method_id, run, base, pairs, b, seed, task, resume=resume)
    _log(f"[train {method_id}] {cfg.trainer.max_steps} steps x {b.batch_size} pairs, lr {cfg.optimizer.lr:g} per "
         f"pair, seed {seed} ...")
    res = train(cfg)
    (run / "job_command.txt").write_text("python scripts/train.py " + " ".join(argv) + "\n")
    _log(f"[train {method_id}] {res.step} steps in {res.summary['seconds']:.0f} s, "
         f"{res.summary['unet_forwards_per_pair']:.1f} UNet fwd/pair -> {run / 'final'}")
    return run


def stage_eval(out: Path, method_id: str, model: Path, base: Path, b: JobBudget, seed: int,
               task: str = "compositional") -> Path:
    dst = out / "eval" / method_id
    if _done(f"eval {method_id}", dst, "results.json", "report.html"):
        return dst
    what = "graphs" if task == "compositional" else "prompts"
    _log(f"[eval {method_id}] {b.eval_graphs} {b.eval_split} {what} x {len(b.eval_seeds)} seeds, {b.eval_steps} "
         "DDIM steps, vs base ...")
    protocol = eval_protocol(b, seed, task)
    t0 = time.perf_counter()
    results = evaluate(model, dst, protocol, baseline=base, image_cache=out / "eval" / ".image-cache",
                       command=f"sgalign.jobs.world_job.run_world_job (budget {b.name}, method {method_id}"
                               + ("" if task == "compositional" else f", task {task}") + ")")
    write_report(dst, results)
    _log(f"[eval {method_id}] {time.perf_counter() - t0:.0f} s -> {dst / 'report.html'}")
    return dst


# ---- the job ------------------------------------------------------------------------------------------------------
def run_world_job(out_dir: str | Path, budget: str | JobBudget = "demo", methods: Sequence[str] | None = None,
                  seed: int = 0, base_model: str | Path | None = None, task: str = "compositional",
                  **budget_overrides: Any) -> dict[str, Path]:
    """Run (or resume) the world job into ``out_dir``; return the table paths (``markdown``, ``json``, ``html``).
    ``task``: "compositional" (SG-IoU table) or "t2i" (win-rates vs base on world Pick-a-Pic pairs)."""
    import diffusers  # noqa: F401  heavy: keeps world_job light; here before quiet_library_bars, which then silences it

    quiet_library_bars()
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    b = resolve_budget(budget, **budget_overrides)
    methods = list(methods or (DEMO_METHODS if b.name == "demo" else ALL_METHODS))
    for m in methods:
        if split_method_id(m)[1] is not None and task != "compositional":
            raise ValueError(f"method {m!r}: pairs variants (@{' / @'.join(PAIRS_VARIANTS)}) exist for the "
                             "compositional task only")
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
        # fields added to JobBudget since the job started count as their defaults (old jobs still resume)
        old_budget = {**{k: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                         for k, f in JobBudget.__dataclass_fields__.items() if k not in old["budget"]},
                      **old["budget"]}
        if old_budget != job["budget"] or old["seed"] != seed:
            raise ValueError(f"{out} holds a job with another budget/seed ({old['budget']['name']}, seed "
                             f"{old['seed']}); use a new out_dir or delete it")
    job_file.write_text(json.dumps(job, indent=2) + "\n")
    if task == "t2i":
        base = stage_t2i_base(out, base)
    pairs = stage_pairs(out, base, b, seed, task)
    for mid in methods:
        variant = split_method_id(mid)[1]
        data = pairs if variant is None else stage_pairs_variant(out, pairs, variant, seed)
        run = stage_train(out, mid, base, data, b, seed, task)
        stage_eval(out, mid, run / "final", base, b, seed, task)
    paths = (write_table if task == "compositional" else write_table_t2i)(out, job, methods)
    _log(f"finished in {time.perf_counter() - t0:.0f} s")
    _log(f"results table: {paths['markdown']} (JSON {paths['json'].name}); index with per-method reports: "
         f"{paths['html']}")
    return paths


