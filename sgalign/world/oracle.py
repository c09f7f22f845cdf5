"""The shapes-world oracle: a deterministic parser from image to scene graph, and the answers the reward and
evaluation backends need from it (the world's "VQA model", "detector" and "scene-graph extractor").

How an image is read (64x64 frame; other sizes are box-resampled to it and boxes mapped back):

1. Colour model: every pixel ``p`` is explained as a blend ``bg + t (c - bg)`` of the background and each palette
   colour ``c``; the colour with the smallest residual wins and its ``t`` is the pixel's *alpha*. Anti-aliased and
   blurred edges are such blends, so they keep their colour; noise only adds residual.
2. Objects: 8-connected components of ``alpha > 0.5`` with at least ``min_area`` pixels. A component in which two
   colours each own a large share (touching objects, only in generated images) is split by colour.
3. Per object: colour = best palette fit of the mean colour of its core (alpha >= 0.75) pixels; box = the
   component's pixel bounds (x1, y1 exclusive); alpha mass (area) and mass centre over the mask and a ``RING``-px
   band around it (Gaussian blur changes neither); shape = analysis by synthesis: each shape's template with that
   area and mass centre, blurred by each sigma of ``BLUR_GRID``, is compared with the object's alpha (least
   squares); the best fit wins; size = ``rules.size_class(extent)`` with extent = sqrt(area / the shape's fill
   ratio).
4. Relations: ``rules.relations_between`` on the measured boxes and sizes, the rule the sampler used.

Soft scores: each hard decision has a probability: colour, a softmax of the palette-fit residuals; shape, the
Gaussian likelihood of each template's fit error (residual std estimated from the best fit, floored at
``SHAPE_NOISE``); size and relations, a logistic of the margin to the rule's threshold (px). The hard label is
the most probable one. ``Detection.confidence`` = objectness x P(shape); ``p_yes`` multiplies the probabilities a
question depends on and takes the best-matching object(s), so it is continuous (a reward can rank images by it)
and agrees with the hard ``answer`` on clean renders (tested).

Protocol-facing API (all in ``WorldOracle``; ``OracleScene`` holds one parsed image):

* yes/no questions -- ``answer(image, question) -> "yes" | "no"`` and ``p_yes(image, question) -> float``, about an
  entity ("Is there a red circle?"), an attribute ("Is the circle red?") or a relation ("Is the red circle left of
  the blue square?"). A question is a ``Question``, DSG tuple text ("entity - whole (circle)",
  "attribute - color (circle, red)", "relation - spatial (circle, square, left of)") or such English text.
* detections -- ``detect(image) -> list[Detection]`` (label = shape, confidence, box (x0, y0, x1, y1) in the input
  image's pixels, plus colour/size and their probabilities), by descending confidence.
* scene graph -- ``extract(image) -> SceneGraph``: every object (label = shape, attributes = [colour, size]) and
  every relation that holds between any ordered pair (``canonical=True``: one direction per pair);
  ``extract(image, reference=graph)``: closed-vocabulary extraction as LAION-SG's SG-IoU prompt (every object;
  only the reference's triples, each kept iff it holds between objects with exactly its phrases).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..scene_graph import SceneGraph
from . import rules

ORACLE_VERSION = "1"

# Thresholds (64-px frame) and temperatures of the soft scores.
MIN_AREA = 15  # smallest object: small triangle, extent 9 -> ~40 px
RING = 4  # px around an object's mask whose alpha still counts as its mass (blur spills it outward)
BLUR_GRID = (0.0, 0.7, 1.3, 1.9, 2.5)  # px: shape templates are compared at each of these blurs
SHAPE_NOISE = 0.05  # alpha units: floor of the per-pixel residual std that turns fit errors into probabilities
SIZE_TAU, REL_TAU = 0.4, 0.7  # px: logistic temperatures of the size and spatial-relation margins
COLOUR_SIGMA = 15.0  # RGB units: softmax temperature of the palette fit
FIT_SIGMA = 40.0  # RGB units: an object whose colour fits no palette colour loses objectness
NOMINAL_FILL = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}  # shape area / box area

_PAL = np.array([rules.PALETTE[c] for c in rules.COLOURS], dtype=np.float32)
_BG = np.array(rules.BACKGROUND, dtype=np.float32)
_D = _PAL - _BG  # [K, 3]
_DD = (_D * _D).sum(1)  # [K]
_EIGHT = np.ones((3, 3), dtype=bool)
_RING_SE = np.ones((2 * RING + 1, 2 * RING + 1), dtype=bool)  # Chebyshev distance <= RING, in one pass


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------------------------
# phrases and questions
_SYNONYMS = {"big": "large", "little": "small", "larger": "large", "smaller": "small",
             "colour": "", "color": ""}
_ARTICLES = {"a", "an", "the", "any", "some"}
_WILDCARDS = {"object", "shape", "thing", "item"}
_PRED_ALIASES = {"to the left of": "left of", "on the left of": "left of", "to the right of": "right of",
                 "on the right of": "right of", "larger than": "bigger than", "on top of": "above",
                 "under": "below", "beneath": "below"}


@dataclass(frozen=True)
class Phrase:
    """An object description: any of shape / colour / size (None = unconstrained). ``unknown`` holds words outside
    the world's vocabulary; a phrase with unknown words matches no object."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    unknown: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Phrase":
        shape = colour = size = None
        unknown = []
        for raw in re.findall(r"[a-z]+", text.lower()):
            w = _SYNONYMS.get(raw, raw)
            if not w or w in _ARTICLES:
                continue
            if w.endswith("s") and w[:-1] in rules.SHAPES + tuple(_WILDCARDS):
                w = w[:-1]  # plural
            if w in rules.SHAPES and shape in (None, w):
                shape = w
            elif w in rules.PALETTE and colour in (None, w):
                colour = w
            elif w in rules.SIZES and size in (None, w):
                size = w
            elif w not in _WILDCARDS:
                unknown.append(w)  # includes a second, conflicting shape/colour/size word
        return cls(shape, colour, size, tuple(unknown))

    @classmethod
    def of_item(cls, label: str, attributes: Iterable[str]) -> "Phrase":
        return cls.parse(" ".join([*attributes, label]))


