"""SG-IoU, Entity-IoU and Relation-IoU (SG-Adapter / LAION-SG CompSG-Bench) as pure functions.

Each is a Jaccard index |A & B| / |A | B| over *sets* (duplicates and instance counts are ignored), 0 when the
union is empty, between the input (ground-truth) graph and the graph an extractor read off the generated image.
``granularity="label"`` (default, as LAION-SG): GT triples and entities are item labels
(``SceneGraph.label_triples()``), attributes ignored. ``granularity="phrase"``: the phrase form "attrs label"
(``SceneGraph.triples()``), for graphs whose attributes carry the binding (the shapes world's "red circle"); the
extractor must then report phrases too.

Two modes, recorded in every report:

``paper`` (LAION-SG's test_iou.py):
  * strings compared exactly (case- and whitespace-sensitive);
  * GT entities = subject and object labels of the GT triples only -- isolated GT items do NOT count (the demo
    graph has none, and the code takes the items from the triples);
  * extracted entities = the extractor's self-reported ``object_list``; extracted relations = its self-reported
    ``predicate_list`` (neither is checked against the triples it returned);
  * malformed reply entries (a 2-item triple, a number in object_list) stay in the extracted sets, as test_iou's
    ``set(...)`` keeps them: they never match and enlarge the union;
  * the extractor may only answer with the GT triples' item and relation names (LAION-SG's prompt): use
    ``GraphParserExtractor(paper=True)`` / ``ChatCompletionsExtractor(paper=True)``. Then ground-truth images
    score exactly 1.0 (graphs with at least one relation).

``normalized`` (default):
  * every string passes through ``normalize_text`` (lower-case, strip, collapse whitespace runs);
  * GT entities = labels of ALL items, isolated items included (they are objects the image should show);
  * extracted entities = subjects and objects of the extracted triples plus ``object_list``;
    extracted relations = predicates of the extracted triples (``predicate_list`` is not used);
  * strings that normalise to "" are dropped (and triples containing one).

Intervals resample *graphs*: pass ``groups`` (the graph of each image) so all seeds of a graph are drawn
together; without it every image is its own unit. The unit is recorded with every interval.

A failed extraction (``status != "ok"``) is scored as an empty extraction (``failures="zero"``, default) or left
out of the averages (``failures="skip"``); either way the number of failures is reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from ..scene_graph import SceneGraph
from .extracted_graph import ExtractedGraph
from .stats import (ConfidenceInterval, bootstrap_ci, check_bootstrap_args, paired_bootstrap_ci, percentile_interval,
                    resample_indices)

Mode = Literal["paper", "normalized"]
MODES: tuple[str, ...] = ("paper", "normalized")
Granularity = Literal["label", "phrase"]
METRICS: tuple[str, ...] = ("sg_iou", "entity_iou", "relation_iou")
FailurePolicy = Literal["zero", "skip"]


def normalize_text(s: str) -> str:
    """Normalised-mode string form: lower-cased, leading/trailing whitespace removed, internal runs of whitespace
    collapsed to one space ("  Made  Of " -> "made of"). Underscores, punctuation and plurals are left alone."""
    return " ".join(s.lower().split())


def jaccard(a: Iterable[Any], b: Iterable[Any]) -> float:
    """|A & B| / |A | B| over sets; 0.0 when both are empty."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


@dataclass(frozen=True)
class GraphSets:
    triples: frozenset[tuple[str, str, str]]
    entities: frozenset[str]
    relations: frozenset[str]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"SG-IoU mode must be one of {MODES}, got {mode!r}")


def _norm_triples(triples: Iterable[tuple[str, str, str]]) -> frozenset[tuple[str, str, str]]:
    out = {tuple(normalize_text(x) for x in t) for t in triples}
    return frozenset(t for t in out if all(t))  # type: ignore[misc]


def _norm_strings(strings: Iterable[str]) -> frozenset[str]:
    return frozenset(s for s in map(normalize_text, strings) if s)


def ground_truth_sets(gt: SceneGraph, mode: Mode = "normalized", granularity: Granularity = "label") -> GraphSets:
    """The GT triple / entity / relation sets of ``gt`` under ``mode`` (see module docstring)."""
    _check_mode(mode)
    if granularity not in ("label", "phrase"):
        raise ValueError(f"SG-IoU granularity must be 'label' or 'phrase', got {granularity!r}")
    triples = gt.label_triples() if granularity == "label" else gt.triples()
    if mode == "paper":
        return GraphSets(frozenset(triples), frozenset(x for s, _, o in triples for x in (s, o)),
                         frozenset(p for _, p, _ in triples))
    names = (it.label if granularity == "label" else gt.phrase(it) for it in gt.items)
    return GraphSets(_norm_triples(triples), _norm_strings(names), _norm_strings(p for _, p, _ in triples))


