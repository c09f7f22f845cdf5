"""Scripted backends (tests, dev) and the regex text parser (fallback when spaCy is absent).

All of them report ``fallback=True`` in their ``BackendInfo``: a score computed with them is never a benchmark
number. Scripted backends answer from a table or a function of (image, query), so tests can pin every model
answer and check the benchmark logic exactly.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from PIL import Image

from ..provenance import BackendInfo, scripted_info
from .protocols import Detection, ParsedText, Token, VQAQuery

AnswerFn = Callable[[Image.Image, VQAQuery], str]
ProbFn = Callable[[Image.Image, VQAQuery], tuple[float, float]]


class ScriptedVQA:
    """Answers from a table keyed by question text (or a function of image and query).

    ``answers``: text -> answer string, or ``fn(image, query) -> str``; unknown questions get ``default_answer``.
    ``probs``: text -> (P(yes), P(no)), or ``fn(image, query) -> (p_yes, p_no)``; default ``default_probs``.
    """

    def __init__(self, answers: Mapping[str, str] | AnswerFn | None = None,
                 probs: Mapping[str, tuple[float, float]] | ProbFn | None = None,
                 default_answer: str = "no", default_probs: tuple[float, float] = (0.5, 0.5),
                 name: str = "scripted-vqa"):
        self._answers = answers or {}
        self._probs = probs or {}
        self.default_answer = default_answer
        self.default_probs = default_probs
        self.info = scripted_info(name)
        self.calls: list[tuple[int, str]] = []  # (id(image), question) in call order, for tests

    def answer(self, image: Image.Image, queries: Sequence[VQAQuery]) -> list[str]:
        out = []
        for q in queries:
            self.calls.append((id(image), q.text))
            a = self._answers(image, q) if callable(self._answers) else self._answers.get(q.text, self.default_answer)
            out.append(a)
        return out

    def yes_no_probs(self, image: Image.Image, queries: Sequence[VQAQuery]) -> list[tuple[float, float]]:
        out = []
        for q in queries:
            self.calls.append((id(image), q.text))
            p = self._probs(image, q) if callable(self._probs) else self._probs.get(q.text, self.default_probs)
            out.append((float(p[0]), float(p[1])))
        return out


class ScriptedDetector:
    """Returns fixed detections (a list, or ``fn(image, queries) -> list[Detection]``), sorted by descending score
    as a real detector's post-NMS output is."""

    def __init__(self, detections: Sequence[Detection] | Callable[[Image.Image, Sequence[str]], Sequence[Detection]],
                 vocabulary: Sequence[str] | None = None, name: str = "scripted-detector"):
        self._dets = detections
        self.vocabulary = vocabulary
        self.info = scripted_info(name)

    def detect(self, image: Image.Image, queries: Sequence[str]) -> list[Detection]:
        dets = self._dets(image, queries) if callable(self._dets) else self._dets
        return sorted(dets, key=lambda d: -d.score)


