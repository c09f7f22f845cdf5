"""Training run folders: default places, the run record (``run.json``) that chains a run to its data and base
model, and how ``evaluate.py`` finds the latest finished run.

``run.json``: ``run_id`` (a hash of the resolved config minus resume-neutral keys, with the base model's content
hash and the dataset's id in place of their paths), ``task``, ``method``, ``base_model`` {path, sha256},
``dataset`` {path, dataset_id}, ``finished``. The same file is copied into ``final/``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..hashing import identity_hash
from ..outdir import read_record, write_record
from .data import verify_dataset

TRAIN_ROOT = Path("runs") / "train"  # relative to the working directory, as build_pairs' runs/pairs/
RUN_FILE = "run.json"
# build_pairs' default outputs (data_builders.config.DEFAULT_OUT) and the commands that make them
DEFAULT_DATA = {"compositional": "runs/pairs/laion-sg", "t2i": "runs/pairs/pickapic"}
BUILD_COMMAND = {
    "compositional": "python scripts/build_pairs.py --source laion-sg",
    "t2i": "python scripts/build_pairs.py --source world-pickapic --n 2000 --set torch_threads=1 && "
           "python scripts/build_pairs.py --source pickapic --input runs/world-pickapic "
           "--set 'pickapic.relabel={name: world-clip}'",
}
SYNTHETIC = "synthetic"
# keys that do not change what a run computes: where it writes, how often it saves or logs, caches
NEUTRAL_KEYS = ("trainer.output_dir", "checkpointing.resume", "checkpointing.every", "checkpointing.keep",
                "logging", "data.cache_text", "model.random_init")


class DataNotReady(UserError):
    """The configured dataset is missing or unfinished; ``next_command``: the command that builds it (printed whole
    on the ``next:`` line, as the error line is capped at 300 characters)."""

    def __init__(self, message: str, next_command: str | None = None):
        super().__init__(message)
        self.next_command = next_command


def default_output_dir(task: str, method: str) -> Path:
    return TRAIN_ROOT / f"{task}-{method}"


def resolve_data_path(task: str, path: str | None) -> str:
    """``path`` or the task's default build_pairs output; refuse a missing or unfinished dataset, naming the command
    that builds it (training never falls back to other data: placeholder data only with ``data.path=synthetic``)."""
    if path == SYNTHETIC:
        return path
    p = Path(path or DEFAULT_DATA[task])
    default = path is None or p == Path(DEFAULT_DATA[task])
    how = ("run the next: command first" if default else "rerun the build_pairs command that started it") + (
        ", or set data.path=DIR (data.path=synthetic: random placeholder data, plumbing only)")
    nxt = BUILD_COMMAND[task] if default else None
    if not p.exists():
        raise DataNotReady(f"data.path {p}: no dataset there; {how}", nxt)
    if p.is_dir() and (p / "build.json").exists() and not (p / "index.json").exists():
        raise DataNotReady(f"data.path {p}: build_pairs has not finished this dataset (no index.json); {how}", nxt)
    verify_dataset(p)  # before any run folder exists: the data is exactly what its index (and the run id) says
    return str(p)


def dataset_id(path: str | Path) -> str | None:
    """The id build_pairs wrote into a finished folder's index.json (None for other datasets)."""
    idx = Path(path) / "index.json"
    if idx.is_file():
        return json.loads(idx.read_text(encoding="utf-8")).get("dataset_id")
    return None


def _drop(d: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.get(p, {})
    d.pop(last, None)


def run_identity(config: dict[str, Any], base_sha256: str, data_id: str | None) -> tuple[str, dict[str, Any]]:
    """(run_id, identity): the resolved config (``model_dump(mode="json")``) minus resume-neutral keys, with the
    base model and dataset identified by content instead of path."""
    ident = json.loads(json.dumps(config))
    for k in NEUTRAL_KEYS:
        _drop(ident, k)
    ident["model"]["path"] = {"sha256": base_sha256}
    if data_id is not None:
        ident["data"]["path"] = {"dataset_id": data_id}
    return identity_hash(ident), ident


def read_run(run_dir: str | Path) -> dict[str, Any] | None:
    return read_record(run_dir)


def write_run(run_dir: str | Path, record: dict[str, Any]) -> None:
    write_record(run_dir, record)


def latest_finished_run(task: str, root: str | Path = TRAIN_ROOT) -> Path | None:
    """The most recently finished run of ``task`` under ``root`` (``run.json`` finished, ``final/`` exported)."""
    best = None
    for rec_path in Path(root).glob(f"*/{RUN_FILE}"):
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        run = rec_path.parent
        done = rec.get("finished") and (run / "final" / "model_index.json").is_file()
        if rec.get("kind", "train") == "train" and rec.get("task") == task and done:
            key = rec.get("finished_at", 0.0)
            if best is None or key > best[0]:
                best = (key, run)
    return best[1] if best else None


def run_of_model(model: str | Path) -> dict[str, Any] | None:
    """The run record of a model folder: its own copy (``final/run.json``) or its run folder's."""
    m = Path(model)
    return read_run(m) or read_run(m.parent)


EVAL_ROOT = Path("runs") / "eval"
EVAL_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "evaluate"


def evaluation_plan(task: str, model: str | None = None, baseline: str | None = None, out: str | None = None,
                    config: str | None = None) -> dict[str, Any]:
    """What ``evaluate.py --task T`` runs when flags are left out: the latest finished run's ``final/`` against
    the base it was trained from, under the world protocol (``configs/evaluate/world_<task>.yaml``), into
    ``runs/eval/<run folder name>``; ``chain`` links the evaluation to the run, its dataset and base model."""
    if model is None:
        run = latest_finished_run(task)
        if run is None:
            raise UserError(f"no finished {task} run under {TRAIN_ROOT}/: run `python scripts/train.py --task {task}` "
                            "first, or pass --model DIR")
        model = str(run / "final")
    rec = run_of_model(model)
    if baseline is None and rec is not None:
        baseline = rec["base_model"]["path"]
    if out is None:
        m = Path(model)
        name = m.parent.name if rec is not None and m.name == "final" else m.name
        out = str(EVAL_ROOT / name)
    chain = None
    if rec is not None:
        chain = {"run_id": rec["run_id"], "method": rec.get("method"), "dataset_id": rec["dataset"]["dataset_id"],
                 "dataset_path": rec["dataset"]["path"], "base_model_sha256": rec["base_model"]["sha256"],
                 "base_model_path": rec["base_model"]["path"]}
    return {"model": str(model), "baseline": baseline, "out": out,
            "config": config or str(EVAL_CONFIGS / f"world_{task}.yaml"), "chain": chain}


def evaluation_summary(results: dict[str, Any]) -> str:
    """One line of the headline numbers of an evaluate.py results dict (compositional: SG-IoU per key)."""
    try:
        iou = results["metrics"]["iou"]
        parts = []
        for key in list(iou["model"])[:2]:
            m = iou["model"][key]["mean"]["sg_iou"]
            b = iou.get("baseline", {}).get(key, {}).get("mean", {}).get("sg_iou")
            parts.append(f"SG-IoU {key}: model {m:.3f}" + (f" vs base {b:.3f}" if b is not None else ""))
        return "; ".join(parts)
    except (KeyError, TypeError, AttributeError):
        return f"metrics: {', '.join(results.get('metrics', {}))}"
