"""Required-file manifests for real backends, the typed "backend unavailable" error, and the fallback policy.

A real backend is built only from a local folder that holds every file of its manifest; nothing is ever
downloaded. When a file is missing the error names the backend, each missing file (or group of accepted
alternatives), what the file is for, and the folder that was searched.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


class BackendUnavailable(RuntimeError):
    """A real backend cannot be built here (missing files or a missing optional library)."""


@dataclass(frozen=True)
class RequiredFile:
    """One required file; ``alternatives`` are names any one of which satisfies it (e.g. a fast or slow tokenizer)."""

    alternatives: tuple[str, ...]
    purpose: str

    @classmethod
    def of(cls, *names: str, purpose: str) -> "RequiredFile":
        return cls(tuple(names), purpose)

    def found(self, root: Path) -> Path | None:
        for name in self.alternatives:
            p = root / name
            if p.is_file():
                return p
        return None

    def describe(self) -> str:
        names = " or ".join(self.alternatives)
        return f"{names} ({self.purpose})"


@dataclass(frozen=True)
class Manifest:
    backend: str
    files: tuple[RequiredFile, ...]
    origin: str = ""  # where a user gets the folder, in words (e.g. the hub id to save locally elsewhere)

    def missing(self, root: str | os.PathLike) -> list[RequiredFile]:
        r = Path(root)
        if not r.is_dir():
            return list(self.files)
        return [f for f in self.files if f.found(r) is None]

    def check(self, root: str | os.PathLike | None) -> Path:
        """Return the folder as a Path, or raise ``BackendUnavailable`` naming every missing file and the folder."""
        if root is None:
            raise BackendUnavailable(f"{self.backend}: no weights folder given; expected a local folder holding "
                                     + ", ".join(f.describe() for f in self.files)
                                     + (f". Origin: {self.origin}" if self.origin else ""))
        r = Path(root)
        missing = self.missing(r)
        if missing:
            where = f"in {r}" if r.is_dir() else f"({r} is not a folder)"
            raise BackendUnavailable(
                f"{self.backend}: missing {len(missing)} required file(s) {where}: "
                + "; ".join(m.describe() for m in missing)
                + (f". Origin: {self.origin}" if self.origin else "")
                + ". Nothing is downloaded: save the model to that folder first.")
        return r


def resolve(build: Callable[[], T], fallback: Callable[[], T] | None = None, policy: str = "strict") -> T:
    """Build a real backend; on ``BackendUnavailable`` re-raise (``policy="strict"``, benchmark runs) or return
    ``fallback()`` (``policy="allow-fallback"``, tests/dev). The fallback's ``info.fallback`` is True, so the
    substitution shows in every score's provenance, with the reason in ``info.details["unavailable_reason"]``."""
    if policy not in ("strict", "allow-fallback"):
        raise ValueError(f"fallback policy must be 'strict' or 'allow-fallback', got {policy!r}")
    try:
        return build()
    except BackendUnavailable as err:
        if policy == "strict" or fallback is None:
            raise
        fb = fallback()
        fb.unavailable_reason = str(err)  # type: ignore[attr-defined]
        info = getattr(fb, "info", None)
        if info is not None:  # the reason travels into every score's provenance
            fb.info = dataclasses.replace(info, details={**info.details, "unavailable_reason": str(err)})
        return fb


def require_module(backend: str, module: str, hint: str) -> None:
    """Import check for an optional heavy dependency, raising ``BackendUnavailable`` with an install hint."""
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailable(f"{backend}: the Python package {module!r} is not installed ({hint})")