@dataclass(frozen=True)
class Question:
    """A yes/no question. ``entity``: is there a ``subject``? ``attribute``: is the ``subject`` ``attribute``?
    ``relation``: is the ``subject`` ``predicate`` the ``object``?"""

    kind: Literal["entity", "attribute", "relation"]
    subject: Phrase
    attribute: str | None = None
    predicate: str | None = None
    object: Phrase | None = None

    @classmethod
    def parse(cls, question) -> "Question":
        """A ``Question`` from DSG tuple text or English (templates above); ValueError names what failed.
        A query object with ``tuple`` / ``text`` attributes (a reward backend's VQA query) is read from its DSG
        tuple when it has one, else from its text."""
        if isinstance(question, Question):
            return question
        if not isinstance(question, str):
            tup, text = getattr(question, "tuple", None), getattr(question, "text", None)
            if isinstance(tup, str) and tup.strip():
                return cls.parse(tup)
            if isinstance(text, str):
                return cls.parse(text)
            raise TypeError(f"question {question!r}: expected a Question, a string, or an object with a DSG "
                            f"'tuple' or 'text' string")
        text = question.strip()
        m = re.match(r"^(entity|attribute|relation)\s*-\s*[^(]*\((.*)\)\s*$", text, flags=re.I)
        if m:
            return cls._from_dsg(m.group(1).lower(), [a.strip() for a in m.group(2).split(",")], text)
        return cls._from_english(text)

    @classmethod
    def _from_dsg(cls, kind: str, args: list[str], text: str) -> "Question":
        if kind == "entity" and len(args) >= 1:
            return cls("entity", Phrase.parse(args[0]))
        if kind == "attribute" and len(args) == 2:
            return cls("attribute", Phrase.parse(args[0]), attribute=_attribute_word(args[1], text))
        if kind == "relation" and len(args) == 3:
            return cls("relation", Phrase.parse(args[0]), predicate=_predicate(args[2], text),
                       object=Phrase.parse(args[1]))
        raise ValueError(f"DSG tuple {text!r}: expected 'entity - ... (X)', 'attribute - ... (X, attr)' or "
                         f"'relation - ... (X, Y, predicate)'")

    @classmethod
    def _from_english(cls, text: str) -> "Question":
        t = re.sub(r"\s+", " ", text.lower().strip().rstrip("?").strip())
        m = re.match(r"^(?:is|are) there (.+)$", t)
        if m:
            return cls("entity", Phrase.parse(m.group(1)))
        preds = sorted(list(rules.PREDICATES) + list(_PRED_ALIASES), key=len, reverse=True)
        m = re.match(r"^(?:is|are) (.+?) (" + "|".join(map(re.escape, preds)) + r") (.+)$", t)
        if m:
            return cls("relation", Phrase.parse(m.group(1)), predicate=_predicate(m.group(2), text),
                       object=Phrase.parse(m.group(3)))
        m = re.match(r"^(?:is|are) (.+) (\w+)$", t)
        if m and _SYNONYMS.get(m.group(2), m.group(2)) in rules.COLOURS + rules.SIZES:
            return cls("attribute", Phrase.parse(m.group(1)), attribute=_attribute_word(m.group(2), text))
        if not t.startswith(("is ", "are ", "does ", "do ")):
            return cls("entity", Phrase.parse(t))  # a bare noun phrase, as T2I-CompBench asks "the red circle?"
        raise ValueError(f"question {text!r}: not one of 'Is there X?', 'Is the X <colour|size>?', "
                         f"'Is the X <predicate> the Y?' or a noun phrase")


