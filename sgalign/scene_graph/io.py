"""LAION-SG split files: record-by-record validation, rejects that are reported and kept, never dropped.

``load_split(path)`` returns every valid record plus one ``Reject`` per invalid one (index in the file, the
record's ``img_id`` when it has one, the failing field and the reason). ``rejects_path`` writes the rejects as
JSON lines with the raw record, so nothing in the input is lost. Only a file that is not a JSON array of
records at all is a fatal error (naming the file).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from ..errors import UserError
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
    if not isinstance(raw, dict):
        errors: list[tuple[str, str]] = [("", f"record must be a JSON object, got {type(raw).__name__}")]
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


def read_split_array(path: str | os.PathLike[str]) -> list[Any]:
    """Raw records of a split file (one JSON array, LAION-SG's format)."""
    p = Path(path)
    if not p.is_file():
        raise SplitFileError(f"{p}: no such file (expected a LAION-SG split: one JSON array of records)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SplitFileError(f"{p}: not valid JSON ({exc}); a LAION-SG split is one JSON array of records") from None
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
        from tqdm.auto import tqdm

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
    write_text_atomic(path, "".join(json.dumps(r.to_json_dict(), ensure_ascii=False) + "\n" for r in rejects))


def write_split(records: list[LaionSGRecord | dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write records as a LAION-SG split file (one JSON array), atomically."""
    data = [r.to_json_dict() if isinstance(r, LaionSGRecord) else r for r in records]
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=1))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
