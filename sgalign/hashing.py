"""Content identities: a model folder's hash, and a run's identity hash over a JSON-able mapping."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def folder_sha256(path: str | Path) -> str:
    """sha256 over (relative path, file sha256) of every file, sorted by path; hidden files and the top-level
    README.md are left out (they do not change the model). Same value as ``sgalign.evaluation.run.folder_sha256``."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if any(part.startswith(".") for part in f.relative_to(root).parts) or rel == "README.md":
            continue
        fh = hashlib.sha256()
        with f.open("rb") as fp:
            for chunk in iter(lambda: fp.read(1 << 20), b""):
                fh.update(chunk)
        h.update(f"{rel}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


def identity_hash(obj: Any) -> str:
    """A short stable id of a JSON-able value (sorted keys): the same settings give the same id."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
