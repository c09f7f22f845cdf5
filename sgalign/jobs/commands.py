"""The user commands' work behind their argument parsing (top layer: calls the typed APIs below it).

``train_command``: resolve train.py's defaults, ``model.path=auto`` included (``resolve_model_path``: the world
model or a tiny random-init fallback), then train: model resolution lives here so the trainer takes a folder.

``evaluate_command``: resolve evaluate.py's defaults (``training.runs.evaluation_plan``), claim the output folder
for this evaluation (identity = protocol + model and baseline content hashes; another evaluation's folder is
refused unless ``overwrite``; the same one with a finished results.json is skipped), hold its lock, run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from ..evaluation.protocol import load_protocol
from ..evaluation.report import write_report
from ..evaluation.run import RESULTS_NAME, evaluate
from ..evaluation.sampling import check_model_folder
from ..hashing import folder_sha256, identity_hash
from ..outdir import claim, locked, refuse_inputs
from ..training.config import TrainConfig
from ..training.runs import evaluation_plan
from ..training.trainer import TrainResult, resolve_run_paths, train
from ..world import paths as world_paths


def _model_folder(path: str | None, what: str, task: str) -> None:
    """A one-line error naming the missing component (e.g. vae/), a class the task cannot run, or a truncated /
    other-architecture weights file, before any loading or sampling starts (the baseline's too)."""
    if path is None:
        return
    if not (Path(path) / "model_index.json").is_file():
        raise UserError(f"{what} {path}: not a model folder (no model_index.json); pass a diffusers pipeline folder, "
                        "e.g. a training run's final/")
    check_model_folder(path, task)


def evaluate_command(task: str, model: str | None = None, baseline: str | None = None, out: str | None = None,
                     config: str | None = None, overrides: Sequence[str] = (), overwrite: bool = False,
                     command: str | None = None) -> dict[str, Any]:
    """Returns {plan, results, paths, skipped}."""
    plan = evaluation_plan(task, model, baseline, out, config)
    protocol = load_protocol(plan["config"], list(overrides), task=task)
    refuse_inputs({"--out": plan["out"]}, {"--model": plan["model"], "--baseline": plan["baseline"],
                                           "inputs.path": protocol.inputs.path, "--config": plan["config"]},
                  emptied=overwrite)
    _model_folder(plan["model"], "--model", task)
    _model_folder(plan["baseline"], "--baseline", task)
    ident = {"protocol": protocol.model_dump(mode="json"), "model": folder_sha256(plan["model"]),
             "baseline": folder_sha256(plan["baseline"]) if plan["baseline"] else None}
    run_id = identity_hash(ident)
    outp = Path(plan["out"])
    with locked(outp, "evaluate.py"):
        state = claim(outp, "evaluate", run_id, {"model": plan["model"], "baseline": plan["baseline"],
                                                 "chain": plan["chain"]}, what="--out", overwrite=overwrite)
        if state == "same" and (outp / RESULTS_NAME).is_file():
            results = json.loads((outp / RESULTS_NAME).read_text(encoding="utf-8"))
            return {"plan": plan, "results": results, "paths": write_report(outp, results), "skipped": True}
        results = evaluate(plan["model"], outp, protocol, baseline=plan["baseline"], command=command,
                           chain=plan["chain"])
        return {"plan": plan, "results": results, "paths": write_report(outp, results), "skipped": False}


RANDOM_INIT_ARCH = {"compositional": "sd15-sg", "t2i": "sd15"}  # model.path=auto's fallback when tiny_arch is None


def resolve_model_path(cfg: TrainConfig) -> None:
    """``model.path=auto`` -> a model folder, in place: the world SD1.5-SG once it exists; else a tiny RANDOM-INIT
    model (``model.tiny_arch``, by task when None; seeded by ``trainer.seed``) generated beside the run folder as
    ``<run>.base-model-random-init-<arch>-seed<s>`` and labelled ``model.random_init``. It is made there, not inside
    the run folder, because the trainer claims (and with --overwrite empties) that folder; the same arch and seed
    give the same weights, so reruns reuse it. Call after ``resolve_run_paths`` (the run folder must be known)."""
    from ..pipelines.tiny import make_tiny  # heavy (torchvision, peft: ~2 s): only when no world model exists

    m = cfg.model
    if m.path != "auto":
        return
    main = int(os.environ.get("RANK", "0")) == 0  # under accelerate every process resolves; one logs
    world = world_paths.world_model_path()  # through the module: a test stands in for it
    if (world / "model_index.json").exists():
        m.path = str(world)
        if main:
            print(f"[sgalign] model.path=auto -> world SD1.5-SG at {world}", flush=True)
        return
    arch = m.tiny_arch or RANDOM_INIT_ARCH[cfg.task]
    run = Path(cfg.trainer.output_dir)
    out = run.with_name(f"{run.name}.base-model-random-init-{arch}-seed{cfg.trainer.seed}")
    if not (out / "model_index.json").exists():
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # whole or absent: renamed into place when complete
        shutil.rmtree(tmp, ignore_errors=True)
        make_tiny(arch, tmp, seed=cfg.trainer.seed)
        try:
            tmp.rename(out)
        except OSError:  # another process made it first (the same seeded weights)
            shutil.rmtree(tmp, ignore_errors=True)
    m.path, m.random_init = str(out), True
    if main:
        print(f"[sgalign] RANDOM-INIT base model: no world SD1.5-SG at {world} yet; using a tiny random-init {arch} "
              f"generated into {out} (plumbing only, meaningless weights)", flush=True)


def train_command(cfg: TrainConfig, overwrite: bool = False, config_file: str | Path | None = None) -> TrainResult:
    """``scripts/train.py``'s work: the run's paths resolved (a missing dataset refused before anything is written),
    then ``model.path=auto``, then the trainer on a config whose model is a folder (``config_file``: the YAML it came
    from, an input the run must not write into)."""
    resolve_run_paths(cfg)
    resolve_model_path(cfg)
    return train(cfg, overwrite=overwrite, config_file=config_file)
