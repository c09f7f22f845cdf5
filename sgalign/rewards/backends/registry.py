"""Backends by name, as configs name them, with the fallback policy.

``build_backend("vqa", "blip-vqa", path="...")`` builds a real adapter from a local folder;
``policy="allow-fallback"`` substitutes the role's labelled fallback when the real one is unavailable (missing
files or library), and the substitution shows in provenance. Other packages add backends with ``register``
(e.g. ``register("vqa", "my-vqa", factory)``). The shapes-world oracle backends are built in:
"world-oracle-vqa", "world-oracle-detector", "world-oracle-similarity" (no files; ``world.py``), and
"world-clip" (similarity: the trained world-CLIP's cosine; ``path`` defaults to the shipped folder; ``world_clip.py``).
"""
from __future__ import annotations

from typing import Any, Callable

from .blip_vqa import BlipVQA
from .clip_similarity import CLIPSimilarity
from .manifest import resolve
from .owl_detector import OwlDetector
from .scripted import RegexTextParser, ScriptedDetector, ScriptedSimilarity, ScriptedVQA
from .spacy_parser import SpacyParser
from .world_clip import WorldCLIPSimilarity

ROLES = ("vqa", "detector", "similarity", "parser")


def _blip(path=None, **kw):
    return BlipVQA.from_pretrained(path, **kw)


def _clip(path=None, **kw):
    return CLIPSimilarity.from_pretrained(path, **kw)


def _owl(path=None, **kw):
    return OwlDetector.from_pretrained(path, **kw)


def _spacy(path=None, **kw):
    return SpacyParser.from_pretrained(path, **kw)


def _world_clip(path=None, **kw):
    return WorldCLIPSimilarity.from_pretrained(path, **kw)


def _world(cls_name: str) -> Callable[..., Any]:
    """Shapes-world oracle backends (``world.py``): no files; ``oracle=`` / ``score_threshold=`` pass through."""
    def factory(path=None, **kw):
        if path is not None:
            raise ValueError(f"world backend {cls_name} reads no files; got path={path!r} (leave it unset)")
        from . import world  # heavy (sgalign.world: scipy): only for the world backends
        return getattr(world, cls_name)(**kw)
    return factory


_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {
    "vqa": {"blip-vqa": _blip, "scripted": lambda path=None, **kw: ScriptedVQA(**kw),
            "world-oracle-vqa": _world("WorldOracleVQA")},
    "detector": {"owl": _owl, "scripted": lambda path=None, **kw: ScriptedDetector(kw.pop("detections", []), **kw),
                 "world-oracle-detector": _world("WorldOracleDetector")},
    "similarity": {"clip": _clip, "scripted": lambda path=None, **kw: ScriptedSimilarity(**kw),
                   "world-oracle-similarity": _world("WorldOracleSimilarity"), "world-clip": _world_clip},
    "parser": {"spacy": _spacy, "regex": lambda path=None, **kw: RegexTextParser()},
}
# What "allow-fallback" substitutes: uninformative, labelled stand-ins (a constant 0.5 VQA, no detections,
# zero similarity, the regex parser). They keep a pipeline running; their numbers mean nothing.
_FALLBACK: dict[str, Callable[[], Any]] = {
    "vqa": lambda: ScriptedVQA(default_answer="no", default_probs=(0.5, 0.5), name="fallback-vqa"),
    "detector": lambda: ScriptedDetector([], name="fallback-detector"),
    "similarity": lambda: ScriptedSimilarity(default=0.0, name="fallback-similarity"),
    "parser": RegexTextParser,
}


def register(role: str, name: str, factory: Callable[..., Any]) -> None:
    """Add a backend: ``factory(path=None, **options)`` returns an object implementing the role's protocol."""
    if role not in ROLES:
        raise ValueError(f"unknown backend role {role!r}; roles: {ROLES}")
    _REGISTRY[role][name] = factory


def available(role: str) -> list[str]:
    return sorted(_REGISTRY[role])


def build_backend(role: str, name: str, path: str | None = None, policy: str = "strict", **options: Any) -> Any:
    if role not in ROLES:
        raise ValueError(f"unknown backend role {role!r}; roles: {ROLES}")
    if name not in _REGISTRY[role]:
        raise ValueError(f"unknown {role} backend {name!r}; known: {available(role)}")
    return resolve(lambda: _REGISTRY[role][name](path=path, **options), _FALLBACK[role], policy)
