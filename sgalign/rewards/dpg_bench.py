"""DPG-Bench (ELLA) as pure code: DSG question files, scene graph -> question graph, exact-"yes" answers,
dependency zeroing, 2x2 tiles, per-image and benchmark aggregation.

Official behaviour (``dpg_bench/compute_dpg_bench.py``; details in the project's reference notes):

* per tile, question q scores 1.0 iff the VQA answer string is exactly ``"yes"``;
* the questions are walked **in file order** and updated **in place**: q becomes 0 when any parent (id != 0) has
  score 0 *at that moment*. A parent listed after its child therefore affects the child only through the parent's
  own raw answer, never through a zero the parent receives later;
* tile score = sum / number of questions (zeroed ones included); image score S = mean over the first ``pic_num``
  tiles of the 2x2 grid (TL, TR, BL, BR, each of side R); benchmark = 100 x mean S over the images that scored.

Quirks, each a flag of ``DPGConfig`` (``DPGConfig.official()`` turns them all on; the default is the corrected
behaviour; the flags travel with every score):

* ``skip_first_row``: the official loader skips the first data row of the CSV (ELLA #61);
* ``file_order_dependency``: the single in-place pass above; corrected = a zero propagates along every parent
  chain whatever the file order (fixed point);
* ``last_tile_categories``: category statistics use the last tile's raw (pre-dependency) scores (ELLA #60);
  corrected = per-question mean over all tiles of the dependency-adjusted scores (consistent with the headline);
* ``drop_failed``: an image that fails (e.g. a parent id that does not exist -> KeyError) vanishes from the mean;
  corrected = it counts as 0 and is listed;
* ``lenient_crop``: crops outside the image are padded with black (PIL) instead of raising.
"""
from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image

from ..scene_graph import SceneGraph
from .backends.protocols import VQAQuery, YesNoVQA, prepare_backends
from .lexicon import attribute_kind, dpg_relation_kind
from .provenance import Provenance, QuirkFlags, RewardOutput, check_unit


class DSGFormatError(ValueError):
    """A DSG question file or question set is malformed (names the file, row and field)."""


