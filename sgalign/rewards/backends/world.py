"""World backends: the shapes-world oracle (``sgalign.world.WorldOracle``) behind the reward backend protocols.

* ``WorldOracleVQA`` (``YesNoVQA``): hard answers and ``(P(yes), 1 - P(yes))`` from the oracle. It reads a query's
  DSG ``tuple`` when it has one (DPG and 3-in-1 questions built from a scene graph always do), else its English text.
* ``WorldOracleDetector`` (``Detector``): open-vocabulary over the world's phrase language. For every query that is a
  world noun phrase ("circle", "red small circle") and every object the oracle reads, one detection labelled with
  the query, scored P(object is the phrase) (objectness included); detections below ``score_threshold`` (0.5, as
  UniDet in T2I-CompBench) are dropped. A query with words outside the world's vocabulary detects nothing.
* ``WorldOracleSimilarity`` (``ImageTextSimilarity``): **not a cosine**; the stand-in for 3-in-1's C written before
  the world had a CLIP, kept as ``similarity="oracle"``. An oracle proposition score, documented in its
  ``BackendInfo.details["definition"]``: the text is read as clauses -- "<phrase> <predicate> <phrase>" (a triple)
  or a lone "<phrase>" (an entity) -- exactly as ``SceneGraph.serialize`` writes them, and the similarity is the
  mean over the clauses of the oracle's P(yes); no clause -> 0. Like CLIP it cannot count (two "circle" clauses
  are both satisfied by one circle). Numbers computed with it are world numbers, never CLIPScore values.

All three report ``BackendInfo(kind="world", fallback=False)``. A reward backed by them is the world's reward:
exact answers about synthetic images, not a benchmark value. ``world_reward`` builds the world's default
combined reward (DPG-Bench and 3-in-1 averaged, Inversion-DPO Eq. 17); its C is by default the real cosine of the
trained world-CLIP (``world_clip.WorldCLIPSimilarity``, ``similarity="world-clip"``).

``corrupt_scene`` makes the corrupted scenes the rewards are checked against (wrong relation, wrong colour,
missing object); ``scripts/bench_world_rewards.py`` and ``tests/test_rewards_world.py`` use it.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ...world import rules
from ...world.oracle import ORACLE_VERSION, OracleScene, Phrase, Question, WorldOracle
from ...world.sampler import WorldScene, layout_boxes, sample_split
from ..combine import CombinedReward
from ..compbench import CompBench3in1Reward, CompBenchConfig
from ..dpg_bench import DPGConfig, DPGReward
from ..provenance import BackendInfo
from .protocols import Detection, ImageTextSimilarity, VQAQuery
from .world_clip import WorldCLIPSimilarity

ADAPTER_VERSION = "1"
DEFAULT_SCORE_THRESHOLD = 0.5  # UniDet's ROI-head threshold in T2I-CompBench's spatial evaluation
SIMILARITY_DEFINITION = (
    "mean over the text's clauses ('<phrase> <predicate> <phrase>' triples and lone '<phrase>' entities, read as "
    "SceneGraph.serialize writes them; predicates: " + ", ".join(rules.PREDICATES) + ") of the world oracle's "
    "P(yes); 0 for a text with no clause; not a cosine")


class _ParseCache:
    """The oracle's reading of recent images, keyed by pixel content (the oracle is deterministic, so a hit is
    exactly what a fresh parse would give). Shared by the backends of one ``world_reward`` so the DPG questions,
    3-in-1's A, S and C parse each image once."""

    def __init__(self, oracle: WorldOracle, maxsize: int = 64):
        self.oracle = oracle
        self.maxsize = maxsize
        self._scenes: OrderedDict[tuple, OracleScene] = OrderedDict()

    @staticmethod
    def _key(image: Any) -> tuple | None:
        if isinstance(image, Image.Image):
            return (image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if isinstance(image, np.ndarray):
            a = np.ascontiguousarray(image)
            return (str(a.dtype), a.shape, hashlib.blake2b(a.tobytes(), digest_size=16).digest())
        return None  # tensors etc.: parsed every time

    def parse(self, image: Any) -> OracleScene:
        key = self._key(image)
        if key is not None and key in self._scenes:
            self._scenes.move_to_end(key)
            return self._scenes[key]
        scene = self.oracle.parse(image)
        if key is not None:
            self._put(key, scene, self.maxsize)
        return scene

    def parse_many(self, images: Sequence[Any]) -> None:
        """Parse the images not cached yet in one ``parse_batch`` call (its colour model is vectorised over
        images); a batch larger than ``maxsize`` stays cached whole, for the per-image calls that follow."""
        keys = [self._key(im) for im in images]
        todo = {k: im for k, im in zip(keys, images) if k is not None and k not in self._scenes}
        for k, scene in zip(todo, self.oracle.parse_batch(list(todo.values())) if todo else []):
            self._put(k, scene, max(self.maxsize, len(images)))
        for k in keys:
            if k in self._scenes:
                self._scenes.move_to_end(k)

    def _put(self, key: tuple, scene: OracleScene, keep: int) -> None:
        self._scenes[key] = scene
        while len(self._scenes) > keep:
            self._scenes.popitem(last=False)


def _cache(oracle: WorldOracle | _ParseCache | None) -> _ParseCache:
    if isinstance(oracle, _ParseCache):
        return oracle
    if oracle is None:
        oracle = WorldOracle()
    if not isinstance(oracle, WorldOracle):
        raise TypeError(f"world backend: expected a sgalign.world.WorldOracle, got {type(oracle).__name__}")
    return _ParseCache(oracle)


def _info(name: str, oracle: WorldOracle, **details: Any) -> BackendInfo:
    return BackendInfo(name=name, version=f"{ADAPTER_VERSION}+oracle{ORACLE_VERSION}", kind="world", fallback=False,
                       details={"oracle": oracle.config(), **details})


class _OracleBacked:
    """A backend answering from the shared parse cache."""

    _cache: _ParseCache

    def prepare(self, images: Sequence[Image.Image]) -> None:
        """Parse the reward batch's images in one oracle call (``protocols.prepare_backends``)."""
        self._cache.parse_many(images)


class WorldOracleVQA(_OracleBacked):
    """Yes/no VQA answered by the world oracle (hard answer for DPG, soft P(yes) for 3-in-1's A)."""

    def __init__(self, oracle: WorldOracle | _ParseCache | None = None):
        self._cache = _cache(oracle)
        self.info = _info("world-oracle-vqa", self._cache.oracle, reads="DSG tuple if present, else text")

    def answer(self, image: Image.Image, queries: Sequence[VQAQuery]) -> list[str]:
        scene = self._cache.parse(image)
        return [scene.answer(q) for q in queries]

    def yes_no_probs(self, image: Image.Image, queries: Sequence[VQAQuery]) -> list[tuple[float, float]]:
        scene = self._cache.parse(image)
        return [(p, 1.0 - p) for p in (scene.p_yes(q) for q in queries)]


class WorldOracleDetector(_OracleBacked):
    """Open-vocabulary detector over world noun phrases (see the module docstring)."""

    vocabulary = None  # open vocabulary: detects exactly the queried phrases

    def __init__(self, oracle: WorldOracle | _ParseCache | None = None,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD):
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"WorldOracleDetector: score_threshold must lie in [0, 1], got {score_threshold}")
        self._cache = _cache(oracle)
        self.score_threshold = float(score_threshold)
        self.info = _info("world-oracle-detector", self._cache.oracle, score_threshold=self.score_threshold,
                          score="objectness x P(shape, colour, size as the query names them)")

    def detect(self, image: Image.Image, queries: Sequence[str]) -> list[Detection]:
        objects = self._cache.parse(image).detections
        out = []
        for q in dict.fromkeys(queries):
            phrase = Phrase.parse(q)
            if phrase.unknown or phrase == Phrase():
                continue  # not a world phrase: nothing in a world image is one
            for d in objects:
                s = d.p_matches(phrase)
                if s >= self.score_threshold:
                    out.append(Detection(q, float(s), tuple(float(v) for v in d.box)))
        return sorted(out, key=lambda d: -d.score)


