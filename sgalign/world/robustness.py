"""How exactly the oracle reads renders back, clean or degraded by Gaussian blur and pixel noise.

Used by the world tests and ``scripts/bench_oracle.py``. A degraded image is
``clip(round(gaussian_blur(render, sigma) + N(0, noise^2)), 0, 255)`` per RGB channel (0..255 units).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .oracle import OracleScene
from .sampler import WorldScene


def degrade(images: np.ndarray, blur: float = 0.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """uint8 [N, H, W, 3] -> blurred (Gaussian, ``blur`` px sigma) and noised (``noise`` std, 0..255) uint8."""
    x = images.astype(np.float32)
    if blur > 0:
        x = ndimage.gaussian_filter(x, sigma=(0, blur, blur, 0))
    if noise > 0:
        x = x + np.random.default_rng(seed).normal(0.0, noise, size=x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class OracleAccuracy:
    n: int
    objects_exact: float  # fraction of images whose detected phrases equal the true phrases (as multisets)
    relations_recall: float  # fraction of sampled triples the oracle finds true (phrase level)
    graph_exact: float  # fraction of images read exactly: objects and every relation between every ordered pair

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "objects_exact": self.objects_exact, "relations_recall": self.relations_recall,
                "graph_exact": self.graph_exact}


def _phrase_triples(phrases: Sequence[str], triples) -> Counter:
    return Counter((phrases[s], p, phrases[o]) for s, p, o in triples)


def oracle_accuracy(scenes: Sequence[WorldScene], parsed: Sequence[OracleScene]) -> OracleAccuracy:
    """Compare the oracle's readings with the scenes that were rendered."""
    obj_ok = graph_ok = rel_hit = rel_total = 0
    for scene, ps in zip(scenes, parsed, strict=True):
        true_ph = [o.phrase for o in scene.objects]
        got_ph = [d.phrase for d in ps.detections]
        objects = Counter(true_ph) == Counter(got_ph)
        got = ps.graph()
        got_triples = _phrase_triples(got_ph, [(r.subject, r.predicate, r.object) for r in got.relations])
        rel_total += len(scene.relations)
        rel_hit += sum(1 for t in _phrase_triples(true_ph, scene.relations) if t in got_triples)
        obj_ok += objects
        graph_ok += objects and got_triples == _phrase_triples(true_ph, scene.holding_relations())
    n = len(scenes)
    return OracleAccuracy(n, obj_ok / max(n, 1), rel_hit / max(rel_total, 1), graph_ok / max(n, 1))