def _attribute_word(word: str, text: str) -> str:
    """Normalised attribute word; one outside the vocabulary is kept and is never true of a world object."""
    w = word.strip().lower()
    return _SYNONYMS.get(w, w)


def _predicate(word: str, text: str) -> str:
    w = re.sub(r"\s+", " ", word.strip().lower())
    w = _PRED_ALIASES.get(w, w)
    if w not in rules.PREDICATES:
        raise ValueError(f"question {text!r}: predicate {word!r} is not one of {rules.PREDICATES}")
    return w


# ---------------------------------------------------------------------------------------------------------------
# detections
@dataclass(frozen=True)
class Detection:
    """One object read from an image. ``box`` is (x0, y0, x1, y1) in the input image's pixels (x1, y1 exclusive);
    ``confidence`` = ``objectness`` x P(shape = ``label``); the ``*_probs`` are the soft scores behind the hard
    ``label``/``colour``/``size``."""

    label: str
    confidence: float
    box: tuple[float, float, float, float]
    colour: str
    size: str
    objectness: float
    shape_probs: Mapping[str, float]
    colour_probs: Mapping[str, float]
    p_large: float
    area: int
    extent: float  # size estimate (px): the extent of this shape with the object's alpha-weighted area
    box64: tuple[float, float, float, float] = field(repr=False, default=(0, 0, 0, 0))  # box in the 64-px frame

    @property
    def score(self) -> float:
        return self.confidence

    @property
    def attributes(self) -> tuple[str, str]:
        return self.colour, self.size

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.size} {self.label}"

    def p_size(self, size: str) -> float:
        return self.p_large if size == "large" else 1.0 - self.p_large

    def p_attribute(self, attribute: str) -> float:
        if attribute in rules.PALETTE:
            return float(self.colour_probs[attribute])
        if attribute in rules.SIZES:
            return self.p_size(attribute)
        return 0.0

    def p_matches(self, phrase: Phrase) -> float:
        """P(this object is ``phrase``), objectness included."""
        if phrase.unknown:
            return 0.0
        p = self.objectness
        if phrase.shape is not None:
            p *= self.shape_probs[phrase.shape]
        if phrase.colour is not None:
            p *= self.colour_probs[phrase.colour]
        if phrase.size is not None:
            p *= self.p_size(phrase.size)
        return float(p)

    def matches(self, phrase: Phrase) -> bool:
        """Hard match on the detection's labels."""
        return not phrase.unknown and all(want is None or want == got for want, got in
                                          ((phrase.shape, self.label), (phrase.colour, self.colour),
                                           (phrase.size, self.size)))


