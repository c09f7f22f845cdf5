"""Seeded scene graphs of the shapes world, with layouts that make every relation true.

A ``WorldScene`` is 2-4 objects (shape, colour, size, integer box) and 1-3 relations (at most one per unordered
pair), with distinct "colour size shape" phrases so every triple names its objects unambiguously. Its LAION-SG
form has ``label = shape`` and ``attributes = [colour, size]``. Graph first (objects, relations uniform over the
six predicates, sizes forced by the size relations), then a layout by vectorised rejection sampling of integer
boxes that satisfies every relation with the margins of ``rules`` (every ordered pair >= 4 px from the spatial
decision boundary, >= 3 px between boxes); a graph with no layout in 2048 tries is redrawn.

Splits are disjoint by construction: every graph has a canonical key (its item phrases and its triples with
predicates turned to ``rules.CANONICAL`` direction, so "A right of B" and "B left of A" are the same graph), and a
stable hash of the key assigns the graph to exactly one split (80 / 10 / 10). Each split draws with its own seed and
keeps only graphs hashed to it, so the splits never share a graph whatever ``n`` or ``seed`` they are drawn with.
Held-out colour-shape combinations never appear in train or validation.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np

from ..scene_graph import LaionSGRecord, SceneGraph
from . import rules

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_CODE = {"train": 1, "validation": 2, "test": 3}  # leading digit of img_id
SPLIT_RANGES = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}
RECORD_SCORE = "1.0"  # LAION-SG's aesthetic score has no meaning here; every render is a ground-truth image


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, exclusive ends); square: x1 - x0 == y1 - y0

    @property
    def attributes(self) -> tuple[str, str]:
        return self.colour, self.size

    @property
    def phrase(self) -> str:
        """LAION-SG phrase form (attributes first, label last), as ``SceneGraph.phrase`` writes it."""
        return f"{self.colour} {self.size} {self.shape}"

    @property
    def extent(self) -> int:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass(frozen=True)
class WorldScene:
    objects: tuple[WorldObject, ...]
    relations: tuple[tuple[int, str, int], ...]  # (subject index, predicate, object index)

    def graph(self) -> SceneGraph:
        return SceneGraph.from_triples([(o.shape, o.attributes) for o in self.objects], self.relations)

    def key(self) -> str:
        return graph_key([o.phrase for o in self.objects],
                         [(self.objects[s].phrase, p, self.objects[o].phrase) for s, p, o in self.relations])

    def holding_relations(self) -> set[tuple[int, str, int]]:
        """Every (i, predicate, j) the rules make true in this layout: the complete graph the oracle reads back."""
        out = set()
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i != j:
                    out.update((i, p, j) for p in rules.relations_between(a.box, a.size, b.box, b.size))
        return out

    def caption(self) -> str:
        """Plain English: each relation as a clause, then the isolated objects."""
        def np_(o: WorldObject) -> str:
            return f"a {o.size} {o.colour} {o.shape}"
        parts = [f"{np_(self.objects[s])} {p} {np_(self.objects[o])}" for s, p, o in self.relations]
        used = {i for s, _, o in self.relations for i in (s, o)}
        parts += [np_(o) for i, o in enumerate(self.objects) if i not in used]
        return ", and ".join(parts)

    def to_record(self, img_id: str, name: str | None = None) -> LaionSGRecord:
        return self.graph().to_record(img_id=img_id, name=name if name is not None else f"{img_id}.png",
                                      caption_ori=self.caption(), score=RECORD_SCORE, url="")

    def layout(self) -> list[dict]:
        return [{"item_id": i, "box": list(o.box)} for i, o in enumerate(self.objects)]

    @classmethod
    def from_record(cls, record: LaionSGRecord, boxes: Sequence[Sequence[int]]) -> "WorldScene":
        """Rebuild a scene from its record and layout (``boxes[k]`` for ``record.items[k]``), e.g. to re-render."""
        if len(boxes) != len(record.items):
            raise ValueError(f"record {record.img_id}: {len(record.items)} items but {len(boxes)} boxes")
        index = {it.item_id: k for k, it in enumerate(record.items)}
        objs = []
        for it, box in zip(record.items, boxes):
            if it.label not in rules.SHAPES or len(it.attributes) != 2 or it.attributes[0] not in rules.PALETTE \
                    or it.attributes[1] not in rules.SIZES:
                raise ValueError(f"record {record.img_id}, item {it.item_id}: not a shapes-world item "
                                 f"(label {it.label!r}, attributes {it.attributes!r}); expected label in "
                                 f"{rules.SHAPES} and attributes [colour, size]")
            objs.append(WorldObject(it.label, it.attributes[0], it.attributes[1], tuple(int(v) for v in box)))
        rels = tuple((index[r.item1], r.relation, index[r.item2]) for r in record.relations)
        return cls(tuple(objs), rels)


def invert_predicates(graph: SceneGraph) -> SceneGraph:
    """The graph with every predicate replaced by its inverse ("left of" -> "right of", "bigger than" -> "smaller
    than"): the same objects, and every stated relation false of any layout that satisfied the original. A model that
    reads predicates draws a different layout for it at the same noise; one that does not draws the same image."""
    return SceneGraph(list(graph.items), [replace(r, predicate=rules.INVERSE[r.predicate]) for r in graph.relations])


def graph_key(phrases: Iterable[str], triples: Iterable[tuple[str, str, str]]) -> str:
    """Canonical key of a graph: sorted phrases | sorted triples in canonical direction."""
    return "|".join(sorted(phrases)) + "||" + "|".join(
        sorted(" ; ".join(rules.canonical_triple(*t)) for t in triples))


def split_of(key: str) -> str:
    """The one split a graph key belongs to (stable sha256 hash, 80/10/10)."""
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    for split, (lo, hi) in SPLIT_RANGES.items():
        if lo <= u < hi:
            return split
    raise AssertionError(u)


def parse_holdout(specs: Iterable[str | tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``["red:circle", ("blue", "square")]`` -> validated (colour, shape) pairs."""
    out = []
    for spec in specs:
        colour, sep, shape = spec.partition(":") if isinstance(spec, str) else (spec[0], ":", spec[1])
        if not sep or colour not in rules.PALETTE or shape not in rules.SHAPES:
            raise ValueError(f"holdout {spec!r}: expected 'colour:shape' with colour in {rules.COLOURS} and shape "
                             f"in {rules.SHAPES}")
        out.append((colour, shape))
    return tuple(out)


def layout_boxes(rng: np.random.Generator, extents: np.ndarray, spatial: list[tuple[int, str, int]],
                 batch: int = 256, tries: int = 8) -> np.ndarray | None:
    """Integer boxes [n, 4] satisfying every spatial relation with margin, gaps and borders; None if not found."""
    n = len(extents)
    hi = rules.CANVAS - rules.BORDER - extents  # max x0 / y0 per object
    ii, jj = np.triu_indices(n, 1)
    for _ in range(tries):
        x0 = rng.integers(rules.BORDER, hi + 1, size=(batch, n))
        y0 = rng.integers(rules.BORDER, hi + 1, size=(batch, n))
        boxes = np.stack([x0, y0, x0 + extents, y0 + extents], axis=-1)  # [B, n, 4]
        a, b = boxes[:, ii], boxes[:, jj]
        gap_x = np.maximum(b[..., 0] - a[..., 2], a[..., 0] - b[..., 2])
        gap_y = np.maximum(b[..., 1] - a[..., 3], a[..., 1] - b[..., 3])
        ok = ((gap_x >= rules.MIN_GAP) | (gap_y >= rules.MIN_GAP)).all(1)
        (ax, ay), (bx, by) = rules.box_centre(a), rules.box_centre(b)
        ok &= (np.abs(np.abs(bx - ax) - np.abs(by - ay)) >= rules.LAYOUT_MARGIN).all(1)
        for s, p, o in spatial:
            ok &= rules.spatial_margin(p, boxes[:, s], boxes[:, o]) >= rules.LAYOUT_MARGIN
        hit = np.flatnonzero(ok)
        if hit.size:
            return boxes[hit[0]]
    return None


def _draw_graph(rng: np.random.Generator, combos: Sequence[tuple[str, str]], max_objects: int = 4,
                max_relations: int = 3):
    """Objects (colour, shape, size) and relations, sizes made consistent with the size relations; or None."""
    # one call to the generator per draw (the sampler rejects ~90% of draws for the small splits)
    m, p_max = max_objects, max_objects * (max_objects - 1) // 2
    u = rng.random(2 + 2 * m + p_max + 2 * max_relations)
    n = 2 + int(u[0] * (m - 1))
    picks = [combos[int(v * len(combos))] for v in u[2:2 + n]]
    sizes = [rules.SIZES[int(v * 2)] for v in u[2 + m:2 + m + n]]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    r = 1 + int(u[1] * min(max_relations, len(pairs)))
    order = np.argsort(u[2 + 2 * m:2 + 2 * m + len(pairs)], kind="stable")[:r]  # r distinct pairs
    rel_u = u[2 + 2 * m + p_max:]
    rels = []
    for q, k in enumerate(order):
        i, j = pairs[int(k)]
        if rel_u[2 * q] < 0.5:
            i, j = j, i
        rels.append((i, rules.PREDICATES[int(rel_u[2 * q + 1] * len(rules.PREDICATES))], j))
    forced: dict[int, str] = {}
    for s, p, o in rels:
        if p in rules.NON_SPATIAL:
            want = ("large", "small") if p == "bigger than" else ("small", "large")
            for idx, size in zip((s, o), want):
                if forced.setdefault(idx, size) != size:
                    return None  # e.g. A bigger than B, B bigger than A
    for idx, size in forced.items():
        sizes[idx] = size
    objs = [(c, sh, z) for (c, sh), z in zip(picks, sizes)]
    if len({f"{c} {z} {sh}" for c, sh, z in objs}) < n:
        return None  # identical phrases would make the graph ambiguous
    return objs, rels


def sample_scene(rng: np.random.Generator, combos: Sequence[tuple[str, str]] | None = None,
                 accept=None) -> WorldScene:
    """One scene. ``combos``: allowed (colour, shape) pairs; ``accept(key)`` filters graphs before layout."""
    combos = list(combos) if combos is not None else [(c, s) for c in rules.COLOURS for s in rules.SHAPES]
    while True:
        drawn = _draw_graph(rng, combos)
        if drawn is None:
            continue
        objs, rels = drawn
        key = graph_key([f"{c} {z} {sh}" for c, sh, z in objs],
                        [(f"{objs[s][0]} {objs[s][2]} {objs[s][1]}", p,
                          f"{objs[o][0]} {objs[o][2]} {objs[o][1]}") for s, p, o in rels])
        if accept is not None and not accept(key):
            continue
        lo = {"small": rules.SMALL_EXTENTS, "large": rules.LARGE_EXTENTS}
        extents = np.array([rng.integers(lo[z][0], lo[z][1] + 1) for _, _, z in objs])
        boxes = layout_boxes(rng, extents, [t for t in rels if t[1] in rules.SPATIAL])
        if boxes is None:
            continue
        return WorldScene(tuple(WorldObject(sh, c, z, tuple(int(v) for v in box))
                                for (c, sh, z), box in zip(objs, boxes)), tuple(rels))


def sample_split(split: str, n: int, seed: int = 0, holdout: Iterable[str | tuple[str, str]] = (),
                 novel_only: bool = False) -> list[WorldScene]:
    """``n`` distinct scenes of ``split``, deterministic in (split, n, seed, holdout, novel_only).

    ``holdout``: colour-shape pairs never drawn in train/validation. ``novel_only`` (test only): every test graph
    contains at least one held-out pair (the generalisation set).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 0 or n >= 10 ** 7:
        raise ValueError(f"n={n}: expected 0 <= n < 10,000,000 (img_id has 7 digits after the split code)")
    held = parse_holdout(holdout)
    if novel_only and (split != "test" or not held):
        raise ValueError("novel_only needs split='test' and a non-empty holdout")
    combos = [(c, s) for c in rules.COLOURS for s in rules.SHAPES]
    if split != "test":
        combos = [cs for cs in combos if cs not in held]
        if not combos:
            raise ValueError(f"holdout {list(held)} leaves no colour-shape pair for the {split} split")
    held_phrases = {(c, s) for c, s in held}
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODE[split]]))
    seen: set[str] = set()

    def accept(key: str) -> bool:
        if key in seen or split_of(key) != split:
            return False
        if novel_only:
            phrases = key.split("||")[0].split("|")
            return any((p.split()[0], p.split()[2]) in held_phrases for p in phrases)
        return True

    scenes = []
    for _ in range(n):
        scene = sample_scene(rng, combos, accept)
        seen.add(scene.key())
        scenes.append(scene)
    return scenes


def img_id_for(split: str, index: int) -> str:
    return f"{SPLIT_CODE[split]}{index:07d}"


def split_records(split: str, scenes: Sequence[WorldScene]) -> list[LaionSGRecord]:
    """LAION-SG records of a split: ``img_id`` = split code + 7-digit index, ``name`` = ``<img_id>.png``."""
    return [sc.to_record(img_id_for(split, i)) for i, sc in enumerate(scenes)]


def predicate_blind_hold(scenes: Sequence[WorldScene], seed: int = 0) -> dict:
    """Chance level of the spatial hold rate: each scene's objects (same sizes) re-laid out by ``layout_boxes`` with
    no spatial constraint, and the share of its spatial triples that hold anyway. A model that ignores its
    predicates scores about this; the four spatial predicates are 90° cones, so it is near 1/4."""
    rng = np.random.default_rng(seed)
    held = n = 0
    for sc in scenes:
        spatial = [t for t in sc.relations if t[1] in rules.SPATIAL]
        if not spatial:
            continue
        boxes = layout_boxes(rng, np.array([o.extent for o in sc.objects]), [])
        if boxes is None:
            continue
        n += len(spatial)
        held += sum(rules.holds(p, boxes[s], sc.objects[s].size, boxes[o], sc.objects[o].size) for s, p, o in spatial)
    return {"triples": n, "holds": held / n if n else float("nan"), "seed": seed}
