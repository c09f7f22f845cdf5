"""The user commands' work behind their argument parsing (top layer: calls the typed APIs below it).

``evaluate_command``: resolve evaluate.py's defaults (``training.runs.evaluation_plan``), claim the output folder
for this evaluation (identity = protocol + model and baseline content hashes; another evaluation's folder is
refused unless ``overwrite``; the same one with a finished results.json is skipped), hold its lock, run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError


def _model_folder(path: str | None, what: str, task: str) -> None:
    """A one-line error naming the missing component (e.g. vae/), a class the task cannot run, or a truncated /
    other-architecture weights file, before any loading or sampling starts (the baseline's too)."""
    if path is None:
        return
    if not (Path(path) / "model_index.json").is_file():
        raise UserError(f"{what} {path}: not a model folder (no model_index.json); pass a diffusers pipeline folder, "
                        "e.g. a training run's final/")
    from ..evaluation.sampling import check_model_folder
    check_model_folder(path, task)


def evaluate_command(task: str, model: str | None = None, baseline: str | None = None, out: str | None = None,
                     config: str | None = None, overrides: Sequence[str] = (), overwrite: bool = False,
                     command: str | None = None) -> dict[str, Any]:
    """Returns {plan, results, paths, skipped}."""
    import json

    from ..evaluation.protocol import load_protocol
    from ..evaluation.report import write_report
    from ..evaluation.run import RESULTS_NAME, evaluate
    from ..hashing import folder_sha256, identity_hash
    from ..outdir import claim, locked, refuse_inputs
    from ..training.runs import evaluation_plan

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