def p_relation(predicate: str, a: Detection, b: Detection) -> float:
    """Soft ``a predicate b``: logistic of the spatial margin (px), or the product of the two size probabilities."""
    if predicate in rules.SPATIAL:
        return float(_sigmoid(rules.spatial_margin(predicate, a.box64, b.box64) / REL_TAU))
    if predicate == "bigger than":
        return a.p_large * (1.0 - b.p_large)
    if predicate == "smaller than":
        return (1.0 - a.p_large) * b.p_large
    raise ValueError(f"unknown predicate {predicate!r}; expected one of {rules.PREDICATES}")


def holds(predicate: str, a: Detection, b: Detection) -> bool:
    """Hard ``a predicate b`` by the world's rules (``rules.holds``) on the measured boxes and sizes."""
    return rules.holds(predicate, a.box64, a.size, b.box64, b.size)


# ---------------------------------------------------------------------------------------------------------------
# one parsed image
@dataclass
class OracleScene:
    """The oracle's reading of one image: detections (sorted left to right, then top to bottom) and the answers."""

    detections: list[Detection]

    def graph(self, canonical: bool = False) -> SceneGraph:
        """Every object and every relation that holds between an ordered pair (``canonical``: left of / above /
        bigger than only, one direction per fact)."""
        objs = [(d.label, d.attributes) for d in self.detections]
        rels = []
        for i, a in enumerate(self.detections):
            for j, b in enumerate(self.detections):
                if i != j:
                    for p in rules.relations_between(a.box64, a.size, b.box64, b.size):
                        if not canonical or p in rules.CANONICAL:
                            rels.append((i, p, j))
        return SceneGraph.from_triples(objs, rels)

    def extract(self, reference: SceneGraph | None = None, canonical: bool = False) -> SceneGraph:
        """``reference=None``: ``graph(canonical)``. With a reference: every detected object, and the reference's
        triples (phrase level) that hold between objects carrying exactly the subject and object phrases."""
        if reference is None:
            return self.graph(canonical)
        objs = [(d.label, d.attributes) for d in self.detections]
        rels = []
        for r in reference.relations:
            s_it, o_it = reference.item(r.subject), reference.item(r.object)
            ps, po = Phrase.of_item(s_it.label, s_it.attributes), Phrase.of_item(o_it.label, o_it.attributes)
            pair = next(((i, j) for i, a in enumerate(self.detections) if a.matches(ps)
                         for j, b in enumerate(self.detections)
                         if j != i and b.matches(po) and r.predicate in rules.PREDICATES
                         and holds(r.predicate, a, b)), None)
            if pair is not None and (pair[0], r.predicate, pair[1]) not in rels:
                rels.append((pair[0], r.predicate, pair[1]))
        return SceneGraph.from_triples(objs, rels)

    def p_yes(self, question) -> float:
        q = Question.parse(question)
        dets = self.detections
        if q.kind == "entity":
            return max((d.p_matches(q.subject) for d in dets), default=0.0)
        if q.kind == "attribute":
            return max((d.p_matches(q.subject) * d.p_attribute(q.attribute) for d in dets), default=0.0)
        return max((a.p_matches(q.subject) * b.p_matches(q.object) * p_relation(q.predicate, a, b)
                    for i, a in enumerate(dets) for j, b in enumerate(dets) if i != j), default=0.0)

    def answer(self, question) -> Literal["yes", "no"]:
        """Hard answer from the hard reading (the same one ``graph`` reports)."""
        q = Question.parse(question)
        dets = self.detections
        if q.kind == "entity":
            ok = any(d.matches(q.subject) for d in dets)
        elif q.kind == "attribute":
            ok = any(d.matches(q.subject) and q.attribute in d.attributes for d in dets)
        else:
            ok = any(a.matches(q.subject) and b.matches(q.object) and holds(q.predicate, a, b)
                     for i, a in enumerate(dets) for j, b in enumerate(dets) if i != j)
        return "yes" if ok else "no"