_PRED_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, rules.PREDICATES), key=len, reverse=True)) + r")\b")
_MODIFIERS = set(rules.COLOURS) | set(rules.SIZES)
_FILLERS = {"a", "an", "the", "and", "is", "are", "there", "of", "some", "with", "to", "on", "in", "it"}


def _phrases(chunk: str) -> list[str]:
    """Noun phrases in a stretch of text without predicates: modifier words up to a head word (a shape or any
    other word), so the serialised "square triangle" is two phrases."""
    out, mods = [], []
    for w in re.findall(r"[a-z]+", chunk.lower()):
        if w in _FILLERS:
            continue
        if w in _MODIFIERS:
            mods.append(w)
            continue
        out.append(" ".join([*mods, w]))
        mods = []
    if mods:  # trailing modifiers without a head: an object described only by them
        out.append(" ".join(mods))
    return out


def text_clauses(text: str) -> list[Question]:
    """The clauses of a (serialised) scene-graph text as oracle questions: a triple for each
    "<phrase> <predicate> <phrase>", an entity for each other phrase. Each phrase belongs to one clause (the object
    of one triple is not the subject of the next); a predicate without a free phrase on both sides is dropped."""
    pieces = _PRED_RE.split(text.lower())  # phrases, predicate, phrases, predicate, ...
    chunks, preds = [_phrases(p) for p in pieces[0::2]], pieces[1::2]
    clauses: list[Question] = []
    used_first = False  # whether chunks[k]'s first phrase was taken as the object of the previous predicate
    for k, chunk in enumerate(chunks):
        rest = chunk[1:] if used_first else chunk
        used_first = False
        if k < len(preds) and rest and chunks[k + 1]:
            subject, obj = rest[-1], chunks[k + 1][0]
            clauses += [Question("entity", Phrase.parse(p)) for p in rest[:-1]]
            clauses.append(Question("relation", Phrase.parse(subject), predicate=preds[k], object=Phrase.parse(obj)))
            used_first = True
        else:
            clauses += [Question("entity", Phrase.parse(p)) for p in rest]
    return clauses


