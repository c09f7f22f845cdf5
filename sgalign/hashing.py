"""File identity and atomic file IO, one home for the library and data_builders.

* ``file_sha256`` / ``folder_sha256``: content hashes; ``verified_sha256``: ``file_sha256`` that may skip the
  rehash when a stamp written after an earlier hash still matches the file's size, mtime, ctime and inode; (a model folder's identity: sha256 over (relative path, file
  sha256) of every file, sorted by path; hidden files and README.md left out: they do not change the model);
* ``model_index`` / ``is_random_init`` / ``read_record``: what a model folder says about itself (its
  ``model_index.json``, the random-init mark tiny factories write there, its ``training_record.json``);
* ``identity_hash``: a run's short id over a JSON-able mapping;
* ``write_atomic`` / ``write_text_atomic`` / ``write_json_atomic`` / ``write_jsonl_atomic``: a temporary file in the same folder, fsync, then
  ``os.replace``: readers see the old file or the complete new one, never a partial one;
* ``replace_dir``: a folder written whole under a temporary name, then moved into place.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

MODEL_INDEX = "model_index.json"
TRAINING_RECORD = "training_record.json"
RANDOM_INIT_KEY = "_sgalign_random_init"  # model_index.json key: random weights (sgalign.pipelines.tiny writes it)


def file_sha256(path: str | Path) -> str:
    """sha256 of one file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


STAMPS_ENV = "SGALIGN_HASH_STAMPS"  # folder of hash stamps; "off": always rehash
_STAMP_MIN_AGE_NS = 2_000_000_000  # a file written this recently may still change within one timestamp tick


def _stamp_dir() -> Path | None:
    env = os.environ.get(STAMPS_ENV)
    if env == "off":
        return None
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sgalign" / "sha256-stamps"


def verified_sha256(path: str | Path) -> str:
    """``file_sha256(path)``, taken from a stamp when one exists for the same file (same device, inode, size, mtime
    and ctime: any write, rename onto it or ``touch`` changes the ctime, which no user can set back). Stamps live
    outside the data (``$SGALIGN_HASH_STAMPS``, default ~/.cache/sgalign/sha256-stamps): reading a dataset never
    writes into it. A file changed less than 2 s ago is hashed and not stamped."""
    path = Path(path)
    st = os.stat(path)
    key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    folder = _stamp_dir()
    stamp = None if folder is None else \
        folder / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.json"
    if stamp is not None:
        try:
            rec = json.loads(stamp.read_text(encoding="utf-8"))
            if rec.get("key") == key and isinstance(rec.get("sha256"), str):
                return rec["sha256"]
        except (OSError, ValueError):
            pass
    digest = file_sha256(path)
    st = os.stat(path)
    fresh = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _STAMP_MIN_AGE_NS
    if stamp is not None and not fresh and key == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]:
        try:
            write_text_atomic(stamp, json.dumps({"path": str(path.resolve()), "key": key, "sha256": digest}))
        except OSError:  # a read-only cache only costs a rehash next time
            pass
    return digest


def folder_sha256(path: str | Path, *, skip_nested_readme: bool = False) -> str:
    """sha256 over (relative path, file sha256) of every file, sorted by path; hidden files and the top-level
    README.md are left out (they do not change the model). ``skip_nested_readme``: also every README.md below the
    top (the rule ``data_builders`` has always hashed model folders by; kept so recorded builds still resume)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = f.relative_to(root).parts
        rel = f.relative_to(root).as_posix()
        if any(part.startswith(".") for part in parts) or rel == "README.md" \
                or (skip_nested_readme and f.name == "README.md"):
            continue
        h.update(f"{rel}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def model_index(folder: str | Path) -> dict[str, Any]:
    """A model folder's ``model_index.json``."""
    return json.loads((Path(folder) / MODEL_INDEX).read_text(encoding="utf-8"))


def is_random_init(index: Mapping[str, Any]) -> bool:
    """The folder's weights are random (tests and plumbing only): its ``model_index.json`` carries the mark."""
    return RANDOM_INIT_KEY in index


def read_record(folder: str | Path, name: str = TRAINING_RECORD) -> dict[str, Any] | None:
    """The JSON record ``name`` next to a model's files (by default its training record); None where there is none."""
    path = Path(folder) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def identity_hash(obj: Any) -> str:
    """A short stable id of a JSON-able value (sorted keys): the same settings give the same id."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """``write(tmp_path)`` into a temporary file next to ``path``, fsync, then rename onto ``path``; the temporary
    file is removed on any failure. The file gets the mode of an ordinary new file (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_dir(tmp: str | Path, dst: str | Path) -> None:
    """Move the finished folder ``tmp`` onto ``dst`` (the old ``dst`` is removed only once the new one is in place)."""
    tmp, dst = Path(tmp), Path(dst)
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj: Any, *, sort_keys: bool = False, ensure_ascii: bool = True,
                      allow_nan: bool = True) -> Path:
    """``obj`` as indented JSON (indent 1), serialised before anything is written (a serialisation error never
    touches ``path``)."""
    text = json.dumps(obj, indent=1, sort_keys=sort_keys, ensure_ascii=ensure_ascii, allow_nan=allow_nan) + "\n"
    return write_text_atomic(path, text)


def json_safe(value: Any) -> Any:
    """``value`` with every nan / inf float as a string ("nan", "inf"): JSON has no such numbers, and a reject's
    raw record or a failure's value may hold one."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_jsonl_atomic(path: str | Path, rows: list[Any]) -> Path:
    """JSON Lines, one row a line, strictly JSON (no bare NaN: ``json_safe``), UTF-8 as is, atomically."""
    text = "".join(json.dumps(json_safe(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    return write_text_atomic(path, text)