# ---------------------------------------------------------------------------------------------------------------
# the parser
def to_array64(image) -> tuple[np.ndarray, tuple[float, float]]:
    """Image (PIL, uint8 HxWx3 array, float array in [0, 1], or torch CxHxW tensor in [0, 1]) -> float32 64x64x3 in
    0..255, and the (x, y) scale back to the input's pixels."""
    if hasattr(image, "detach"):  # torch tensor, CHW
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"image array of shape {arr.shape}: expected HxWx3 RGB")
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(arr)
    if not isinstance(image, Image.Image):
        raise TypeError(f"unsupported image type {type(image).__name__}: expected PIL image, numpy array or tensor")
    w, h = image.size
    image = image.convert("RGB")
    if (w, h) != (rules.CANVAS, rules.CANVAS):
        filt = Image.Resampling.BOX if min(w, h) >= rules.CANVAS else Image.Resampling.BILINEAR
        image = image.resize((rules.CANVAS, rules.CANVAS), filt)
    return np.asarray(image, dtype=np.float32), (w / rules.CANVAS, h / rules.CANVAS)


def colour_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of float RGB ``x [..., 3]``: (best palette index, alpha of the blend with the background)."""
    shape = x.shape[:-1]
    x = x.reshape(-1, 3) - _BG  # 2-D so the product goes through BLAS
    xd = x @ _D.T  # [P, K]
    t = xd / _DD
    np.clip(t, 0.0, 1.0, out=t)
    r2 = t * (t * _DD - 2 * xd)  # + |x|^2, the same for every colour
    k = r2.argmin(-1)
    return k.reshape(shape), t[np.arange(len(k)), k].reshape(shape)


def palette_fit(rgb: np.ndarray) -> np.ndarray:
    """Squared residual [K] of one RGB colour to each palette colour's blend line with the background."""
    x = rgb.astype(np.float64) - _BG
    xd = _D @ x
    t = np.clip(xd / _DD, 0.0, 1.0)
    return (x * x).sum() - 2 * t * xd + t * t * _DD


@functools.lru_cache(maxsize=256)
def _blur_matrices(n: int) -> np.ndarray:
    """[len(BLUR_GRID), n, n]: 1-D Gaussian blur of a length-n signal (zero outside) at each grid sigma."""
    d = np.subtract.outer(np.arange(n), np.arange(n)).astype(np.float64)
    out = [np.eye(n) if s == 0 else np.exp(-d * d / (2 * s * s)) / (np.sqrt(2 * np.pi) * s) for s in BLUR_GRID]
    return np.stack(out)


def shape_template(shape: str, h: int, w: int, cx: float, cy: float, area: float) -> np.ndarray:
    """Pixel coverage [h, w] of ``shape`` with the given area and mass centre (window pixel coordinates),
    anti-aliased from the signed distance at pixel centres: coverage = clip(0.5 - distance, 0, 1)."""
    s = float(np.sqrt(area / NOMINAL_FILL[shape]))
    y = (np.arange(h) + 0.5)[:, None] - cy
    x = np.abs((np.arange(w) + 0.5)[None, :] - cx)
    if shape == "circle":
        sd = np.sqrt(x * x + y * y) - s / 2
    elif shape == "square":
        sd = np.maximum(x, np.abs(y)) - s / 2
    else:  # apex up; the mass centre of a triangle is 2/3 of the way down from the apex
        yt = y + 2 * s / 3  # depth below the apex
        sd = np.maximum(yt - s, (x - yt / 2) / np.sqrt(1.25))
    return np.clip(0.5 - sd, 0.0, 1.0)


