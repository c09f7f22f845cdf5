"""Crash-safe sharded output shared by the builders.

A build folder holds ``shard-NNNNN.parquet`` files (the dataset: ``sgalign.training.data.load_table`` reads the
folder), ``index/shard-NNNNN.json`` (one manifest per finished shard), ``build.json`` (the settings the folder was
started with), and once every shard is done ``index.json``, ``summary.json`` and ``rejects.jsonl``.

Every file is written to a hidden temp name in the same folder, fsynced and ``os.replace``d: a file is either
absent or complete. A shard is finished when its parquet file AND its manifest exist (parquet first); anything else
(a leftover temp file, a parquet without manifest) is redone on the next run, deterministically.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from sgalign.errors import UserError
from sgalign.hashing import file_sha256, write_atomic  # noqa: F401 (re-exported)
from sgalign.hashing import folder_sha256 as _folder_sha256
from sgalign.hashing import write_json_atomic as _write_json_atomic
from sgalign.hashing import write_jsonl_atomic as _write_jsonl_atomic
from sgalign.hashing import verified_sha256
from sgalign.outdir import empty, locked

BUILD_FILE, INDEX_FILE, SUMMARY_FILE, REJECTS_FILE = "build.json", "index.json", "summary.json", "rejects.jsonl"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def manifest_path(out: Path, i: int) -> Path:
    return out / "index" / f"shard-{i:05d}.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Manifests, build/summary/index files: sorted keys, UTF-8 as is (the format every recorded build has)."""
    _write_json_atomic(path, obj, sort_keys=True, ensure_ascii=False)


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    _write_jsonl_atomic(path, rows)  # strict JSON Lines: a NaN in a reject's record is written as "nan"


def write_parquet_atomic(path: Path, columns: dict[str, list], features) -> None:
    """One parquet file; the schema carries the ``datasets`` features (``load_dataset("parquet")`` restores them)."""
    import pyarrow.parquet as pq  # heavy (pyarrow, datasets: ~1 s): keeps build_pairs.py --help light
    from datasets import Dataset  # heavy: as pyarrow
    table = Dataset.from_dict(columns, features=features).data.table
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def shard_problem(out: Path, i: int) -> str | None:
    """Why shard ``i`` is not finished (None: it is): its parquet file or manifest is missing or unreadable, or the
    file is not the one the manifest records (size, sha256: truncated, or swapped for another build's shard)."""
    f, m = out / shard_name(i), manifest_path(out, i)
    if not f.is_file() or not m.is_file():
        return "not built" if not f.is_file() and not m.is_file() else \
            f"{f.name if not f.is_file() else m.name} missing"
    try:
        man = read_manifest(out, i)
        want, size = man["sha256"], man.get("size")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"manifest {m} unreadable ({type(e).__name__})"
    if size is not None and f.stat().st_size != size:
        return f"{f.name} is {f.stat().st_size} bytes, its manifest says {size}"
    if verified_sha256(f) != want:
        return f"{f.name} does not have the sha256 its manifest records"
    return None


def is_done(out: Path, i: int) -> bool:
    """Shard ``i`` has its parquet file and manifest (cheap: for the checks while building; a resumed build first
    verifies its shards' contents with ``todo_shards``, and readers verify the folder against ``index.json``)."""
    return (out / shard_name(i)).is_file() and manifest_path(out, i).is_file()


def todo_shards(out: Path, shards: list[int], log=print) -> list[int]:
    """Of ``shards``, the ones to build: unbuilt, or failing verification (logged; their manifest is removed first,
    so no process takes the old manifest for the rebuilt file)."""
    todo = []
    for i in shards:
        why = shard_problem(out, i)
        if why is None:
            continue
        if why != "not built":
            log(f"{out / shard_name(i)}: {why}; rebuilding shard {i}")
            manifest_path(out, i).unlink(missing_ok=True)
        todo.append(i)
    return todo


def read_manifest(out: Path, i: int) -> dict[str, Any]:
    return json.loads(manifest_path(out, i).read_text(encoding="utf-8"))


def index_shards(out: Path, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``index.json``'s shard list: every shard's file, rows, sha256 and size (what readers verify the folder by)."""
    return [{"shard": m["shard"], "file": m["file"], "rows": m["rows"], "sha256": m["sha256"],
             "size": (out / m["file"]).stat().st_size} for m in manifests]


def folder_sha256(folder: Path) -> str:
    """A model folder's content hash as builds record it (README.md left out at every depth, not only the top)."""
    return _folder_sha256(folder, skip_nested_readme=True)


class BuildMismatch(UserError, ValueError):
    """An output folder holds a build with other settings."""


def check_or_write_build(out: Path, build: dict[str, Any], overwrite: bool = False, world_size: int = 1) -> None:
    """First run: record ``build``; later runs (resume, other ranks): it must be identical. A folder of another
    build, or with other files and no ``build.json``, is refused unless ``overwrite`` (one process only), which
    empties it first."""
    p = out / BUILD_FILE
    want = json.loads(json.dumps(build))
    if p.is_file():
        try:
            old = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            old = {"unreadable": str(p)}
        if old == want:
            check_no_strays(out, want.get("num_shards"))
            return
        diff = sorted(k for k in set(old) | set(want) if old.get(k) != want.get(k))
        problem = f"{out} holds a build with other settings (differ: {diff}; see {p})"
    elif [c for c in out.iterdir() if not c.name.startswith(".lock")]:
        problem = f"{out} holds files that are not a build_pairs build (no {BUILD_FILE})"
    else:
        write_json_atomic(p, build)
        return
    if not overwrite:
        raise BuildMismatch(f"{problem}: rerun with the same config/input/model to resume it, choose another --out, "
                            "or pass --overwrite to delete its contents and start clean")
    if world_size > 1:
        raise BuildMismatch(f"{problem}: --overwrite empties the folder, which is only safe with one process; "
                            "delete it by hand or choose another --out")
    empty(out)
    write_json_atomic(p, build)


def check_no_strays(out: Path, num_shards: int | None) -> None:
    """A resumed build folder holds only its own shards: another data file there (a copy, another build's shard)
    would be read by the trainer, so it is refused, naming the file."""
    if not isinstance(num_shards, int):
        return
    from sgalign.training.data import data_files  # heavy (sgalign.training loads diffusers): as pyarrow
    mine = {shard_name(i) for i in range(num_shards)}
    for f in data_files(out):
        if f.name not in mine:
            raise BuildMismatch(f"{f}: not a shard of this build ({num_shards} shards); remove it, or pass "
                                "--overwrite to delete the folder's contents and start clean")


@contextlib.contextmanager
def owned(out: Path, what: str, rank: int, world_size: int) -> Iterator[None]:
    """This rank's exclusive lock on ``out`` (ranks of one launch build disjoint shards side by side)."""
    with locked(out, what, suffix=f"-rank{rank}-of-{world_size}"):
        yield


def remove_stale_temps(out: Path) -> int:
    """Temp files of shard writes killed part-way (call only once every shard is finished)."""
    stale = [*out.glob(".shard-*.tmp"), *(out / "index").glob(".shard-*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes: ``accelerate launch`` / torchrun set RANK and WORLD_SIZE;
    a plain run is rank 0 of 1."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world
