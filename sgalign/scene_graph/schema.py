"""Pydantic models of LAION-SG annotation records, with the real JSON types.

A split file is one JSON array of records (see DATA_AND_METRICS.md). Types are strict: ``img_id`` is a string of
digits and ``score`` a float written as a string, exactly as the released files; integers are never accepted
for strings (or booleans for integers), so a file that drifted from the schema is caught, not coerced.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
# ids become int64 tensors and dataset columns downstream: a larger value would overflow there, so it is refused here
Id = Annotated[StrictInt, Field(ge=-(2 ** 63), le=2 ** 63 - 1)]
_ASCII_DIGITS = re.compile(r"[0-9]+")
# a float as JSON writes one: no underscores ("1_0"), padding (" 1.0 "), "nan"/"inf" or hex, which float() takes
_FLOAT_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _invisible(v: str) -> str | None:
    """The first control, format (zero-width space / joiner, BOM, bidi marks) or line/paragraph separator
    character of ``v``, as U+XXXX; such characters make two labels that look the same differ, or break a line."""
    for ch in v:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return f"U+{ord(ch):04X}"
    return None


def _visible(v: str, what: str) -> str:
    """``v``, refused when blank or holding an invisible or control character (``what`` names it in the error)."""
    if not v.strip():
        raise ValueError(f"{what} is blank")
    bad = _invisible(v)
    if bad is not None:
        raise ValueError(f"{what} contains the invisible or control character {bad}")
    return v


class _Strict(BaseModel):
    # extra="allow": an unknown field is kept (and written back), so validation never loses data.
    model_config = ConfigDict(strict=True, extra="allow", frozen=False)


class LaionSGItem(_Strict):
    item_id: Id
    label: NonEmptyStr
    attributes: list[StrictStr]
    global_item_id: Id

    @field_validator("label")
    @classmethod
    def _label_not_blank(cls, v: str) -> str:
        return _visible(v, "label")

    @field_validator("attributes")
    @classmethod
    def _attributes_not_blank(cls, v: list[str]) -> list[str]:
        for i, a in enumerate(v):
            _visible(a, f"attribute {i}")
        return v


class LaionSGRelation(_Strict):
    triple_id: Id
    item1: Id
    relation: NonEmptyStr
    item2: Id
    global_relation_id: Id

    @field_validator("relation")
    @classmethod
    def _relation_not_blank(cls, v: str) -> str:
        return _visible(v, "relation")


class LaionSGRecord(_Strict):
    img_id: StrictStr
    name: StrictStr
    caption_ori: StrictStr
    score: StrictStr
    url: StrictStr
    items: list[LaionSGItem] = Field(min_length=1)
    relations: list[LaionSGRelation]

    @field_validator("img_id")
    @classmethod
    def _img_id_digits(cls, v: str) -> str:
        if not _ASCII_DIGITS.fullmatch(v):  # str.isdigit() also takes "²³" and "١٢٣", which later stages break on
            raise ValueError(f"img_id must be a string of ASCII digits 0-9, got {v!r}")
        return v

    @field_validator("score")
    @classmethod
    def _score_is_float_text(cls, v: str) -> str:
        if not _FLOAT_TEXT.fullmatch(v):
            raise ValueError(f"score must be a finite float written as a string (e.g. \"0.53\"), got {v[:40]!r}")
        if not math.isfinite(float(v)):  # 1e999
            raise ValueError(f"score must be finite, got {v[:40]!r}")
        return v

    @model_validator(mode="after")
    def _graph_consistent(self) -> "LaionSGRecord":
        seen: set[int] = set()
        for i, item in enumerate(self.items):
            if item.item_id in seen:
                raise ValueError(f"items.{i}.item_id: duplicate item_id {item.item_id}")
            seen.add(item.item_id)
        triple_ids: set[int] = set()
        for k, rel in enumerate(self.relations):
            for end in ("item1", "item2"):
                ref = getattr(rel, end)
                if ref not in seen:
                    raise ValueError(f"relations.{k}.{end}: refers to unknown item_id {ref}")
            if rel.triple_id in triple_ids:
                raise ValueError(f"relations.{k}.triple_id: duplicate triple_id {rel.triple_id}")
            triple_ids.add(rel.triple_id)
        return self

    @property
    def score_value(self) -> float:
        return float(self.score)

    def to_json_dict(self) -> dict:
        """The record as it appears in a LAION-SG file (field order and types preserved)."""
        return self.model_dump(mode="json")
