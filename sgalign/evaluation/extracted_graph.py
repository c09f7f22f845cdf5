"""``ExtractedGraph``: what a scene-graph extractor read off one image, and the reply parser.

An extraction never raises for a bad reply: the outcome is recorded in ``status`` so a benchmark can count and
report failures (LAION-SG's test_iou.py raised on a JSON error and looped forever on an empty reply).

status:
* ``ok``            -- the reply parsed as a JSON object; missing keys default to [] (as test_iou.py),
                       entries of the wrong shape are dropped and counted in ``n_dropped``;
* ``parse_error``   -- the reply text is not a JSON object (after removing Markdown fences);
* ``empty_reply``   -- the endpoint kept returning empty content until the retry budget ran out;
* ``request_error`` -- HTTP / connection / timeout failure after the retry budget, or a non-retryable HTTP error.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

ExtractionStatus = Literal["ok", "parse_error", "empty_reply", "request_error"]
STATUSES: tuple[str, ...] = ("ok", "parse_error", "empty_reply", "request_error")

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


@dataclass
class ExtractedGraph:
    triples: list[tuple[str, str, str]] = field(default_factory=list)  # scene_graph, deduplicated, reply order
    object_list: list[str] = field(default_factory=list)
    predicate_list: list[str] = field(default_factory=list)
    raw_text: str | None = None  # the model's reply text, kept for audit and re-scoring
    status: ExtractionStatus = "ok"
    error: str | None = None
    n_dropped: int = 0  # malformed entries dropped while parsing
    attempts: int = 0  # HTTP requests made (0 for extractors that make none)
    # distinct malformed entries (JSON text) per key: test_iou.py keeps them in its sets, so paper-mode IoU counts
    # them in the union (they can never match a GT string); normalized mode ignores them
    malformed: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"ExtractedGraph.status must be one of {STATUSES}, got {self.status!r}")
        self.triples = [tuple(t) for t in self.triples]  # type: ignore[misc]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["triples"] = [list(t) for t in self.triples]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExtractedGraph":
        return cls(**{**d, "triples": [tuple(t) for t in d.get("triples", [])]})


def strip_json_fences(text: str) -> str:
    """The JSON inside the first ```json ... ``` (or bare ```) block, else the stripped text itself."""
    m = _FENCE.search(text)
    return (m.group(1) if m else text).strip()


def _load_json(text: str) -> Any:
    """``json.loads`` of the fence-stripped text; failing that, of the span from the first "{" to the last "}"
    (chat models often wrap the object in prose). Raises ``json.JSONDecodeError`` when neither parses."""
    body = strip_json_fences(text)
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        start, end = body.find("{"), body.rfind("}")
        if 0 <= start < end and (start > 0 or end < len(body) - 1):
            return json.loads(body[start:end + 1])
        raise


def _unique(seq: list[Any]) -> list[Any]:
    return list(dict.fromkeys(seq))


def parse_reply(text: str) -> ExtractedGraph:
    """Parse an extractor reply with the keys ``scene_graph`` / ``object_list`` / ``predicate_list``.

    Fences are removed as test_iou.py does; unlike it, a JSON object embedded in prose is also accepted.
    Triples must be 3 strings and list entries strings; anything else is dropped and counted. Duplicates are
    removed (LAION-SG built sets), keeping first-seen order so the result is deterministic."""
    try:
        obj = _load_json(text)
    except json.JSONDecodeError as e:
        return ExtractedGraph(raw_text=text, status="parse_error", error=f"invalid JSON: {e}")
    if not isinstance(obj, dict):
        return ExtractedGraph(raw_text=text, status="parse_error",
                              error=f"expected a JSON object, got {type(obj).__name__}")
    dropped = 0
    triples: list[tuple[str, str, str]] = []
    lists: dict[str, list[str]] = {}
    malformed: dict[str, list[str]] = {}
    raw_sg = obj.get("scene_graph", [])
    for t in raw_sg if isinstance(raw_sg, list) else []:
        if isinstance(t, (list, tuple)) and len(t) == 3 and all(isinstance(x, str) for x in t):
            triples.append((t[0], t[1], t[2]))
        else:
            dropped += 1
            malformed.setdefault("scene_graph", []).append(json.dumps(t, sort_keys=True))
    if not isinstance(raw_sg, list):
        dropped += 1
    for key in ("object_list", "predicate_list"):
        raw = obj.get(key, [])
        entries = raw if isinstance(raw, list) else []
        lists[key] = [x for x in entries if isinstance(x, str)]
        bad = [json.dumps(x, sort_keys=True) for x in entries if not isinstance(x, str)]
        if bad:
            malformed[key] = bad
        dropped += len(entries) - len(lists[key]) + (0 if isinstance(raw, list) else 1)
    return ExtractedGraph(triples=_unique(triples), object_list=_unique(lists["object_list"]),
                          predicate_list=_unique(lists["predicate_list"]), raw_text=text, status="ok",
                          n_dropped=dropped, malformed={k: _unique(v) for k, v in malformed.items()})