class ScriptedSimilarity:
    """Cosine from a table keyed by text (or ``fn(image, text) -> float``); unknown texts get ``default``."""

    def __init__(self, table: Mapping[str, float] | Callable[[Image.Image, str], float] | None = None,
                 default: float = 0.0, name: str = "scripted-similarity"):
        self._table = table or {}
        self.default = default
        self.info = scripted_info(name)
        self.texts: list[str] = []  # the texts actually scored, for tests

    def similarity(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        if len(images) != len(texts):
            raise ValueError(f"similarity: {len(images)} images but {len(texts)} texts")
        self.texts.extend(texts)
        if callable(self._table):
            return [float(self._table(im, t)) for im, t in zip(images, texts)]
        return [float(self._table.get(t, self.default)) for t in texts]


class ScriptedParser:
    """Parses from a table text -> ParsedText (e.g. frozen spaCy outputs); unknown text is an error."""

    def __init__(self, table: Mapping[str, ParsedText], name: str = "scripted-parser"):
        self._table = dict(table)
        self.info = scripted_info(name)

    def parse(self, text: str) -> ParsedText:
        try:
            return self._table[text]
        except KeyError:
            raise KeyError(f"ScriptedParser has no parse for {text!r}") from None


# ---- regex fallback parser ---------------------------------------------------------------------------------------
_DET = {"a", "an", "the", "this", "that", "these", "those", "some", "every", "each", "its", "his", "her", "their",
        "my", "your", "our", "another", "no", "any"}
_ADP = {"on", "of", "in", "at", "to", "with", "by", "from", "under", "over", "above", "below", "behind", "beside",
        "for", "into", "onto", "near", "beneath", "across", "against", "through", "inside", "outside", "between",
        "underneath", "around", "along", "than", "atop", "toward", "towards", "among", "upon", "within"}
_AUX = {"is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "does", "do", "did", "can", "will"}
_CCONJ = {"and", "or", "but", "nor"}
_PRON = {"it", "he", "she", "they", "them", "him", "we", "i", "you", "itself", "themselves", "there"}
_ADV = {"next", "very", "also", "just", "too", "quite", "together", "nearby", "away", "here"}
_NUM = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many"}
_ADJ = {
    # colours
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "grey", "golden",
    "silver", "cyan", "magenta", "violet", "beige", "teal", "turquoise", "maroon", "navy", "dark", "light", "bright",
    # sizes and shapes
    "small", "large", "big", "tiny", "huge", "little", "tall", "short", "long", "wide", "narrow", "thin", "thick",
    "round", "rectangular", "circular", "triangular", "oval", "giant", "massive", "miniature",
    # materials and textures
    "wooden", "metallic", "plastic", "glass", "leather", "fluffy", "soft", "hard", "smooth", "rough", "furry",
    "shiny", "fabric", "rubber", "ceramic", "stone",
    # common others
    "old", "new", "young", "modern", "ancient", "beautiful", "cute", "happy", "sad", "empty", "full", "open",
    "closed", "clean", "dirty", "wet", "dry", "hot", "cold", "warm", "cool", "striped", "spotted", "checkered",
}
_TOKEN_RE = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def _regex_pos(word: str) -> str:
    w = word.lower()
    if not re.match(r"\w", w):
        return "PUNCT"
    if w.isdigit() or w in _NUM:
        return "NUM"
    for tag, lex in (("DET", _DET), ("ADP", _ADP), ("AUX", _AUX), ("CCONJ", _CCONJ), ("PRON", _PRON),
                     ("ADV", _ADV), ("ADJ", _ADJ)):
        if w in lex:
            return tag
    if len(w) > 4 and (w.endswith("ing") or w.endswith("ed")):
        return "VERB"
    return "NOUN"


class RegexTextParser:
    """Lexicon + regex stand-in for spaCy: tokens, coarse POS from small closed-class and adjective lists (every
    other word is a NOUN, ``-ing``/``-ed`` words are VERBs), noun chunks = maximal runs DET? (ADJ|NUM)* NOUN+.
    Good enough for scene-graph-like prompts; differs from spaCy on real prose. Always a fallback."""

    def __init__(self) -> None:
        self.info = BackendInfo(name="regex-parser", version="1", kind="fallback", fallback=True)

    def parse(self, text: str) -> ParsedText:
        tokens: list[Token] = []
        matches = list(_TOKEN_RE.finditer(text))
        for k, m in enumerate(matches):
            end = m.end()
            nxt = matches[k + 1].start() if k + 1 < len(matches) else len(text)
            ws = " " if nxt > end and text[end:nxt].strip() == "" else ""
            tokens.append(Token(m.group(), _regex_pos(m.group()), ws))
        chunks: list[str] = []
        i = 0
        n = len(tokens)
        while i < n:
            j = i
            if tokens[j].pos == "DET":
                j += 1
            while j < n and tokens[j].pos in ("ADJ", "NUM"):
                j += 1
            k = j
            while k < n and tokens[k].pos == "NOUN":
                k += 1
            if k > j:  # at least one noun: a chunk from i to k
                chunks.append(ParsedText(tuple(tokens), ()).span_text(i, k))
                i = k
            else:
                i += 1
        return ParsedText(tuple(tokens), tuple(chunks))
