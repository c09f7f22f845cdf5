"""The four backend protocols the benchmark logic talks to.

The benchmark code (``dpg_bench``, ``compbench``) is pure and model-free; every model answer comes through one of
these small protocols. Any object with the right attributes plugs in (structural typing, no base class needed):
real adapters over local weights (``blip_vqa``, ``clip_similarity``, ``owl_detector``, ``spacy_parser``), scripted
tables for tests (``scripted``), and world backends answering from the shapes-world oracle.

Every backend has ``info: BackendInfo`` (name, version, kind, fallback) which ends up in the score's provenance.

* ``YesNoVQA`` -- one image, many questions (so an adapter can encode the image once):
    - ``answer(image, queries) -> list[str]``: the decoded answer string per query. DPG-Bench counts a question as
      satisfied only when the string is exactly ``"yes"``.
    - ``yes_no_probs(image, queries) -> list[tuple[float, float]]``: ``(P(yes), P(no))`` per query, as the model
      gives them (need not sum to 1; BLIP gives the two entries of the first-step softmax over the full vocabulary).
      3-in-1's attribute score normalises them itself: ``P(yes) / (P(yes) + P(no))``.
  A query is a ``VQAQuery``: ``text`` (what a language model reads) plus, when known, ``tuple`` -- the DSG tuple
  string ("entity - whole (circle)", "attribute - color (circle, red)", "relation - spatial (circle, square,
  left of)") -- and ``item_ids`` (the scene-graph items the question is about). A world backend answers from
  ``tuple``/``item_ids`` instead of parsing English; real VQA models read only ``text``.
* ``Detector`` -- ``detect(image, queries) -> list[Detection]``: boxes in the *input image's* pixel frame
  (x0, y0, x1, y1), sorted by descending score. ``queries`` are the object words the scorer will look for;
  an open-vocabulary detector detects exactly those (``label`` = the query string), a closed-vocabulary one
  (UniDet, the world oracle) may ignore them and return its own labels (``vocabulary`` lists them, or None).
* ``ImageTextSimilarity`` -- ``similarity(images, texts) -> list[float]``: raw cosine of image i with text i
  (no x100, no clipping; CLIPScore's C).
* ``TextParser`` -- ``parse(text) -> ParsedText``: tokens with coarse POS (Universal tags: NOUN, PROPN, ADJ, ...)
  and trailing whitespace, plus noun-chunk strings in order (spaCy's ``doc.noun_chunks``).

Optional on any backend: ``prepare(images)``, told once per reward batch which images the per-image calls will
ask about, so it can do its per-image work batched (the world backends parse them in one oracle call). It must not
change any answer; ``prepare_backends`` calls it where present.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

from ..provenance import BackendInfo


@dataclass(frozen=True)
class VQAQuery:
    text: str
    tuple: str | None = None
    item_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the input image's pixels


@dataclass(frozen=True)
class Token:
    text: str
    pos: str
    whitespace: str = " "


@dataclass(frozen=True)
class ParsedText:
    tokens: tuple[Token, ...]
    noun_chunks: tuple[str, ...]

    def span_text(self, start: int, stop: int) -> str:
        """spaCy ``doc[start:stop].text``: token texts joined with their original whitespace, no trailing one."""
        toks = self.tokens[start:stop]
        if not toks:
            return ""
        return "".join(t.text + t.whitespace for t in toks[:-1]) + toks[-1].text


@runtime_checkable
class YesNoVQA(Protocol):
    info: BackendInfo

    def answer(self, image: Image.Image, queries: Sequence[VQAQuery]) -> list[str]: ...

    def yes_no_probs(self, image: Image.Image, queries: Sequence[VQAQuery]) -> list[tuple[float, float]]: ...


@runtime_checkable
class Detector(Protocol):
    info: BackendInfo
    vocabulary: Sequence[str] | None

    def detect(self, image: Image.Image, queries: Sequence[str]) -> list[Detection]: ...


@runtime_checkable
class ImageTextSimilarity(Protocol):
    info: BackendInfo

    def similarity(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]: ...


@runtime_checkable
class TextParser(Protocol):
    info: BackendInfo

    def parse(self, text: str) -> ParsedText: ...


def prepare_backends(images: Sequence[Image.Image], *backends: object) -> None:
    """Call ``prepare(images)`` once on each distinct backend that has it (None entries skipped)."""
    seen: set[int] = set()
    for b in backends:
        prepare = getattr(b, "prepare", None)
        if prepare is not None and id(b) not in seen:
            seen.add(id(b))
            prepare(images)
