"""T2I-CompBench "3-in-1" (complex prompts) as pure code: A (BLIP-VQA attribute product), S (UniDet spatial rule),
C (CLIPScore without adjectives), prompt type, T.

Official behaviour (``BLIPvqa_eval``, ``UniDet_eval/2D_spatial_eval.py --complex``, ``CLIPScore_eval``,
``3_in_1_eval/3_in_1.py``; details in the project's reference notes):

* A = prod over the first 8 noun chunks (chunks "top", "the side", "the left", "the right" dropped) of
  P(yes)/(P(yes)+P(no)) for the question "<chunk>?" (lower-cased, punctuation stripped), written with 4 decimals;
* S: obj1/obj2 = the nouns around the (single) preposition, locality = the first locality word in the prompt,
  pos = the position rule (150 px, IoU 0.1) in the detector frame (shorter side 479, longer <= 480);
  S = 0.25*s1 + 0.25*s2 + pos/2 (one object found: 0.25*s), and S = 0 when S < 0.5;
* C = raw cosine of CLIP ViT-B/32 embeddings of the image and the prompt with its ADJ tokens removed;
* T = (S+A)/2 (spatial list), (C+A)/2 (action list), (A+S+C)/3 (otherwise).

Quirk flags (``CompBenchConfig.official()`` = all on; default = corrected; recorded with every score):
``on_top_of_zero`` ("on top of" has no rule, pos = 0; corrected: scored as "on the top of"),
``round_attribute`` (A rounded to 4 decimals), ``np_cap`` (only the first 8 noun chunks),
``same_label_same_box`` (two objects with the same name both take the first detection; corrected: the second
takes the next detection of that name).

Scene graphs (an extension; never benchmark-comparable): noun phrases = item phrases, S = mean over the spatial
relations (predicate -> locality via ``lexicon``), C text = the serialised graph without attributes, type from
the predicates.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from PIL import Image

from ..scene_graph import Item, SceneGraph
from .backends.protocols import Detection, Detector, ImageTextSimilarity, ParsedText, TextParser, VQAQuery, YesNoVQA, \
    prepare_backends
from .lexicon import LOCALITIES, is_spatial_predicate, predicate_locality
from .provenance import Provenance, QuirkFlags, RewardOutput, check_unit

PromptType = Literal["spatial", "action", "spatial_action"]
EXCLUDED_CHUNKS = ("top", "the side", "the left", "the right")
PREPOSITIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near")
PERSON_WORDS = ("girl", "boy", "man", "woman")
DISTANCE_THRESHOLD = 150.0
IOU_THRESHOLD = 0.1
S_FLOOR = 0.5
NP_NUM = 8


@dataclass(frozen=True)
class CompBenchConfig(QuirkFlags):
    on_top_of_zero: bool = False
    round_attribute: bool = False
    np_cap: bool = False
    same_label_same_box: bool = False


# ---- A: attribute binding ----------------------------------------------------------------------------------------
def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's ``pre_question``: lower-case, drop . ! " ( ) * # : ; ~, strip trailing spaces, keep 50 words."""
    q = re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")
    words = q.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else q


def noun_phrases(parsed: ParsedText, np_cap: bool) -> list[str]:
    """Noun chunks minus the 4 excluded strings (exact match), first 8 when ``np_cap``."""
    kept = [c for c in parsed.noun_chunks if c not in EXCLUDED_CHUNKS]
    return kept[:NP_NUM] if np_cap else kept


def attribute_questions(phrases: Iterable[str]) -> list[str]:
    return [pre_question(p + "?") for p in phrases]


def yes_ratio(p_yes: float, p_no: float) -> float:
    s = p_yes + p_no
    if not (s > 0) or p_yes < 0 or p_no < 0:
        raise ValueError(f"attribute score: need P(yes), P(no) >= 0 with a positive sum, got {p_yes}, {p_no}")
    return p_yes / s


def attribute_score(probs: Sequence[tuple[float, float]], round_attribute: bool) -> float:
    """A = prod_j P(yes)_j / (P(yes)_j + P(no)_j); empty product = 1 (official: slots without a chunk count 1).

    ``round_attribute``: the official arithmetic (BLIP_vqa.py): each question's answer is stored as a "{:.4f}"
    string, read back into a float32 tensor, the slots are multiplied in float32, and the product is formatted
    "{:.4f}" again -- rounding only the float64 product differs by 1e-4 in ~8 % of cases."""
    if not round_attribute:
        a = 1.0
        for py, pn in probs:
            a *= yes_ratio(py, pn)
        return a

    a32 = np.float32(1.0)
    for py, pn in probs:
        a32 = np.float32(a32 * np.float32(float(f"{yes_ratio(py, pn):.4f}")))
    return float(f"{float(a32):.4f}")