def extracted_sets(pred: ExtractedGraph, mode: Mode = "normalized") -> GraphSets:
    """The extracted triple / entity / relation sets under ``mode`` (see module docstring)."""
    _check_mode(mode)
    if mode == "paper":
        def bad(key: str) -> set[Any]:  # tagged so a malformed entry can never equal a GT string
            return {("malformed", key, m) for m in pred.malformed.get(key, [])}

        return GraphSets(frozenset(pred.triples) | bad("scene_graph"),
                         frozenset(pred.object_list) | bad("object_list"),
                         frozenset(pred.predicate_list) | bad("predicate_list"))
    triples = _norm_triples(pred.triples)
    entities = {x for s, _, o in triples for x in (s, o)} | _norm_strings(pred.object_list)
    return GraphSets(triples, frozenset(entities), frozenset(p for _, p, _ in triples))


@dataclass(frozen=True)
class IoUScores:
    sg_iou: float
    entity_iou: float
    relation_iou: float

    def to_dict(self) -> dict[str, float]:
        return {m: getattr(self, m) for m in METRICS}


def sg_iou_scores(gt: SceneGraph, pred: ExtractedGraph, mode: Mode = "normalized",
                  granularity: Granularity = "label") -> IoUScores:
    """Per-image SG-IoU / Entity-IoU / Relation-IoU. A failed extraction scores as an empty one."""
    g = ground_truth_sets(gt, mode, granularity)
    p = extracted_sets(pred, mode) if pred.ok else GraphSets(frozenset(), frozenset(), frozenset())
    return IoUScores(jaccard(g.triples, p.triples), jaccard(g.entities, p.entities),
                     jaccard(g.relations, p.relations))


@dataclass
class SGIoUReport:
    mode: str
    granularity: str
    failures: str
    per_image: list[IoUScores | None]  # None: failed extraction left out (failures="skip")
    statuses: list[str]
    mean: dict[str, float]
    ci: dict[str, ConfidenceInterval]
    groups: list[Any] | None = None  # resampling unit of each image (its graph); None: every image on its own
    unit: str = "image"

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    @property
    def n_failed(self) -> int:
        return sum(s != "ok" for s in self.statuses)

    def values(self, metric: str) -> np.ndarray:
        """Per-image scores of ``metric`` for the images that count (NaN for skipped ones)."""
        return np.array([np.nan if s is None else getattr(s, metric) for s in self.per_image])

    def to_dict(self) -> dict[str, Any]:
        counts = {st: self.statuses.count(st) for st in sorted(set(self.statuses))}
        return {"mode": self.mode, "granularity": self.granularity, "failures": self.failures,
                "n_images": self.n_images, "n_failed": self.n_failed, "status_counts": counts,
                "resampling_unit": self.unit,
                "mean": dict(self.mean), "ci": {k: v.to_dict() for k, v in self.ci.items()},
                "per_image": [None if s is None else s.to_dict() for s in self.per_image]}


def evaluate_sg_iou(gts: Sequence[SceneGraph], preds: Sequence[ExtractedGraph], *, mode: Mode = "normalized",
                    granularity: Granularity = "label", failures: FailurePolicy = "zero", n_resamples: int = 1000,
                    level: float = 0.95, seed: int = 0, groups: Sequence[Any] | None = None,
                    unit: str = "graph (all seeds together)") -> SGIoUReport:
    """Per-image scores, their means and percentile-bootstrap intervals; ``groups`` (one id per image, e.g. the
    graph index) makes the interval resample whole groups -- pass it whenever a graph has several seeds."""
    _check_mode(mode)
    if failures not in ("zero", "skip"):
        raise ValueError(f"failures must be 'zero' or 'skip', got {failures!r}")
    if len(gts) != len(preds):
        raise ValueError(f"evaluate_sg_iou: {len(gts)} ground-truth graphs but {len(preds)} extractions")
    if not gts:
        raise ValueError("evaluate_sg_iou: no images")
    if groups is not None and len(groups) != len(gts):
        raise ValueError(f"evaluate_sg_iou: {len(groups)} groups for {len(gts)} images")
    unit = unit if groups is not None else "image"
    per_image = [None if (failures == "skip" and not p.ok) else sg_iou_scores(g, p, mode, granularity)
                 for g, p in zip(gts, preds)]
    counted = [s for s in per_image if s is not None]
    if not counted:
        raise ValueError(f"evaluate_sg_iou: all {len(preds)} extractions failed; nothing to average")
    kept = None if groups is None else [g for g, s in zip(groups, per_image) if s is not None]
    mean, ci = {}, {}
    for m in METRICS:
        vals = [getattr(s, m) for s in counted]
        ci[m] = bootstrap_ci(vals, n_resamples=n_resamples, level=level, seed=seed, groups=kept, unit=unit)
        mean[m] = ci[m].estimate
    return SGIoUReport(mode, granularity, failures, per_image, [p.status for p in preds], mean, ci,
                       None if groups is None else list(groups), unit)


