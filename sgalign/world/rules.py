"""The shapes world's vocabulary and the one rule set that decides which relations hold.

The sampler (to make a layout true), the oracle (to read relations back from an image) and the oracle's soft
confidences all call the functions here, so a relation the sampler wrote is, by construction, the relation the
oracle reports.

Geometry is in pixels of the 64x64 canvas, y pointing down. An object is an axis-aligned shape with a square
bounding box ``(x0, y0, x1, y1)`` (x1, y1 exclusive edges); its *extent* is ``max(x1 - x0, y1 - y0)``.

Relation rules (``a REL b``):

* spatial, on box centres, ``dx = cx(b) - cx(a)``, ``dy = cy(b) - cy(a)`` (the dominant-axis rule T2I-CompBench's
  spatial score uses): "left of" iff ``dx - |dy| > 0``; "right of" iff ``-dx - |dy| > 0``; "above" iff
  ``dy - |dx| > 0``; "below" iff ``-dy - |dx| > 0``. The left-hand side is the relation's *margin*; at most one
  spatial relation holds per ordered pair, and exactly one unless ``|dx| == |dy|``.
* size, on size classes: "bigger than" iff a is large and b small; "smaller than" iff a is small and b large.
  The size class is ``large`` iff the extent is >= ``SIZE_THRESHOLD`` (the oracle estimates the extent from the
  object's area: sqrt(area / the shape's fill ratio)).

The sampler keeps every ordered pair at least ``LAYOUT_MARGIN`` px away from the spatial decision boundary and draws
small extents from ``SMALL_EXTENTS`` and large from ``LARGE_EXTENTS`` (both far from ``SIZE_THRESHOLD``), so pixel
measurement error, blur and noise do not flip a relation.
"""
from __future__ import annotations

import numpy as np

CANVAS = 64
BACKGROUND = (245, 245, 240)
# Chosen so that no colour lies near another colour's blend line with the background (>= 90 RGB units away):
# anti-aliased or blurred edges of one colour are never read as a different colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "yellow": (235, 200, 20),
    "green": (30, 150, 50),
    "blue": (35, 75, 215),
    "purple": (135, 50, 175),
    "cyan": (20, 180, 200),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
SPATIAL: tuple[str, ...] = ("left of", "right of", "above", "below")
NON_SPATIAL: tuple[str, ...] = ("bigger than", "smaller than")
PREDICATES: tuple[str, ...] = SPATIAL + NON_SPATIAL
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
                           "bigger than": "smaller than", "smaller than": "bigger than"}
# One direction per inverse pair: canonical graph keys and the oracle's ``canonical`` graphs use these.
CANONICAL: tuple[str, ...] = ("left of", "above", "bigger than")

SMALL_EXTENTS = (9, 12)  # inclusive range of a small object's extent (px)
LARGE_EXTENTS = (17, 21)
SIZE_THRESHOLD = 14.5
LAYOUT_MARGIN = 4.0  # min distance (px) of every ordered pair from the spatial decision boundary
MIN_GAP = 3  # min gap (px) between any two boxes, so objects never touch, even blurred
BORDER = 2  # min distance (px) of a box from the canvas edge


def box_centre(box) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(cx, cy)`` of box(es) ``[..., 4]`` as ``x0, y0, x1, y1``."""
    b = np.asarray(box, dtype=np.float64)
    return (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2


def spatial_margin(predicate: str, box_a, box_b) -> np.ndarray:
    """Signed margin of ``a <predicate> b`` (> 0 iff it holds); broadcasts over leading box dimensions."""
    ax, ay = box_centre(box_a)
    bx, by = box_centre(box_b)
    dx, dy = bx - ax, by - ay
    if predicate == "left of":
        return dx - np.abs(dy)
    if predicate == "right of":
        return -dx - np.abs(dy)
    if predicate == "above":
        return dy - np.abs(dx)
    if predicate == "below":
        return -dy - np.abs(dx)
    raise ValueError(f"not a spatial predicate: {predicate!r} (expected one of {SPATIAL})")


def spatial_relation(box_a, box_b) -> str | None:
    """The spatial predicate that holds for ``a ? b`` (None only on the exact diagonal ``|dx| == |dy|``)."""
    for p in SPATIAL:
        if float(spatial_margin(p, box_a, box_b)) > 0:
            return p
    return None


def size_class(extent: float) -> str:
    return "large" if extent >= SIZE_THRESHOLD else "small"


def size_relation(size_a: str, size_b: str) -> str | None:
    """"bigger than" / "smaller than" / None for ``a ? b`` from size classes."""
    if size_a == "large" and size_b == "small":
        return "bigger than"
    if size_a == "small" and size_b == "large":
        return "smaller than"
    return None


def relations_between(box_a, size_a: str, box_b, size_b: str) -> list[str]:
    """Every predicate that holds for ``a ? b``, in ``PREDICATES`` order."""
    return [p for p in (spatial_relation(box_a, box_b), size_relation(size_a, size_b)) if p is not None]


def holds(predicate: str, box_a, size_a: str, box_b, size_b: str) -> bool:
    if predicate in SPATIAL:
        return bool(spatial_margin(predicate, box_a, box_b) > 0)
    if predicate in NON_SPATIAL:
        return size_relation(size_a, size_b) == predicate
    raise ValueError(f"unknown predicate {predicate!r} (expected one of {PREDICATES})")


def canonical_triple(subject: str, predicate: str, obj: str) -> tuple[str, str, str]:
    """The same fact with the predicate in ``CANONICAL`` direction ("B right of A" -> "A left of B")."""
    if predicate in CANONICAL:
        return subject, predicate, obj
    return obj, INVERSE[predicate], subject
