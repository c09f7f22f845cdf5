"""Provenance and the result type shared by every reward.

Every score the toolkit writes carries a ``Provenance``: which backend produced each model answer (name, version,
kind), whether any of them was a fallback (scripted / regex / random-init), and the quirk flags the benchmark logic
ran with. A number computed with fakes can therefore never be mistaken for an official DPG-Bench or 3-in-1 value.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping, TypeVar

BackendKind = Literal["real", "world", "scripted", "fallback"]


@dataclass(frozen=True)
class BackendInfo:
    """Identity of one model backend.

    ``kind``: ``real`` (local weights of a real model), ``world`` (the shapes-world oracle / world models),
    ``scripted`` (a table or constant written by a test), ``fallback`` (a cheap stand-in such as the regex parser).
    ``fallback`` is True for scripted and fallback backends and for any real adapter flagged as random-init.
    """

    name: str
    version: str
    kind: BackendKind
    fallback: bool
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "details": dict(self.details)}


Q = TypeVar("Q", bound="QuirkFlags")


class QuirkFlags:
    """Base of a benchmark's quirk flags (a frozen dataclass of booleans, each one of the official scorer's quirks):
    the default is the corrected logic, ``official()`` turns every quirk on, ``flags()`` is what a ``Provenance``
    records."""

    @classmethod
    def official(cls: type[Q]) -> Q:
        return cls(**{f.name: True for f in fields(cls)})

    def flags(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def scripted_info(name: str, **details: Any) -> BackendInfo:
    return BackendInfo(name=name, version="scripted", kind="scripted", fallback=True, details=details)


@dataclass
class Provenance:
    """Who computed a score and under which rules. ``backends`` maps a role ("vqa", "detector", ...) to its info."""

    reward: str
    backends: dict[str, BackendInfo] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def any_fallback(self) -> bool:
        return any(b.fallback for b in self.backends.values())

    def to_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "any_fallback": self.any_fallback,
                "backends": {k: v.to_dict() for k, v in self.backends.items()},
                "flags": dict(self.flags), "settings": dict(self.settings)}


@dataclass
class RewardOutput:
    """Scores for a batch. ``scores[i]`` maps component name -> value in [0, 1] for sample i (the values a
    combination averages); ``parts[i]`` holds the sub-scores behind them (may be outside [0, 1], e.g. a raw cosine,
    or None where a part does not apply); ``provenance`` is per reward (one entry for a single reward, one per
    member for a combination)."""

    scores: list[dict[str, float]]
    parts: list[dict[str, Any]]
    provenance: list[Provenance]

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def any_fallback(self) -> bool:
        return any(p.any_fallback for p in self.provenance)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able dict per sample, with the provenance of the batch attached."""
        prov = [p.to_dict() for p in self.provenance]
        return [{"scores": dict(s), "parts": dict(p), "provenance": prov} for s, p in zip(self.scores, self.parts)]


def check_unit(name: str, value: float) -> float:
    """A component score must lie in [0, 1]; anything else is a bug in a backend or in the logic."""
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"reward component {name!r} = {v} is outside [0, 1]")
    return v