def compare_sg_iou(a: SGIoUReport, b: SGIoUReport, *, n_resamples: int = 1000, level: float = 0.95,
                   seed: int = 0) -> dict[str, ConfidenceInterval]:
    """Paired-bootstrap intervals of mean(a) - mean(b) per metric; ``a`` and ``b`` must score the same graphs in
    the same order (e.g. aligned model vs base). Images skipped in either report are left out of both. Resamples
    the reports' groups (graphs) when they have them, with the same draw on both sides."""
    if (a.mode, a.granularity) != (b.mode, b.granularity):
        raise ValueError(f"compare_sg_iou: reports use different modes ({a.mode!r}/{a.granularity!r} vs "
                         f"{b.mode!r}/{b.granularity!r})")
    if a.n_images != b.n_images:
        raise ValueError(f"compare_sg_iou: reports cover {a.n_images} and {b.n_images} images; need the same items")
    if a.groups != b.groups:
        raise ValueError("compare_sg_iou: the reports group their images differently; pass the same groups to both")
    out = {}
    for m in METRICS:
        va, vb = a.values(m), b.values(m)
        keep = ~(np.isnan(va) | np.isnan(vb))
        groups = None if a.groups is None else [g for g, k in zip(a.groups, keep) if k]
        out[m] = paired_bootstrap_ci(va[keep], vb[keep], n_resamples=n_resamples, level=level, seed=seed,
                                     groups=groups, unit=a.unit)
    return out


# ---- spatial hold rate ----------------------------------------------------------------------------------------
# Why a figure of its own: a size triple ("large ... bigger than ... small") holds as soon as both phrases are drawn,
# so SG-IoU and Relation-IoU mostly measure entity rendering. A spatial triple holds only when the layout follows
# its predicate; among the spatial triples whose two phrases were both drawn, the share that holds is the one figure
# that says whether a model reads its relations (chance is about 1 in 4).
TRIPLE_KINDS = ("spatial", "size")


def triple_counts(gts: Sequence[SceneGraph], preds: Sequence[ExtractedGraph]) -> dict[str, np.ndarray]:
    """Per predicate kind of the world's relations, int [N, 3] per image: the true graph's triples of that kind, how
    many had both phrases in the extraction, and how many of those hold in it (directions made canonical on both
    sides). A failed extraction (``None``) counts its triples, none found."""
    # heavy (sgalign.world loads scipy, ~0.6 s): keeps sgalign.evaluation light
    from ..world.rules import SPATIAL, canonical_triple

    out = {k: np.zeros((len(gts), 3), dtype=np.int64) for k in TRIPLE_KINDS}
    for i, (g, e) in enumerate(zip(gts, preds)):
        found = set(e.object_list or []) if e is not None else set()
        held = {canonical_triple(*t) for t in (e.triples or [])} if e is not None else set()
        for a, p, b in g.triples():
            c = out["spatial" if p in SPATIAL else "size"][i]
            c[0] += 1
            if a in found and b in found:
                c[1] += 1
                c[2] += canonical_triple(a, p, b) in held
    return out


def _hold_rate(counts: np.ndarray, idx: np.ndarray) -> float:
    found = counts[idx, 1].sum()
    return float(counts[idx, 2].sum() / found) if found else float("nan")


def _hold_ci(stat, n: int, groups: Sequence[Any], n_resamples: int, level: float, seed: int,
             unit: str | None) -> dict[str, Any] | None:
    """Percentile interval of ``stat(image indices)`` over graph resamples; None when the estimate is undefined (no
    spatial triple had both phrases drawn). Resamples that drew no such triple are left out, and counted."""
    check_bootstrap_args(n_resamples, level)
    est = stat(np.arange(n))
    if not np.isfinite(est):
        return None
    idx, units = resample_indices(n, groups, n_resamples, np.random.default_rng(seed))
    boot = np.array([stat(i) for i in idx])
    ok = np.isfinite(boot)
    ci = percentile_interval(est, boot[ok], level, n_resamples, seed, units, unit or "group")
    return {**ci.to_dict(), "resamples_undefined": int((~ok).sum())}


def spatial_hold(counts: np.ndarray, *, groups: Sequence[Any], n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0, unit: str | None = None) -> dict[str, Any]:
    """The hold rate (holding / both found, pooled over images) of ``counts`` (``triple_counts``'s [N, 3]) with a
    percentile-bootstrap interval resampling ``groups`` (a graph with all its seeds), and the counts beside it."""
    ci = _hold_ci(lambda i: _hold_rate(counts, i), len(counts), groups, n_resamples, level, seed, unit)
    t, f, h = (int(v) for v in counts.sum(0))
    return {"holds_given_found": ci, "triples": t, "both_found": f, "holds": h,
            "both_found_share": f / t if t else None, "per_image": counts.tolist()}


def compare_spatial_hold(a: np.ndarray, b: np.ndarray, *, groups: Sequence[Any], n_resamples: int = 1000,
                         level: float = 0.95, seed: int = 0, unit: str | None = None) -> dict[str, Any] | None:
    """Paired Δ hold rate (``a`` - ``b``, the same images of the same graphs and noise), resampling ``groups``;
    None when either rate is undefined."""
    if a.shape != b.shape:
        raise ValueError(f"spatial hold: paired counts need the same images, got {a.shape} vs {b.shape}")
    return _hold_ci(lambda i: _hold_rate(a, i) - _hold_rate(b, i), len(a), groups, n_resamples, level, seed, unit)