class WorldOracleSimilarity(_OracleBacked):
    """Oracle stand-in for 3-in-1's C (``similarity="oracle"``; the default C is world-CLIP's cosine): mean P(yes)
    of the text's clauses (not a cosine; see ``SIMILARITY_DEFINITION``)."""

    def __init__(self, oracle: WorldOracle | _ParseCache | None = None):
        self._cache = _cache(oracle)
        self.info = _info("world-oracle-similarity", self._cache.oracle, definition=SIMILARITY_DEFINITION,
                          cosine=False)

    def similarity(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        if len(images) != len(texts):
            raise ValueError(f"similarity: {len(images)} images but {len(texts)} texts")
        out = []
        for image, text in zip(images, texts):
            clauses = text_clauses(text)
            scene = self._cache.parse(image)
            out.append(sum(scene.p_yes(q) for q in clauses) / len(clauses) if clauses else 0.0)
        return out


SIMILARITIES = ("world-clip", "oracle")  # 3-in-1's C on the world: world-CLIP's cosine (default), the oracle score


def world_similarity(similarity: str | ImageTextSimilarity = "world-clip",
                     oracle: WorldOracle | _ParseCache | None = None,
                     world_clip_path: str | os.PathLike | None = None) -> ImageTextSimilarity:
    """3-in-1's C backend on the world: ``"world-clip"`` (``WorldCLIPSimilarity`` from ``world_clip_path``, default
    the shipped world-CLIP; missing files raise ``BackendUnavailable`` saying what to do, never a silent fallback),
    ``"oracle"`` (``WorldOracleSimilarity``, not a cosine), or a ready ``ImageTextSimilarity`` object (used as is)."""
    if not isinstance(similarity, str):
        if not isinstance(similarity, ImageTextSimilarity):
            raise TypeError(f"world similarity: expected one of {SIMILARITIES} or an ImageTextSimilarity, "
                            f"got {type(similarity).__name__}")
        return similarity
    if similarity == "world-clip":
        return WorldCLIPSimilarity.from_pretrained(world_clip_path)
    if similarity == "oracle":
        if world_clip_path is not None:
            raise ValueError("world similarity 'oracle' reads no files; world_clip_path is for 'world-clip'")
        return WorldOracleSimilarity(oracle)
    raise ValueError(f"unknown world similarity {similarity!r}; expected one of {SIMILARITIES}")


def world_backends(oracle: WorldOracle | None = None, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                   similarity: str | ImageTextSimilarity = "world-clip",
                   world_clip_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The world backends by role: oracle VQA and detector sharing one oracle and one parse cache, and the C
    backend of ``world_similarity(similarity, ...)`` (world-CLIP by default)."""
    cache = _cache(oracle)
    return {"vqa": WorldOracleVQA(cache), "detector": WorldOracleDetector(cache, score_threshold),
            "similarity": world_similarity(similarity, cache, world_clip_path)}


def world_reward(oracle: WorldOracle | None = None, dpg_config: DPGConfig | None = None,
                 compbench_config: CompBenchConfig | None = None,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 similarity: str | ImageTextSimilarity = "world-clip",
                 world_clip_path: str | os.PathLike | None = None) -> CombinedReward:
    """The world's default reward: ``CombinedReward([DPGReward, CompBench3in1Reward])`` on world backends, i.e.
    r = (dpg + compbench_3in1) / 2 (Inversion-DPO Eq. 17), for (image, ``SceneGraph``) batches.

    3-in-1's C: ``similarity="world-clip"`` (default) the raw cosine of the shipped world-CLIP (or the one in
    ``world_clip_path``); ``"oracle"`` the oracle proposition score (not a cosine). The provenance's
    ``backends["similarity"]`` names which (``world-clip-similarity`` / ``world-oracle-similarity``).

    ``out = world_reward()(images, graphs)``: ``out.scores[i]`` = {"dpg", "compbench_3in1", "reward"},
    ``out.parts[i]`` the sub-scores (3-in-1's A, S, C, T, type), ``out.provenance`` one entry per member with the
    world backends (kind "world") and the quirk flags (default: corrected behaviour)."""
    b = world_backends(oracle, score_threshold, similarity, world_clip_path)
    return CombinedReward([
        DPGReward(b["vqa"], dpg_config if dpg_config is not None else DPGConfig()),
        CompBench3in1Reward(b["vqa"], b["detector"], b["similarity"],
                            config=compbench_config if compbench_config is not None else CompBenchConfig()),
    ])


# ---- corrupted scenes (the "rank the true render above a corrupted one" check) -----------------------------------
CORRUPTIONS = ("relation", "colour", "missing")


def corrupt_scene(scene: WorldScene, kind: str, rng: np.random.Generator) -> WorldScene | None:
    """A scene whose graph differs from ``scene``'s by one corruption, with a layout of its own:

    * ``relation``: one *spatial* relation gets another spatial predicate and the objects are laid out again (same
      sizes and extents) so that the corrupted graph holds; the true triple then fails (at most one spatial
      predicate holds per ordered pair). Size relations are not used: in the world they are fixed by the size
      attributes, so falsifying one would also change an attribute. None when the graph has no spatial relation
      or no layout is found.
    * ``colour``: one object gets another colour (phrases stay distinct); same layout.
    * ``missing``: one object and its relations are removed; the others keep their boxes.
    """
    objs, rels = list(scene.objects), list(scene.relations)
    if kind == "relation":
        spatial = [k for k, (_, p, _) in enumerate(rels) if p in rules.SPATIAL]
        if not spatial:
            return None
        k = spatial[int(rng.integers(len(spatial)))]
        s, p, o = rels[k]
        for new in rng.permutation([q for q in rules.SPATIAL if q != p]):
            new_rels = rels[:k] + [(s, str(new), o)] + rels[k + 1:]
            extents = np.array([ob.extent for ob in objs])
            boxes = layout_boxes(rng, extents, [t for t in new_rels if t[1] in rules.SPATIAL])
            if boxes is not None:
                return WorldScene(tuple(replace(ob, box=tuple(int(v) for v in bx)) for ob, bx in zip(objs, boxes)),
                                  tuple(new_rels))
        return None
    if kind == "colour":
        i = int(rng.integers(len(objs)))
        taken = {ob.phrase for ob in objs}
        options = [c for c in rules.COLOURS if c != objs[i].colour
                   and replace(objs[i], colour=c).phrase not in taken]
        objs[i] = replace(objs[i], colour=options[int(rng.integers(len(options)))])
        return WorldScene(tuple(objs), tuple(rels))
    if kind == "missing":
        i = int(rng.integers(len(objs)))
        keep = [j for j in range(len(objs)) if j != i]
        index = {j: n for n, j in enumerate(keep)}
        return WorldScene(tuple(objs[j] for j in keep),
                          tuple((index[s], p, index[o]) for s, p, o in rels if i not in (s, o)))
    raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")


def corruption_cases(n: int, seed: int = 0, split: str = "test"
                     ) -> tuple[list[tuple[str, WorldScene, WorldScene]], int]:
    """``n`` (kind, true scene, corrupted scene) cases, kinds cycling through ``CORRUPTIONS``, deterministic in
    (n, seed, split). Scenes come from ``sample_split(split, ., seed)`` in order; a scene the current kind cannot
    corrupt (``relation`` without a spatial relation) is skipped and the same kind is tried on the next scene.
    Returns (cases, number of scenes skipped)."""
    cases: list[tuple[str, WorldScene, WorldScene]] = []
    skipped, pool = 0, 0
    while len(cases) < n:  # rarely more than one round: about 1 scene in 12 is skipped
        pool = max(2 * pool, n + n // 2)
        scenes = sample_split(split, pool, seed=seed)  # deterministic prefix: a larger pool extends a smaller one
        cases, skipped = [], 0
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        for sc in scenes:
            kind = CORRUPTIONS[len(cases) % len(CORRUPTIONS)]
            bad = corrupt_scene(sc, kind, rng)
            if bad is None:
                skipped += 1
                continue
            cases.append((kind, sc, bad))
            if len(cases) == n:
                break
    return cases, skipped
