"""Output folders: one folder holds one run, one process writes it at a time, and no output replaces an input.

* ``claim(out, kind, run_id)``: ``out/run.json`` records which run owns the folder. The same run resumes; a
  different one is refused (``RunMismatch``, exit 2) unless ``overwrite``, which empties the folder first.
* ``locked(out)``: an exclusive ``flock`` on ``out/.lock<suffix>`` for the life of the command; a second process
  gets ``FolderBusy`` at once instead of doing the same work twice. The lock dies with its process (kill -9 too).
* ``refuse_inputs(outputs, inputs)``: an output path that is an input, lies inside one (a model folder, a dataset
  folder: writing there modifies the input), or, when it will be emptied, contains one, is refused
  (``OutputIsInput``), before anything is created.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import UserError

RUN_FILE = "run.json"


class RunMismatch(UserError):
    """The output folder belongs to another run."""


class FolderBusy(UserError):
    """Another process is writing into the output folder."""


class OutputIsInput(UserError):
    """An output path would replace an input."""


def read_record(out: str | Path) -> dict[str, Any] | None:
    p = Path(out) / RUN_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def write_record(out: str | Path, record: Mapping[str, Any]) -> None:
    p = Path(out) / RUN_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(record), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def empty(out: Path) -> None:
    """Remove everything in ``out`` but its lock files (held by this process)."""
    for child in out.iterdir():
        if child.name.startswith(".lock"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def check_claim(out: str | Path, kind: str, run_id: str, what: str, overwrite: bool = False,
                flag: str = "--overwrite") -> str:
    """What claiming ``out`` for run ``run_id`` means, without writing: ``"new"`` (absent or empty folder),
    ``"same"`` (this run's folder: resume), ``"overwrite"`` (another run's, to be emptied). Raises
    ``RunMismatch`` for another run's folder without ``overwrite``. ``what``: how to name the folder's key."""
    out = Path(out)
    if not out.exists() or not [c for c in out.iterdir() if not c.name.startswith(".lock")]:
        return "new"
    rec = read_record(out)
    if rec is not None and rec.get("kind") == kind and rec.get("run_id") == run_id:
        return "same"
    if overwrite:
        return "overwrite"
    who = (f"another {rec.get('kind', 'run')} run ({rec.get('run_id')})" if rec is not None
           else "files of an unidentified run (no run.json)")
    raise RunMismatch(f"{what} {out} holds {who}, not this run ({run_id}); choose another {what}, or pass "
                      f"{flag} to delete its contents and start clean")


def claim(out: str | Path, kind: str, run_id: str, record: Mapping[str, Any] | None = None,
          what: str = "--out", overwrite: bool = False) -> str:
    """``check_claim`` then act on it: empty the folder on ``"overwrite"``, write ``run.json`` unless ``"same"``."""
    state = check_claim(out, kind, run_id, what, overwrite)
    out = Path(out)
    if state == "overwrite":
        empty(out)
    if state != "same":
        write_record(out, {**(record or {}), "kind": kind, "run_id": run_id})
    return state


@contextlib.contextmanager
def locked(out: str | Path, what: str, suffix: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (created if missing) while the block runs; ``FolderBusy`` when another
    process holds it. ``suffix`` separates locks that may be held together (e.g. one per build rank)."""
    import fcntl  # optional dependency: Unix-only stdlib module; the rest of outdir works without it
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / f".lock{suffix}", "a+")
    except PermissionError:
        raise UserError(f"output folder {out}: not writable (permission denied); choose a writable folder") from None
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise FolderBusy(f"{out} is being written by another {what} (pid {pid}); wait for it to finish, or "
                             "choose another output folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def _resolved(p: str | Path) -> Path:
    return Path(p).expanduser().resolve()


def refuse_inputs(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None],
                  emptied: bool = False) -> None:
    """Refuse an output that resolves to an input (e.g. ``--rejects`` = the split file) or lies inside one (e.g.
    ``trainer.output_dir`` under ``model.path``: the run would be written into the base model, and a copy of the
    model into itself); with ``emptied`` (the output folder will be deleted or emptied), also one that contains
    an input. Paths are compared resolved (symlinks, ``..``), whether or not the output exists yet."""
    for oname, o in outputs.items():
        if o is None:
            continue
        ro = _resolved(o)
        for iname, i in inputs.items():
            if i is None:
                continue
            ri = _resolved(i)
            rel = "is" if ro == ri else "is inside" if ri in ro.parents else \
                "contains" if emptied and ro in ri.parents else None
            if rel is not None:
                raise OutputIsInput(f"{oname} {o} {rel} the input {iname} {i}: writing there would modify the "
                                    f"input; choose another {oname}")