# ---- S: spatial --------------------------------------------------------------------------------------------------
def extract_objects(parsed: ParsedText) -> tuple[str | None, str | None]:
    """Official complex-mode object extraction: for every token starting a preposition (3-, then 2-, then 1-token
    window), obj1 = nearest NOUN/PROPN before it, obj2 = first NOUN after it; when no NOUN follows, the first PROPN
    that ends a proper-noun run and is not the prompt's last token ("next to Mickey Mouse." -> "Mouse"; "near
    Paris" without a period -> nothing). Exactly 2 objects collected -> (obj1, obj2) with girl/boy/man/woman ->
    person; otherwise (None, None)."""
    toks = parsed.tokens
    n = len(toks)
    objects: list[str] = []
    for i in range(n):
        if parsed.span_text(i, i + 3) in PREPOSITIONS:
            k = 3
        elif parsed.span_text(i, i + 2) in PREPOSITIONS:
            k = 2
        elif parsed.span_text(i, i + 1) in PREPOSITIONS:
            k = 1
        else:
            continue
        for j in range(i - 1, -1, -1):
            if toks[j].pos in ("NOUN", "PROPN"):
                objects.append(toks[j].text)
                break
        flag = False
        for j in range(i + k, n):
            if toks[j].pos == "NOUN":
                objects.append(toks[j].text)
                break
            if j == n - 1:
                flag = True
        if flag:
            for j in range(i + k, n - 1):  # official: j + 1 < len(doc) and doc[j + 1] is not PROPN
                if toks[j].pos == "PROPN" and toks[j + 1].pos != "PROPN":
                    objects.append(toks[j].text)
                    break
    if len(objects) != 2:
        return None, None
    o1, o2 = ("person" if o in PERSON_WORDS else o for o in objects)
    return o1, o2


def find_locality(prompt: str) -> str | None:
    """The first locality word (official order) occurring as a substring of the prompt."""
    for loc in LOCALITIES:
        if loc in prompt:
            return loc
    return None


def spatial_frame(width: int, height: int, size: int = 479, max_size: int = 480) -> tuple[int, int]:
    """(w, h) after torchvision ``Resize(size=479, max_size=480)``: the frame the official boxes (and the 150 px
    threshold) live in. A 512x512 image becomes 479x479."""
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def box_iou(b1: Sequence[float], b2: Sequence[float]) -> float:
    xo = max(0.0, min(b1[2], b2[2]) - max(b1[0], b2[0]))
    yo = max(0.0, min(b1[3], b2[3]) - max(b1[1], b2[1]))
    inter = xo * yo
    union = (b1[2] - b1[0]) * (b1[3] - b1[1]) + (b2[2] - b2[0]) * (b2[3] - b2[1]) - inter
    return inter / union if union > 0 else 0.0


def position_score(locality: str | None, box1: Sequence[float], box2: Sequence[float],
                   on_top_of_zero: bool = True) -> float:
    """Official ``determine_position`` (dx = c2x - c1x, dy = c2y - c1y, image y grows downwards).

    next to / on side of / near: 1 if |dx| < 150 or |dy| < 150, else 150 / max(|dx|, |dy|).
    on the left of (dx > 0), on the right of (dx < 0): needs |dx| > |dy|; 1 if IoU < 0.1 else 0.1 / IoU.
    on the bottom of (dy < 0), on the top of (dy > 0): needs |dy| > |dx|; same IoU rule. Anything else: 0 --
    including "on top of" unless ``on_top_of_zero`` is False (then it is scored as "on the top of")."""
    if locality == "on top of" and not on_top_of_zero:
        locality = "on the top of"
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    iou = box_iou(box1, box2)

    def iou_rule() -> float:
        return 1.0 if iou < IOU_THRESHOLD else IOU_THRESHOLD / iou

    if locality in ("next to", "on side of", "near"):
        if abs(dx) < DISTANCE_THRESHOLD or abs(dy) < DISTANCE_THRESHOLD:
            return 1.0
        return DISTANCE_THRESHOLD / max(abs(dx), abs(dy))
    if locality == "on the right of":
        return iou_rule() if dx < 0 and abs(dx) > abs(dy) else 0.0
    if locality == "on the left of":
        return iou_rule() if dx > 0 and abs(dx) > abs(dy) else 0.0
    if locality == "on the bottom of":
        return iou_rule() if dy < 0 and abs(dy) > abs(dx) else 0.0
    if locality == "on the top of":
        return iou_rule() if dy > 0 and abs(dy) > abs(dx) else 0.0
    return 0.0