def fit_shapes(a_obs: np.ndarray, valid: np.ndarray, cx: float, cy: float, area: float) -> dict[str, float]:
    """Per shape: the smallest sum of squared alpha errors over ``valid`` pixels between the observed alpha and
    the shape's template blurred by each ``BLUR_GRID`` sigma (blur is separable: ``Ky @ T @ Kx^T``)."""
    h, w = a_obs.shape
    ky, kx = _blur_matrices(h), _blur_matrices(w)
    out = {}
    for shape in rules.SHAPES:
        pred = ky @ shape_template(shape, h, w, cx, cy, area) @ kx.transpose(0, 2, 1)
        out[shape] = float((((pred - a_obs) ** 2) * valid).sum((1, 2)).min())
    return out


class WorldOracle:
    """Deterministic image -> scene-graph parser of the shapes world (see the module docstring)."""

    name = "world-oracle"
    version = ORACLE_VERSION
    vocabulary: tuple[str, ...] = rules.SHAPES

    def __init__(self, min_area: int = MIN_AREA):
        self.min_area = min_area

    def config(self) -> dict:
        """What a score's provenance should record about this backend."""
        return {"name": self.name, "version": self.version, "kind": "world", "min_area": self.min_area}

    # ---- parsing --------------------------------------------------------------------------------------------
    def parse(self, image) -> OracleScene:
        return self.parse_batch([image])[0]

    def parse_batch(self, images: Sequence) -> list[OracleScene]:
        arrs, scales = zip(*(to_array64(im) for im in images)) if len(images) else ((), ())
        if not arrs:
            return []
        out = []
        for start in range(0, len(arrs), 16):  # vectorised over chunks small enough to stay in cache
            x = np.stack(arrs[start:start + 16])  # [n, 64, 64, 3]
            ks, alphas = colour_model(x)
            out += [OracleScene(self._objects(x[n], ks[n], alphas[n], scales[start + n])) for n in range(len(x))]
        return out

    def _objects(self, x: np.ndarray, k: np.ndarray, alpha: np.ndarray, scale) -> list[Detection]:
        lab, _ = ndimage.label(alpha > 0.5, structure=_EIGHT)
        dets = []
        for c, sl in enumerate(ndimage.find_objects(lab), start=1):
            # a window larger than the component: blurred edges spill outside the mask
            pad = RING + 1
            win = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in sl)
            lw = lab[win]
            comp = lw == c
            area = int(comp.sum())
            if area < self.min_area:
                continue
            kw = k[win]
            votes = np.bincount(kw[comp], minlength=len(_D))
            major = np.flatnonzero(votes >= max(self.min_area, 0.2 * area))
            if len(major) <= 1:
                parts = [(comp, int(votes.argmax()))]
            else:  # touching objects of different colours: one object per colour blob
                parts = []
                for col in major:
                    sub, m = ndimage.label(comp & (kw == col), structure=_EIGHT)
                    parts += [(sub == s, int(col)) for s in range(1, m + 1) if (sub == s).sum() >= self.min_area]
            # pixels that may belong to this object: its component, or background not next to another object
            near_other = ndimage.binary_dilation((lw != 0) & ~comp, structure=_EIGHT)
            free = (lw == 0) & ~near_other
            for mask, col in parts:
                valid = free | mask
                ring = (ndimage.binary_dilation(mask, structure=_RING_SE) & valid & (kw == col)) | mask
                dets.append(self._describe(mask, valid, ring, win, x[win], alpha[win], col, scale))
        dets.sort(key=lambda d: (d.box64[0] + d.box64[2], d.box64[1] + d.box64[3]))
        return dets

    def _describe(self, mask: np.ndarray, valid: np.ndarray, ring: np.ndarray, win, x: np.ndarray,
                  alpha: np.ndarray, col: int, scale) -> Detection:
        rows, cols = np.nonzero(mask)
        y0, x0 = rows.min(), cols.min()
        y1, x1 = rows.max() + 1, cols.max() + 1
        area = rows.size
        # alpha mass and its centre: both unchanged by blur
        w_ring = np.where(ring, alpha, 0.0)
        soft_area = float(w_ring.sum())
        gy, gx = np.indices(mask.shape) + 0.5
        cy, cx = float((w_ring * gy).sum() / soft_area), float((w_ring * gx).sum() / soft_area)
        # shape: the template (same area and mass centre, best of several blurs) closest to the object's alpha
        d = _D[col]
        a_obs = np.clip((x - _BG) @ d / _DD[col], 0.0, 1.0)
        sse = fit_shapes(a_obs, valid, cx, cy, soft_area)
        var = max(min(sse.values()) / max(int(valid.sum()), 1), SHAPE_NOISE ** 2)
        logits = np.array([-(sse[sh] - min(sse.values())) / (2 * var) for sh in rules.SHAPES])
        sp = np.exp(logits) / np.exp(logits).sum()
        shape_probs = {sh: float(p) for sh, p in zip(rules.SHAPES, sp)}
        label = rules.SHAPES[int(sp.argmax())]
        # colour: palette fit of the mean core colour
        core = mask & (alpha >= 0.75)
        mean = x[core if core.any() else mask].mean(0)
        r2 = palette_fit(mean)
        logits = -(r2 - r2.min()) / (2 * COLOUR_SIGMA ** 2)
        probs = np.exp(logits) / np.exp(logits).sum()
        colour_probs = {c: float(p) for c, p in zip(rules.COLOURS, probs)}
        colour = rules.COLOURS[int(probs.argmax())]
        # size from area: the extent of this shape with the same alpha-weighted area
        extent = float(np.sqrt(soft_area / NOMINAL_FILL[label]))
        p_large = float(_sigmoid((extent - rules.SIZE_THRESHOLD) / SIZE_TAU))
        objectness = float(_sigmoid((area - self.min_area) / 4.0) * np.exp(-r2.min() / (2 * FIT_SIGMA ** 2)))
        oy, ox = win[0].start, win[1].start
        box64 = (float(x0 + ox), float(y0 + oy), float(x1 + ox), float(y1 + oy))
        sx, sy = scale
        box = (box64[0] * sx, box64[1] * sy, box64[2] * sx, box64[3] * sy)
        return Detection(label, objectness * shape_probs[label], box, colour, rules.size_class(extent), objectness,
                         shape_probs, colour_probs, p_large, int(area), extent, box64)

    # ---- protocol-facing answers ----------------------------------------------------------------------------
    def detect(self, image, queries: Sequence[str] | None = None) -> list[Detection]:
        """Every object, by descending confidence. Closed vocabulary (``vocabulary``): ``queries`` are ignored."""
        return sorted(self.parse(image).detections, key=lambda d: -d.confidence)

    def p_yes(self, image, question) -> float:
        return self.parse(image).p_yes(question)

    def yes_no_probs(self, image, questions: Sequence) -> list[tuple[float, float]]:
        """(P(yes), P(no) = 1 - P(yes)) per question, parsing the image once."""
        scene = self.parse(image)
        return [(p, 1.0 - p) for p in (scene.p_yes(q) for q in questions)]

    def answer(self, image, questions: Sequence) -> list[str]:
        scene = self.parse(image)
        return [scene.answer(q) for q in questions]

    def extract(self, image, reference: SceneGraph | None = None, canonical: bool = False) -> SceneGraph:
        return self.parse(image).extract(reference, canonical)