class DependencyError(KeyError):
    """A question lists a parent id that is not in its question set (the official scorer dies with KeyError)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class DPGConfig(QuirkFlags):
    skip_first_row: bool = False
    file_order_dependency: bool = False
    last_tile_categories: bool = False
    drop_failed: bool = False
    lenient_crop: bool = False


@dataclass(frozen=True)
class DPGQuestion:
    qid: int
    question: str
    parents: tuple[int, ...]  # 0 = no parent, as in the file
    tuple: str
    item_ids: tuple[int, ...] = ()  # scene-graph items the question is about (for world backends)

    @property
    def category_l2(self) -> str:
        """Official rule: everything before the first "(" of the tuple, stripped ("attribute - color")."""
        return self.tuple.split("(")[0].strip()

    @property
    def category_l1(self) -> str:
        return self.category_l2.split("-")[0].strip()

    def query(self) -> VQAQuery:
        return VQAQuery(self.question, self.tuple, self.item_ids)


@dataclass
class QuestionSet:
    item_id: str
    questions: list[DPGQuestion]  # file order
    prompt: str | None = None

    def validate(self, where: str = "") -> None:
        ids = [q.qid for q in self.questions]
        if len(set(ids)) != len(ids):
            raise DSGFormatError(f"{where}item {self.item_id!r}: duplicate proposition_id")
        known = set(ids)
        for q in self.questions:
            for p in q.parents:
                if p != 0 and p not in known:
                    raise DSGFormatError(f"{where}item {self.item_id!r}, proposition {q.qid}: dependency {p} "
                                         f"is not a proposition of this item")


# ---- question files ----------------------------------------------------------------------------------------------
_QUESTION_COLUMNS = ("question_natural_language", "question")


def parse_dependency(value: str, where: str = "") -> tuple[int, ...]:
    try:
        return tuple(int(d.strip()) for d in str(value).split(","))
    except ValueError:
        raise DSGFormatError(f"{where}field 'dependency' must be comma-separated integers, got {value!r}") from None


def read_dsg_csv(path: str | os.PathLike, skip_first_row: bool = False,
                 validate: bool = True) -> dict[str, QuestionSet]:
    """Read a DSG/DPG-Bench question file (``dpg_bench.csv`` layout: item_id, text, keywords, proposition_id,
    dependency, category_broad, category_detailed, tuple, question_natural_language; ``question`` is accepted for
    the last). Items keep file order.

    ``skip_first_row`` reproduces the official loader (the first data row is never read). ``validate=False`` is the
    official leniency: a later non-contiguous block of an item *replaces* the earlier one, a duplicate
    proposition_id overwrites, and unknown parents only fail at scoring time; with ``validate=True`` each of these
    is a ``DSGFormatError`` naming the file and row."""
    path = os.fspath(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        qcol = next((c for c in _QUESTION_COLUMNS if c in header), None)
        missing = [c for c in ("item_id", "proposition_id", "dependency", "tuple") if c not in header]
        if missing or qcol is None:
            need = missing + ([] if qcol else ["question_natural_language (or question)"])
            raise DSGFormatError(f"{path}: missing column(s) {need}; found {header}")
        sets: dict[str, QuestionSet] = {}
        prev = None
        for i, row in enumerate(reader):
            if skip_first_row and i == 0:
                continue
            where = f"{path}, data row {i + 1}: "
            item = (row["item_id"] or "").strip()
            if not item:
                raise DSGFormatError(f"{where}empty item_id")
            try:
                qid = int(row["proposition_id"])
            except (TypeError, ValueError):
                raise DSGFormatError(f"{where}field 'proposition_id' must be an integer, "
                                     f"got {row['proposition_id']!r}") from None
            q = DPGQuestion(qid, row[qcol] or "", parse_dependency(row["dependency"], where), row["tuple"] or "")
            if item != prev:
                if item in sets and validate:
                    raise DSGFormatError(f"{where}item {item!r} appears again after other items (rows of an item "
                                         "must be contiguous; the official loader would drop the earlier rows)")
                sets[item] = QuestionSet(item, [q], row.get("text"))  # official: a new block replaces
            else:
                qs = sets[item].questions
                dup = next((k for k, old in enumerate(qs) if old.qid == qid), None)
                if dup is not None:
                    if validate:
                        raise DSGFormatError(f"{where}duplicate proposition_id {qid} in item {item!r}")
                    qs[dup] = q  # dict semantics: keeps the first position, takes the last value
                else:
                    qs.append(q)
            prev = item
    if validate:
        for s in sets.values():
            s.validate(f"{path}: ")
    return sets


# ---- scene graph -> question graph -------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def questions_from_scene_graph(sg: SceneGraph, item_id: str = "scene_graph") -> QuestionSet:
    """DSG-style questions for a scene graph: per item an entity question "Is there a X?" (no parent), per
    attribute "Is the X <attr>?" (parent: the entity), per relation "Is the X <rel> the Y?" (parents: both
    entities); entities first, then attributes, then relations, so parents always precede children.

    X is the item's label; when several items share a label they are named by their phrase ("red circle") so the
    questions stay distinguishable."""
    counts: dict[str, int] = defaultdict(int)
    for it in sg.items:
        counts[it.label] += 1
    ref = {it.item_id: (sg.phrase(it) if counts[it.label] > 1 else it.label) for it in sg.items}
    qs: list[DPGQuestion] = []
    entity_qid: dict[int, int] = {}
    for it in sg.items:
        qid = len(qs) + 1
        entity_qid[it.item_id] = qid
        x = ref[it.item_id]
        qs.append(DPGQuestion(qid, f"Is there {_article(x)} {x}?", (0,), f"entity - whole ({x})", (it.item_id,)))
    for it in sg.items:
        x = ref[it.item_id]
        for a in it.attributes:
            qs.append(DPGQuestion(len(qs) + 1, f"Is the {x} {a}?", (entity_qid[it.item_id],),
                                  f"attribute - {attribute_kind(a)} ({x}, {a})", (it.item_id,)))
    for r in sg.relations:
        s, o = ref[r.subject], ref[r.object]
        qs.append(DPGQuestion(len(qs) + 1, f"Is the {s} {r.predicate} the {o}?",
                              (entity_qid[r.subject], entity_qid[r.object]),
                              f"relation - {dpg_relation_kind(r.predicate)} ({s}, {o}, {r.predicate})",
                              (r.subject, r.object)))
    return QuestionSet(item_id, qs, sg.serialize().strip())


# ---- scoring -----------------------------------------------------------------------------------------------------
def exact_yes(answer: str) -> float:
    """Official: exact, case-sensitive match; "Yes", "yes." or "yeah" score 0."""
    return 1.0 if answer == "yes" else 0.0


def apply_dependencies(questions: Sequence[DPGQuestion], raw: Mapping[int, float],
                       file_order: bool) -> tuple[dict[int, float], dict[int, bool]]:
    """Zero questions whose parents failed. Returns (adjusted scores, validity) keyed by qid, in question order.

    ``file_order=True``: the official single pass in file order, in place -- a parent is read as it stands when its
    child is visited. ``file_order=False``: a zero propagates along every chain (iterate to the fixed point).
    A parent id that is not a question raises ``DependencyError`` (official: KeyError)."""
    scores = {q.qid: float(raw[q.qid]) for q in questions}
    valid = {q.qid: True for q in questions}

    def one_pass() -> bool:
        changed = False
        for q in questions:
            bad = False
            for p in q.parents:
                if p == 0:
                    continue
                if p not in scores:
                    raise DependencyError(f"question {q.qid} depends on {p}, which is not in the question set")
                if scores[p] == 0:
                    bad = True
                    break
            if bad:
                if scores[q.qid] != 0:
                    changed = True
                scores[q.qid] = 0.0
                valid[q.qid] = False
            elif file_order:
                valid[q.qid] = True
        return changed

    if file_order:
        one_pass()
    else:
        while one_pass():
            pass
    return scores, valid


def tile_boxes(resolution: int, pic_num: int) -> list[tuple[int, int, int, int]]:
    """The official crops, in order TL, TR, BL, BR, each of side ``resolution``; the first ``pic_num`` are used."""
    if not 1 <= pic_num <= 4:
        raise ValueError(f"pic_num must be 1..4, got {pic_num}")
    r = int(resolution)
    return [(0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r)][:pic_num]


def crop_tiles(image: Image.Image, pic_num: int, resolution: int | None = None,
               lenient: bool = False) -> list[Image.Image]:
    """Crop the tiles of a grid image. With ``pic_num=1`` and no ``resolution`` the whole image is the one tile
    (a single generated image, whatever its aspect); otherwise ``resolution`` defaults to half the image width.
    Unless ``lenient`` (official), a crop reaching outside the image is an error rather than black padding."""
    if resolution is None:
        if pic_num == 1:
            return [image]
        resolution = image.width // 2
    boxes = tile_boxes(resolution, pic_num)
    if not lenient:
        need_w = max(b[2] for b in boxes)
        need_h = max(b[3] for b in boxes)
        if image.width < need_w or image.height < need_h:
            raise ValueError(f"DPG tiles: pic_num={pic_num} with tile side {resolution} needs an image of at least "
                             f"{need_w}x{need_h}, got {image.width}x{image.height}")
    return [image.crop(b) for b in boxes]


@dataclass
class DPGImageResult:
    item_id: str
    score: float  # S in [0, 1]
    tile_scores: list[float]
    raw: list[dict[int, float]]  # per tile, before dependencies
    adjusted: list[dict[int, float]]  # per tile, after dependencies
    answers: list[dict[int, str]]


@dataclass
class DPGFailure:
    item_id: str
    reason: str


def score_answers(qset: QuestionSet, tile_answers: Sequence[Mapping[int, str]],
                  config: DPGConfig = DPGConfig()) -> DPGImageResult:
    """Pure per-image score from the VQA answer strings of each tile (``tile_answers[t][qid]``)."""
    if not qset.questions:
        raise DSGFormatError(f"item {qset.item_id!r} has no questions")
    raws, adjs, tile_scores = [], [], []
    for answers in tile_answers:
        raw = {q.qid: exact_yes(answers[q.qid]) for q in qset.questions}
        adj, _ = apply_dependencies(qset.questions, raw, config.file_order_dependency)
        raws.append(raw)
        adjs.append(adj)
        tile_scores.append(sum(adj.values()) / len(adj))
    if not tile_scores:
        raise ValueError("score_answers: no tiles")
    return DPGImageResult(qset.item_id, sum(tile_scores) / len(tile_scores), tile_scores, raws, adjs,
                          [dict(a) for a in tile_answers])


def score_image(image: Image.Image, qset: QuestionSet, vqa: YesNoVQA, pic_num: int = 1,
                resolution: int | None = None, config: DPGConfig = DPGConfig()) -> DPGImageResult:
    """Ask every question of ``qset`` on each tile and score (official ``compute_dpg_one_sample``)."""
    tiles = crop_tiles(image, pic_num, resolution, lenient=config.lenient_crop)
    queries = [q.query() for q in qset.questions]
    tile_answers = []
    for tile in tiles:
        ans = vqa.answer(tile, queries)
        if len(ans) != len(queries):
            raise ValueError(f"VQA backend {vqa.info.name} returned {len(ans)} answers for {len(queries)} questions")
        tile_answers.append({q.qid: a for q, a in zip(qset.questions, ans)})
    return score_answers(qset, tile_answers, config)


@dataclass
class DPGBenchmarkResult:
    score: float  # 100 x mean S
    n_scored: int
    failed: list[DPGFailure]
    categories_l1: dict[str, float]  # 100 x mean
    categories_l2: dict[str, float]
    flags: dict[str, bool] = field(default_factory=dict)


def benchmark(results: Iterable[DPGImageResult | DPGFailure], question_sets: Mapping[str, QuestionSet],
              config: DPGConfig = DPGConfig()) -> DPGBenchmarkResult:
    """Aggregate per-image results. Failed images are dropped (``drop_failed``, official) or count as 0."""
    scores: list[float] = []
    n_ok = 0
    failed: list[DPGFailure] = []
    l1: dict[str, list[float]] = defaultdict(list)
    l2: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if isinstance(r, DPGFailure):
            failed.append(r)
            if not config.drop_failed:
                scores.append(0.0)
            continue
        scores.append(r.score)
        n_ok += 1
        for q in question_sets[r.item_id].questions:
            if config.last_tile_categories:
                v = r.raw[-1][q.qid]
            else:
                v = sum(t[q.qid] for t in r.adjusted) / len(r.adjusted)
            l2[q.category_l2].append(v)
            l1[q.category_l1].append(v)
    mean = (sum(scores) / len(scores)) if scores else float("nan")
    return DPGBenchmarkResult(
        100.0 * mean, n_ok, failed,
        {k: 100.0 * sum(v) / len(v) for k, v in l1.items()}, {k: 100.0 * sum(v) / len(v) for k, v in l2.items()},
        config.flags())


def score_folder_images(items: Iterable[tuple[str, Image.Image | Exception]], question_sets: Mapping[str, QuestionSet],
                        vqa: YesNoVQA, pic_num: int = 1, resolution: int | None = None,
                        config: DPGConfig = DPGConfig()) -> list[DPGImageResult | DPGFailure]:
    """Score (key, image) pairs as the official loop does: an unknown key, an unreadable image (pass the exception)
    or a dependency on a missing question becomes a ``DPGFailure`` rather than stopping the run."""
    out: list[DPGImageResult | DPGFailure] = []
    for key, image in items:
        if isinstance(image, Exception):
            out.append(DPGFailure(key, f"unreadable image: {image}"))
            continue
        if key not in question_sets:
            out.append(DPGFailure(key, "no questions for this key"))
            continue
        try:
            out.append(score_image(image, question_sets[key], vqa, pic_num, resolution, config))
        except DependencyError as err:
            out.append(DPGFailure(key, str(err)))
    return out


# ---- reward ------------------------------------------------------------------------------------------------------
class DPGReward:
    """Per-image DPG proportion S in [0, 1] as a reward component named ``dpg``.

    Targets are scene graphs (questions built by ``questions_from_scene_graph``), ``QuestionSet``s, or item ids
    of ``question_sets`` (e.g. read from ``dpg_bench.csv``). Images are single images (``pic_num=1``) unless a
    grid is configured."""

    name = "dpg"

    def __init__(self, vqa: YesNoVQA, config: DPGConfig = DPGConfig(), pic_num: int = 1,
                 resolution: int | None = None, question_sets: Mapping[str, QuestionSet] | None = None):
        self.vqa = vqa
        self.config = config
        self.pic_num = pic_num
        self.resolution = resolution
        self.question_sets = dict(question_sets or {})

    def question_set(self, target: Any) -> QuestionSet:
        if isinstance(target, QuestionSet):
            return target
        if isinstance(target, SceneGraph):
            return questions_from_scene_graph(target)
        if isinstance(target, str):
            if target in self.question_sets:
                return self.question_sets[target]
            raise KeyError(f"DPGReward: no question set for {target!r}; a plain prompt needs a DSG question file "
                           "(question_sets=read_dsg_csv(...)) or pass a SceneGraph")
        raise TypeError(f"DPGReward: target must be a SceneGraph, QuestionSet or item id, got {type(target)}")

    def provenance(self) -> Provenance:
        return Provenance(self.name, {"vqa": self.vqa.info}, self.config.flags(),
                          {"pic_num": self.pic_num, "resolution": self.resolution, "answer_match": "exact 'yes'"})

    def __call__(self, images: Sequence[Image.Image], targets: Sequence[Any]) -> RewardOutput:
        if len(images) != len(targets):
            raise ValueError(f"DPGReward: {len(images)} images but {len(targets)} targets")
        prepare_backends(images, self.vqa)
        scores, parts = [], []
        for image, target in zip(images, targets):
            qset = self.question_set(target)
            res = score_image(image, qset, self.vqa, self.pic_num, self.resolution, self.config)
            scores.append({self.name: check_unit(self.name, res.score)})
            parts.append({"dpg/tile_scores": res.tile_scores, "dpg/n_questions": len(qset.questions),
                          "dpg/answers": [{str(k): v for k, v in a.items()} for a in res.answers]})
        return RewardOutput(scores, parts, [self.provenance()])