def to_frame(det: Detection, width: int, height: int) -> Detection:
    """Rescale a detection from the input image's pixels to the official detector frame."""
    fw, fh = spatial_frame(width, height)
    sx, sy = fw / width, fh / height
    x0, y0, x1, y1 = det.box
    return Detection(det.label, det.score, (x0 * sx, y0 * sy, x1 * sx, y1 * sy))


def spatial_score(obj1: str | None, obj2: str | None, locality: str | None, detections: Sequence[Detection],
                  config: CompBenchConfig = CompBenchConfig()) -> tuple[float, dict[str, Any]]:
    """S for one (obj1, locality, obj2) from detections in the official frame, in detector order (descending score).
    Returns (S, details) with the unfloored value, the confidences and pos."""
    labels = [d.label for d in detections]
    i1 = labels.index(obj1) if obj1 is not None and obj1 in labels else None
    i2 = labels.index(obj2) if obj2 is not None and obj2 in labels else None
    if i1 is not None and i2 is not None and i1 == i2 and not config.same_label_same_box:
        nxt = [k for k, lab in enumerate(labels) if lab == obj2 and k != i1]
        i2 = nxt[0] if nxt else None
    pos = None
    if i1 is not None and i2 is not None:
        d1, d2 = detections[i1], detections[i2]
        pos = position_score(locality, d1.box, d2.box, config.on_top_of_zero)
        s = 0.25 * d1.score + 0.25 * d2.score + pos / 2
    elif i1 is not None:
        s = 0.25 * detections[i1].score
    elif i2 is not None:
        s = 0.25 * detections[i2].score
    else:
        s = 0.0
    floored = 0.0 if s < S_FLOOR else s
    return floored, {"unfloored": s, "pos": pos, "s1": None if i1 is None else detections[i1].score,
                     "s2": None if i2 is None else detections[i2].score, "obj1": obj1, "obj2": obj2,
                     "locality": locality}


# ---- C: CLIP similarity ------------------------------------------------------------------------------------------
def strip_adjectives(parsed: ParsedText) -> str:
    """Official complex-mode text: tokens tagged ADJ removed, the rest joined by single spaces ("rack .")."""
    return " ".join(t.text for t in parsed.tokens if t.pos != "ADJ")


# ---- prompt type and T -------------------------------------------------------------------------------------------
def list_key(prompt: str) -> str:
    """Official membership key: the first sentence (split at the first "."), lower-cased."""
    return prompt.split(".")[0].lower()


@dataclass
class PromptTypeLists:
    spatial: frozenset[str]
    action: frozenset[str]
    spatial_action: frozenset[str] | None = None  # when given, a prompt in no list is an error (not "otherwise")

    @classmethod
    def from_prompts(cls, spatial: Iterable[str], action: Iterable[str],
                     spatial_action: Iterable[str] | None = None) -> "PromptTypeLists":
        key = lambda ps: frozenset(list_key(p) for p in ps)  # noqa: E731
        return cls(key(spatial), key(action), None if spatial_action is None else key(spatial_action))

    @classmethod
    def from_files(cls, spatial: str | os.PathLike, action: str | os.PathLike,
                   spatial_action: str | os.PathLike | None = None) -> "PromptTypeLists":
        """The official ``complex_val_spatial.txt`` / ``complex_val_action.txt`` (/ ``..._spatialaction.txt``),
        one prompt a line."""
        def lines(p):
            with open(p, encoding="utf-8") as f:
                return [ln.rstrip("\n") for ln in f if ln.strip()]
        sa = None if spatial_action is None else lines(spatial_action)
        return cls.from_prompts(lines(spatial), lines(action), sa)

    def type_of(self, prompt: str) -> PromptType:
        k = list_key(prompt)
        if k in self.spatial:
            return "spatial"
        if k in self.action:
            return "action"
        if self.spatial_action is not None and k not in self.spatial_action:
            raise KeyError(f"3-in-1: prompt {prompt!r} is in none of the type lists")
        return "spatial_action"


def prompt_type_from_graph(sg: SceneGraph) -> PromptType:
    """spatial: every relation has a 2-D locality; action: none has (or no relations); else spatial_action."""
    kinds = {is_spatial_predicate(r.predicate) for r in sg.relations}
    if kinds == {True}:
        return "spatial"
    if kinds == {True, False}:
        return "spatial_action"
    return "action"


def prompt_type_heuristic(prompt: str, parsed: ParsedText) -> PromptType:
    """For a prompt outside the official lists: a locality word -> spatial (spatial_action if a VERB token is
    present), otherwise action. Recorded as ``type_source="heuristic"``."""
    if find_locality(prompt) is None:
        return "action"
    return "spatial_action" if any(t.pos == "VERB" for t in parsed.tokens) else "spatial"


