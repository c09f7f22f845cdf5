"""LAION-SG split files: record-by-record validation, rejects that are reported and kept, never dropped.

``load_split(path)`` returns every valid record plus one ``Reject`` per invalid one (index in the file, the
record's ``img_id`` when it has one, the failing field and the reason). ``rejects_path`` writes the rejects as
JSON lines with the raw record, so nothing in the input is lost. Only a file that is not a JSON array of
records at all is a fatal error (naming the file).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from ..errors import UserError
from ..hashing import write_jsonl_atomic, write_text_atomic
from .schema import LaionSGRecord


DUPLICATE_IMG_ID = "duplicate img_id"  # reason prefix of a repeated img_id (seeds and rows are keyed by img_id)


class SplitFileError(UserError, ValueError):
    """The file as a whole cannot be read as a LAION-SG split (not JSON, not an array)."""


@dataclass(frozen=True)
class Reject:
    index: int  # position of the record in the file (0-based)
    img_id: str | None  # the raw img_id when it was readable, else None
    field: str  # dotted path of the first failing field, e.g. "relations.2.item2" ("" = whole record)
    reason: str
    errors: tuple[tuple[str, str], ...]  # every (field, reason) found
    record: Any  # the raw record, unchanged

    def to_json_dict(self) -> dict[str, Any]:
        return {"index": self.index, "img_id": self.img_id, "field": self.field, "reason": self.reason,
                "errors": [{"field": f, "reason": r} for f, r in self.errors], "record": self.record}

    def __str__(self) -> str:
        return f"record {self.index} (img_id={self.img_id}): {self.field or '<record>'}: {self.reason}"


@dataclass
class SplitLoad:
    path: Path
    records: list[LaionSGRecord] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # file position of each valid record
    rejects: list[Reject] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{len(self.records)} valid, {len(self.rejects)} rejected"


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def validate_record(raw: Any, index: int = 0, require_relations: bool = False) -> LaionSGRecord | Reject:
    """Validate one raw JSON value; returns the record or a ``Reject`` describing every problem."""
    img_id = raw.get("img_id") if isinstance(raw, dict) else None
    img_id = str(img_id) if img_id is not None else None
    dup = _first_duplicate(raw)
    if dup is not None:
        errors: list[tuple[str, str]] = [(dup, "key appears twice in its object (JSON would keep only the last)")]
    elif not isinstance(raw, dict):
        errors = [("", f"record must be a JSON object, got {type(raw).__name__}")]
    else:
        try:
            rec = LaionSGRecord.model_validate(raw)
        except ValidationError as exc:
            errors = []
            for err in exc.errors():
                msg = err["msg"].removeprefix("Value error, ")
                loc = _field_path(err["loc"])
                # model-level checks carry their own dotted field at the start of the message
                if not loc and ": " in msg and msg.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum():
                    loc, msg = msg.split(": ", 1)
                errors.append((loc, msg))
        else:
            if require_relations and not rec.relations:
                errors = [("relations", "no relations (the LAION-SG training loader keeps only records with "
                                        "relations; require_relations=True reproduces that)")]
            else:
                return rec
    return Reject(index, img_id, errors[0][0], errors[0][1], tuple(errors), raw)


class _Duplicates(dict):
    """A JSON object that repeated a key (``duplicate``: the first such key); ``json`` would keep the last value
    silently, so the record is rejected naming the key instead."""

    duplicate: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            obj = _Duplicates(pairs)
            obj.duplicate = k
            return obj
        seen.add(k)
    return dict(pairs)


def _first_duplicate(raw: Any, path: str = "") -> str | None:
    """The dotted path of the first repeated key in a raw JSON value, or None."""
    if isinstance(raw, _Duplicates):
        return f"{path}.{raw.duplicate}" if path else str(raw.duplicate)
    items = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
    for k, v in items:
        hit = _first_duplicate(v, f"{path}.{k}" if path else str(k))
        if hit is not None:
            return hit
    return None


def _bad_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")  # NaN / Infinity: Python's json would take them


def read_split_array(path: str | os.PathLike[str]) -> list[Any]:
    """Raw records of a split file (one JSON array, LAION-SG's format), read as strict JSON: NaN / Infinity
    refused; a repeated key marks its object (``validate_record`` rejects that record, naming the key)."""
    p = Path(path)
    if not p.is_file():
        raise SplitFileError(f"{p}: no such file (expected a LAION-SG split: one JSON array of records)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=_object, parse_constant=_bad_constant)
    except RecursionError:
        raise SplitFileError(f"{p}: JSON nested too deeply to be a LAION-SG split (one JSON array of records)") \
            from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError, as is a NaN constant
        raise SplitFileError(f"{p}: not valid JSON ({str(exc)[:120]}); a LAION-SG split is one JSON array of "
                             "records") from None
    if not isinstance(data, list):
        raise SplitFileError(f"{p}: top-level JSON value is a {type(data).__name__}, expected an array of records")
    return data


def iter_validated(raws: list[Any], require_relations: bool = False) -> Iterator[tuple[int, LaionSGRecord | Reject]]:
    for index, raw in enumerate(raws):
        yield index, validate_record(raw, index, require_relations)


def load_split(path: str | os.PathLike[str], rejects_path: str | os.PathLike[str] | None = None,
               require_relations: bool = False, progress: bool = False) -> SplitLoad:
    """Validate a split file record by record. Valid + rejected always equals the number of records. A record
    repeating an earlier valid record's ``img_id`` is rejected: every stage keys seeds and rows by ``img_id``, and
    this is the one validator (validate_sg.py, build_pairs) whose verdict they all share.

    ``progress`` shows a progress bar on a terminal (LAION-SG's train split has 480k records)."""
    raws = read_split_array(path)
    out = SplitLoad(Path(path))
    results = iter_validated(raws, require_relations)
    if progress:
        from tqdm.auto import tqdm  # heavy (~0.1 s): only with a progress bar; scene_graph stays light

        results = tqdm(results, total=len(raws), desc=f"validating {Path(path).name}", unit="rec", disable=None)
    first: dict[str, int] = {}
    for index, res in results:
        if not isinstance(res, Reject) and res.img_id in first:
            reason = f"{DUPLICATE_IMG_ID}: already used by record {first[res.img_id]} (kept the first)"
            res = Reject(index, res.img_id, "img_id", reason, (("img_id", reason),), raws[index])
        if isinstance(res, Reject):
            out.rejects.append(res)
        else:
            first[res.img_id] = index
            out.records.append(res)
            out.indices.append(index)
    assert len(out.records) + len(out.rejects) == len(raws)
    if rejects_path is not None:
        write_rejects(out.rejects, rejects_path)
    return out


def write_rejects(rejects: list[Reject], path: str | os.PathLike[str]) -> None:
    """Write rejects as JSON lines, atomically (a partial file is never visible under ``path``)."""
    write_jsonl_atomic(path, [r.to_json_dict() for r in rejects])


def write_split(records: list[LaionSGRecord | dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write records as a LAION-SG split file (one JSON array), atomically."""
    data = [r.to_json_dict() if isinstance(r, LaionSGRecord) else r for r in records]
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=1))