def three_in_one(ptype: PromptType, a: float, s: float | None, c: float | None) -> float:
    if ptype == "spatial":
        return (s + a) / 2
    if ptype == "action":
        return (c + a) / 2
    if ptype == "spatial_action":
        return (a + s + c) / 3
    raise ValueError(f"unknown 3-in-1 prompt type {ptype!r}")


# ---- benchmark files and aggregation -------------------------------------------------------------------------------
def parse_sample_name(filename: str, faithful: bool = False) -> tuple[str, int]:
    """(prompt, global index) from an official sample name ``<prompt>_<NNNNNN>.png``. Official: the prompt is the
    part before the *first* "_" (a prompt containing "_" is cut) and the index the part after the last one;
    corrected: split at the last "_"."""
    if faithful:
        parts = filename.split("_")
        return parts[0], int(parts[-1].split(".")[0])
    stem = os.path.splitext(filename)[0]
    if "_" not in stem:
        raise ValueError(f"3-in-1 sample name {filename!r} is not '<prompt>_<NNNNNN>.<ext>'")
    prompt, idx = stem.rsplit("_", 1)
    return prompt, int(idx)


def benchmark_3in1(values: Sequence[float]) -> float:
    """The benchmark value: mean T over all images (a fraction, not x100)."""
    if not values:
        raise ValueError("benchmark_3in1: no values")
    return sum(values) / len(values)


def per_prompt_means(samples: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Mean T per prompt from (prompt, T) pairs (official: 10 images per prompt)."""
    acc: dict[str, list[float]] = {}
    for prompt, t in samples:
        acc.setdefault(prompt, []).append(t)
    return {p: sum(v) / len(v) for p, v in acc.items()}


# ---- reward ------------------------------------------------------------------------------------------------------
def _graph_names(sg: SceneGraph) -> dict[int, str]:
    """Object names for detection: the label, or the phrase when several items share the label."""
    counts: dict[str, int] = {}
    for it in sg.items:
        counts[it.label] = counts.get(it.label, 0) + 1
    return {it.item_id: (sg.phrase(it) if counts[it.label] > 1 else it.label) for it in sg.items}


def strip_graph_attributes(sg: SceneGraph) -> str:
    bare = SceneGraph([Item(it.item_id, it.label) for it in sg.items], list(sg.relations))
    return bare.serialize().strip()


class CompBench3in1Reward:
    """Per-image 3-in-1 T as the component ``compbench_3in1`` (clipped to [0, 1]; T can be negative through the
    raw cosine). Parts recorded: A, S, C (raw cosine), T (unclipped), type and where it came from.

    Targets: a ``SceneGraph`` (type from its relations) or a prompt string (type from ``type_lists`` when given,
    else the heuristic). Only the backends a type needs are called: S needs ``detector`` (+ ``parser`` for prompts),
    C needs ``similarity`` (+ ``parser`` for prompts), A needs ``vqa`` (+ ``parser`` for prompts)."""

    name = "compbench_3in1"

    def __init__(self, vqa: YesNoVQA, detector: Detector | None = None, similarity: ImageTextSimilarity | None = None,
                 parser: TextParser | None = None, config: CompBenchConfig = CompBenchConfig(),
                 type_lists: PromptTypeLists | None = None):
        self.vqa, self.detector, self.similarity, self.parser = vqa, detector, similarity, parser
        self.config = config
        self.type_lists = type_lists

    def _need(self, backend: Any, role: str) -> Any:
        if backend is None:
            raise ValueError(f"CompBench3in1Reward: this target needs a {role} backend, none was given")
        return backend

    def provenance(self) -> Provenance:
        backends = {role: b.info for role, b in (("vqa", self.vqa), ("detector", self.detector),
                                                  ("similarity", self.similarity), ("parser", self.parser))
                    if b is not None}
        return Provenance(self.name, backends, self.config.flags(),
                          {"spatial_frame": "Resize(479, max_size=480)", "distance_threshold": DISTANCE_THRESHOLD,
                           "iou_threshold": IOU_THRESHOLD, "s_floor": S_FLOOR,
                           "type_lists": "official" if self.type_lists is not None else None})

    def _detect(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        dets = self._need(self.detector, "detector").detect(image, list(dict.fromkeys(names)))
        return [to_frame(d, image.width, image.height) for d in dets]

    def score_graph(self, image: Image.Image, sg: SceneGraph) -> dict[str, Any]:
        return self._with_similarity([image], [self._graph_parts(image, sg)])[0]

    def score_prompt(self, image: Image.Image, prompt: str) -> dict[str, Any]:
        return self._with_similarity([image], [self._prompt_parts(image, prompt)])[0]

    def _with_similarity(self, images: Sequence[Image.Image], parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fill C of every part that needs it with one similarity call: a batched CLIP forward costs far less per
        image than one forward each (same cosines up to float summation order)."""
        need = [i for i, d in enumerate(parts) if d["C_text"] is not None]
        if need:
            cs = self._need(self.similarity, "similarity").similarity([images[i] for i in need],
                                                                     [parts[i]["C_text"] for i in need])
            for i, c in zip(need, cs):
                parts[i]["C"] = c
        return parts

    def _graph_parts(self, image: Image.Image, sg: SceneGraph) -> dict[str, Any]:
        """Everything of ``score_graph`` but C (left None; its text is in ``C_text``)."""
        ptype = prompt_type_from_graph(sg)
        phrases = [sg.phrase(it) for it in sg.items]
        if self.config.np_cap:
            phrases = phrases[:NP_NUM]
        qs = attribute_questions(phrases)
        queries = [VQAQuery(q, f"entity - whole ({p})", (it.item_id,)) for q, p, it in zip(qs, phrases, sg.items)]
        a = attribute_score(self.vqa.yes_no_probs(image, queries) if queries else [], self.config.round_attribute)
        s = c = None
        spatial_details = []
        if ptype != "action":
            names = _graph_names(sg)
            rels = [r for r in sg.relations if is_spatial_predicate(r.predicate)]
            dets = self._detect(image, [names[r.subject] for r in rels] + [names[r.object] for r in rels])
            per_rel = []
            for r in rels:
                sr, det = spatial_score(names[r.subject], names[r.object], predicate_locality(r.predicate), dets,
                                        self.config)
                per_rel.append(sr)
                spatial_details.append(det)
            s = sum(per_rel) / len(per_rel)
        c_text = strip_graph_attributes(sg) if ptype != "spatial" else None
        return {"type": ptype, "type_source": "scene-graph", "A": a, "S": s, "C": c, "questions": qs,
                "spatial": spatial_details, "C_text": c_text}

    def _prompt_parts(self, image: Image.Image, prompt: str) -> dict[str, Any]:
        """Everything of ``score_prompt`` but C (left None; its text is in ``C_text``)."""
        parsed = self._need(self.parser, "parser").parse(prompt)
        if self.type_lists is not None:
            ptype, source = self.type_lists.type_of(prompt), "official-lists"
        else:
            ptype, source = prompt_type_heuristic(prompt, parsed), "heuristic"
        qs = attribute_questions(noun_phrases(parsed, self.config.np_cap))
        probs = self.vqa.yes_no_probs(image, [VQAQuery(q) for q in qs]) if qs else []
        a = attribute_score(probs, self.config.round_attribute)
        s = c = None
        spatial_details = []
        if ptype != "action":
            o1, o2 = extract_objects(parsed)
            dets = self._detect(image, [o for o in (o1, o2) if o is not None])
            s, det = spatial_score(o1, o2, find_locality(prompt), dets, self.config)
            spatial_details.append(det)
        c_text = strip_adjectives(parsed) if ptype != "spatial" else None
        return {"type": ptype, "type_source": source, "A": a, "S": s, "C": c, "questions": qs,
                "spatial": spatial_details, "C_text": c_text}

    def __call__(self, images: Sequence[Image.Image], targets: Sequence[SceneGraph | str]) -> RewardOutput:
        if len(images) != len(targets):
            raise ValueError(f"CompBench3in1Reward: {len(images)} images but {len(targets)} targets")
        prepare_backends(images, self.vqa, self.detector, self.similarity)
        found = []
        for image, target in zip(images, targets):
            if isinstance(target, SceneGraph):
                found.append(self._graph_parts(image, target))
            elif isinstance(target, str):
                found.append(self._prompt_parts(image, target))
            else:
                raise TypeError(f"CompBench3in1Reward: target must be a SceneGraph or a prompt, got {type(target)}")
        scores, parts = [], []
        for d in self._with_similarity(images, found):
            t = three_in_one(d["type"], d["A"], d["S"], d["C"])
            if math.isnan(t):
                raise ValueError("3-in-1: T is NaN (a backend returned NaN)")
            scores.append({self.name: check_unit(self.name, min(1.0, max(0.0, t)))})
            parts.append({f"{self.name}/{k}": v for k, v in {**d, "T": t}.items()})
        return RewardOutput(scores, parts, [self.provenance()])
