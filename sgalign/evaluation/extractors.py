"""Scene-graph extractors: image + ground-truth graph (or just its vocabulary) -> ``ExtractedGraph``.

* ``ChatCompletionsExtractor``: a vision-language model behind an OpenAI-compatible endpoint (below);
* ``GraphParserExtractor``: any deterministic image -> ``SceneGraph`` parser with LAION-SG-style closed-vocabulary
  extraction, e.g. the shapes-world oracle (``parser.extract(image, reference=gt_graph)``).

``ChatCompletionsExtractor`` asks an OpenAI-compatible ``/chat/completions`` endpoint (GPT-4o in LAION-SG's
CompSG-Bench) for the scene graph of an image, with LAION-SG's closed-vocabulary prompt: subjects/objects must be
chosen from the GT item list and predicates from the GT relation list, and the answer is JSON with the keys
``scene_graph`` / ``object_list`` / ``predicate_list``. The prompt here is reworded, same content and keys.

Differences from test_iou.py, all deliberate:
* the vocabulary lists are sorted (the original pasted Python ``set`` reprs, whose order changes between
  processes with hash randomisation, so its prompt text was not reproducible -- ``paper=True`` keeps the
  original's content rules but cannot and does not reproduce that order);
* bounded retries with exponential backoff on connection errors, timeouts, HTTP 5xx / 429 and empty content
  (the original retried only on request exceptions and looped forever on empty content);
* an unparseable reply is returned with ``status="parse_error"`` and counted, never retried (the original
  raised); TLS verification is on (the original used ``verify=False``).

The API key and base URL come from environment variables (names configurable) and are never logged, put in
``repr`` or in ``provenance()``.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union, runtime_checkable

import numpy as np
from PIL import Image

from ..scene_graph import SceneGraph
from .extracted_graph import ExtractedGraph, parse_reply
from .protocol import EvalProtocol

logger = logging.getLogger(__name__)

ImageInput = Union[str, Path, bytes, Any]  # path, encoded bytes, PIL.Image, or HxWx3 uint8 array


class ExtractorConfigError(RuntimeError):
    """The extractor cannot work as configured (missing key, rejected credentials, unknown endpoint)."""


@dataclass(frozen=True)
class Vocabulary:
    """The closed vocabulary shown to the extractor: sorted, unique, exact GT strings."""

    objects: tuple[str, ...]
    predicates: tuple[str, ...]

    @classmethod
    def from_scene_graph(cls, sg: SceneGraph, paper: bool = False) -> "Vocabulary":
        """``paper``: item labels from the GT triples only (as test_iou.py); default: every item label, isolated
        items included, so the extractor can report them (they count as entities in normalized SG-IoU)."""
        triples = sg.label_triples()
        objects = {x for s, _, o in triples for x in (s, o)}
        if not paper:
            objects |= {it.label for it in sg.items}
        return cls(tuple(sorted(objects)), tuple(sorted({p for _, p, _ in triples})))


def build_prompt(vocab: Vocabulary) -> str:
    """LAION-SG's closed-vocabulary scene-graph request, in our own words (same content and JSON keys)."""
    return (
        "Give the scene graph of the salient objects in this image; leave out the background.\n"
        "Write the scene graph as triplets [subject, predicate, object].\n"
        f"Every subject and object must be chosen from this item list: {list(vocab.objects)}\n"
        f"Every predicate must be chosen from this relation list: {list(vocab.predicates)}\n"
        "Also give the list of objects in the image, chosen from the item list.\n"
        "Answer with JSON only, in exactly this form:\n"
        '{"scene_graph": [["subject", "predicate", "object"], ...], '
        '"object_list": ["object", ...], "predicate_list": ["predicate", ...]}'
    )


@runtime_checkable
class SceneGraphExtractor(Protocol):
    """``extract(image, reference)``: ``reference`` is the GT graph (its vocabulary is what the extractor may
    answer with) or, for extractors that only need the word lists, a ``Vocabulary``."""

    name: str

    def extract(self, image: ImageInput, reference: SceneGraph | Vocabulary) -> ExtractedGraph: ...

    def provenance(self) -> dict[str, Any]: ...


class GraphParserExtractor:
    """Adapter for an image parser with ``extract(image, reference=SceneGraph) -> SceneGraph`` (the world oracle).

    The parsed graph becomes an ``ExtractedGraph``: its triples, every parsed item as ``object_list`` and the
    predicates of its triples as ``predicate_list`` -- as labels (``granularity="label"``) or as phrases
    "attrs label" (``"phrase"``; score with the same granularity)."""

    def __init__(self, parser: Any, granularity: str = "label", name: str | None = None,
                 paper: bool = False) -> None:
        if granularity not in ("label", "phrase"):
            raise ValueError(f"granularity must be 'label' or 'phrase', got {granularity!r}")
        self.parser, self.granularity, self.paper = parser, granularity, paper
        self.name = name or getattr(parser, "name", type(parser).__name__)

    def extract(self, image: ImageInput, reference: SceneGraph | Vocabulary) -> ExtractedGraph:
        if not isinstance(reference, SceneGraph):
            raise TypeError(f"{self.name}: needs the reference SceneGraph, not a {type(reference).__name__}")
        sg = self.parser.extract(image, reference=reference)
        phrase = self.granularity == "phrase"
        triples = sg.triples() if phrase else sg.label_triples()
        objects = [sg.phrase(it) if phrase else it.label for it in sg.items]
        if self.paper:
            # LAION-SG's GPT could only answer with names from the GT triples' item and relation lists, so an
            # object it saw but the list lacks (an isolated item) cannot be reported
            gt = reference.triples() if phrase else reference.label_triples()
            items, rels = {x for s_, _, o in gt for x in (s_, o)}, {r for _, r, _ in gt}
            triples = [t for t in triples if t[0] in items and t[2] in items and t[1] in rels]
            objects = [o for o in objects if o in items]
        return ExtractedGraph(triples=list(dict.fromkeys(triples)), object_list=list(dict.fromkeys(objects)),
                              predicate_list=list(dict.fromkeys(p for _, p, _ in triples)))

    def provenance(self) -> dict[str, Any]:
        config = self.parser.config() if hasattr(self.parser, "config") else {}
        return {"extractor": self.name, "granularity": self.granularity, "paper": self.paper, "parser": config}


def encode_image(image: ImageInput, image_format: str = "png") -> str:
    """A ``data:`` URL for the image. Files and bytes are sent as they are (JPEG/PNG/WebP detected by their magic
    bytes); a PIL image or uint8 array is encoded as ``image_format`` (PNG by default: lossless)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"extractor image not found: {path}")
        image = path.read_bytes()
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        if data[:3] == b"\xff\xd8\xff":
            mime = "image/jpeg"
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            mime = "image/png"
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            mime = "image/webp"
        else:
            raise ValueError("extractor image bytes are not JPEG, PNG or WebP; pass a PIL image to re-encode")
    else:
        pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
        fmt = image_format.lower()
        buf = io.BytesIO()
        pil.convert("RGB").save(buf, format="JPEG" if fmt in ("jpg", "jpeg") else fmt.upper())
        data, mime = buf.getvalue(), "image/jpeg" if fmt in ("jpg", "jpeg") else f"image/{fmt}"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_bytes(image: ImageInput) -> bytes:
    """The bytes that identify an image: a file's or encoded image's bytes as they are; an array's or PIL image's
    pixels with their shape and dtype (so equal pixels give equal bytes whatever the encoder version)."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)

    arr = np.ascontiguousarray(np.asarray(image))
    return f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()


class _Fatal(Exception):
    """A failure that retrying cannot fix (HTTP 4xx other than 401/403/404/429)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, empty: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.empty = reason, retry_after, empty


class ChatCompletionsExtractor:
    """Scene-graph extraction through an OpenAI-compatible chat-completions endpoint (standard library HTTP).

    Defaults follow CompSG-Bench: ``gpt-4o``, temperature 0.7, seed 1234, one user message holding the prompt and
    the image. ``max_retries`` extra attempts are made after the first, sleeping
    ``min(max_backoff, backoff * 2**k)`` before retry k (at least ``Retry-After`` on a 429, still capped).
    HTTP 401/403/404 raise ``ExtractorConfigError``; other 4xx return ``status="request_error"`` at once.
    ``counts`` tallies the statuses returned so far, ``retries`` the retries made.
    """

    name = "chat-completions"

    def __init__(self, model: str = "gpt-4o", *, temperature: float = 0.7, seed: int | None = 1234,
                 max_tokens: int | None = None, timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0,
                 max_backoff: float = 30.0, paper: bool = False, image_format: str = "png",
                 api_key_env: str = "OPENAI_API_KEY", base_url_env: str = "OPENAI_BASE_URL",
                 default_base_url: str = "https://api.openai.com/v1", require_api_key: bool = True,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if max_retries < 0 or timeout <= 0:
            raise ValueError("ChatCompletionsExtractor: max_retries must be >= 0 and timeout > 0")
        self.model, self.temperature, self.seed, self.max_tokens = model, temperature, seed, max_tokens
        self.timeout, self.max_retries, self.backoff, self.max_backoff = timeout, max_retries, backoff, max_backoff
        self.paper, self.image_format = paper, image_format
        self.api_key_env, self.base_url_env = api_key_env, base_url_env
        self._sleep = sleep
        self._api_key = os.environ.get(api_key_env) or None
        if self._api_key is None and require_api_key:
            raise ExtractorConfigError(
                f"ChatCompletionsExtractor: no API key; set the environment variable {api_key_env} "
                "(or pass require_api_key=False for a local server that needs none)")
        self._url = (os.environ.get(base_url_env) or default_base_url).rstrip("/") + "/chat/completions"
        self.counts: Counter[str] = Counter()
        self.retries = 0

    def __repr__(self) -> str:  # no key, no URL
        return f"ChatCompletionsExtractor(model={self.model!r}, paper={self.paper})"

    def provenance(self) -> dict[str, Any]:
        return {
            "extractor": self.name, "model": self.model, "temperature": self.temperature, "seed": self.seed,
            "max_tokens": self.max_tokens, "timeout_s": self.timeout, "max_retries": self.max_retries,
            "paper": self.paper, "image_format": self.image_format, "prompt": "LAION-SG closed vocabulary (reworded)",
            "vocabulary_order": "sorted" + (" (LAION-SG used Python set order, which varies between processes)"
                                            if self.paper else ""),
            "endpoint_from_env": self.base_url_env, "api_key_from_env": self.api_key_env,
            "status_counts": dict(self.counts), "retries": self.retries,
        }

    def cache_key(self, image: ImageInput, reference: SceneGraph | Vocabulary) -> str:
        """sha256 of the image bytes and of everything that shapes the answer: model, sampling settings, prompt
        mode and the prompt text with its vocabulary. Another model's images, or the same images asked
        differently, never hit each other's cache rows."""
        vocabulary = reference if isinstance(reference, Vocabulary) else Vocabulary.from_scene_graph(reference,
                                                                                                     self.paper)
        settings = {"model": self.model, "temperature": self.temperature, "seed": self.seed,
                    "max_tokens": self.max_tokens, "paper": self.paper, "image_format": self.image_format,
                    "prompt": build_prompt(vocabulary)}
        h = hashlib.sha256(image_bytes(image))
        h.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
        return h.hexdigest()

    def request_body(self, image: ImageInput, vocabulary: Vocabulary) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "temperature": self.temperature,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": build_prompt(vocabulary)},
                {"type": "image_url", "image_url": {"url": encode_image(image, self.image_format)}}]}],
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def extract(self, image: ImageInput, reference: SceneGraph | Vocabulary) -> ExtractedGraph:
        """One extraction. A ``SceneGraph`` reference gives the vocabulary ``Vocabulary.from_scene_graph(reference,
        paper=self.paper)``. Never raises for a bad reply; raises ``ExtractorConfigError`` on HTTP 401/403/404."""
        vocabulary = reference if isinstance(reference, Vocabulary) else Vocabulary.from_scene_graph(reference,
                                                                                                     self.paper)
        data = json.dumps(self.request_body(image, vocabulary)).encode("utf-8")
        last: _Retryable | None = None
        for attempt in range(1, self.max_retries + 2):
            if last is not None:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 2))
                if last.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, last.retry_after))
                logger.warning("scene-graph extractor: %s; retry %d/%d in %.1f s", last.reason, attempt - 1,
                               self.max_retries, delay)
                self.retries += 1
                self._sleep(delay)
            try:
                content = self._complete(data)
            except _Retryable as e:
                last = e
                continue
            except _Fatal as e:
                return self._done(ExtractedGraph(status="request_error", error=str(e), attempts=attempt))
            out = parse_reply(content)
            out.attempts = attempt
            return self._done(out)
        assert last is not None
        status = "empty_reply" if last.empty else "request_error"
        return self._done(ExtractedGraph(status=status, attempts=self.max_retries + 1,
                                         error=f"gave up after {self.max_retries + 1} attempts: {last.reason}"))

    def _done(self, out: ExtractedGraph) -> ExtractedGraph:
        self.counts[out.status] += 1
        return out

    def _complete(self, data: bytes) -> str:
        """One request; returns the non-empty reply text or raises _Retryable / _Fatal / ExtractorConfigError."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self._url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            detail = _snippet(e.read() if e.fp is not None else b"")
            if e.code in (401, 403, 404):
                raise ExtractorConfigError(
                    f"chat-completions endpoint answered HTTP {e.code} ({detail}); check the API key in "
                    f"${self.api_key_env}, the base URL in ${self.base_url_env} and the model name {self.model!r}"
                ) from None
            if e.code == 429 or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}", _retry_after(e.headers)) from None
            raise _Fatal(f"HTTP {e.code}: {detail}") from None
        except (TimeoutError, socket.timeout):
            raise _Retryable(f"timeout after {self.timeout} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timeout after {self.timeout} s") from None
            raise _Retryable(f"connection error: {type(e.reason).__name__}") from None
        except (OSError, http.client.HTTPException) as e:
            raise _Retryable(f"connection error: {type(e).__name__}") from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable("response is not a chat-completions JSON body", empty=False) from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            raise _Retryable("empty content", empty=True)
        return content


def _snippet(body: bytes, n: int = 200) -> str:
    return body[:n].decode("utf-8", "replace").replace("\n", " ")


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers is not None and headers.get("Retry-After") else None
    except ValueError:
        return None


class TooManyExtractionFailures(RuntimeError):
    """More extractions failed than the failure budget allows: the run has no trustworthy headline number."""

    exit_code = 1

    def __init__(self, failed: int, done: int, total: int, limit: int, statuses: dict[str, int]) -> None:
        self.failed, self.done, self.total, self.limit, self.statuses = failed, done, total, limit, statuses
        super().__init__(f"{failed} of {done} scene-graph extractions failed so far ({total} to do; at most {limit} "
                         f"allowed by compositional.max_failure_rate); statuses {statuses}; check the extractor "
                         "endpoint, model name and key, then rerun (successful extractions are cached)")


def extract_all(extractor: SceneGraphExtractor, images: Sequence[ImageInput], references: Sequence[SceneGraph],
                *, keys: Sequence[str] | None = None, cache_path: str | Path | None = None,
                max_failures: int | None = None) -> list[ExtractedGraph]:
    """Extract every (image, reference) pair in order.

    With ``cache_path`` (JSON lines ``{"key": ..., "label": ..., **graph}``, appended as results arrive) a re-run
    reuses cached results -- except ``request_error`` / ``empty_reply``, which are tried again -- so an interrupted
    or rate-limited benchmark resumes without paying twice. The cache key is the extractor's ``cache_key(image,
    reference)`` (image bytes + settings) when it has one, else ``keys`` (then required); ``keys`` are also kept
    as readable labels. ``max_failures``: raise ``TooManyExtractionFailures`` as soon as more extractions than
    that have failed (an unreachable endpoint stops the run early instead of scoring zeros)."""
    if len(images) != len(references):
        raise ValueError(f"extract_all: {len(images)} images but {len(references)} reference graphs")
    content_keys = hasattr(extractor, "cache_key")
    if cache_path is not None and keys is None and not content_keys:
        raise ValueError("extract_all: a cache needs one key per image (e.g. the img_id)")
    if keys is not None and (len(keys) != len(images) or len(set(keys)) != len(keys)):
        raise ValueError("extract_all: keys must be unique, one per image")
    cached: dict[str, ExtractedGraph] = {}
    if cache_path is not None and Path(cache_path).is_file():
        for n, line in enumerate(Path(cache_path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row.pop("key")
                row.pop("label", None)
                cached[key] = ExtractedGraph.from_dict(row)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{cache_path}, line {n}: not an extraction cache row ({e}); delete the file "
                                 "to start over") from None
    out: list[ExtractedGraph] = []
    statuses: Counter[str] = Counter()
    for k, (image, ref) in enumerate(zip(images, references)):
        label = None if keys is None else keys[k]
        key = extractor.cache_key(image, ref) if content_keys and cache_path is not None else label
        hit = cached.get(key) if key is not None else None
        if hit is not None and hit.status not in ("request_error", "empty_reply"):
            g = hit
        else:
            g = extractor.extract(image, ref)
            if cache_path is not None:
                with open(cache_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "label": label, **g.to_dict()}) + "\n")
        out.append(g)
        statuses[g.status] += 1
        failed = len(out) - statuses["ok"]
        if max_failures is not None and failed > max_failures:
            raise TooManyExtractionFailures(failed, len(out), len(images), max_failures, dict(statuses))
    return out


# ---- running the protocol's extractor over an evaluation's images ------------------------------------------
class ParsedImages:
    """The world oracle's readings of a fixed image list, parsed once; ``extract(index, reference)``."""

    name = "world-oracle"

    def __init__(self, oracle: Any, images: np.ndarray) -> None:
        self.oracle, self.scenes = oracle, oracle.parse_batch(list(images))

    def extract(self, index: int, reference: SceneGraph | None = None) -> SceneGraph:
        return self.scenes[index].extract(reference)

    def config(self) -> dict[str, Any]:
        return self.oracle.config()


def extract_graphs(protocol: EvalProtocol, images: np.ndarray, refs: Sequence[SceneGraph], keys: Sequence[str],
                   granularity: str, cache_dir: Path, role: str, paper: bool = False,
                   parsed: Any = None) -> tuple[list[Any], dict[str, Any]]:
    """The extractions of one role at one granularity. ``paper``: the world oracle answers only with the GT
    triples' names, as LAION-SG's GPT (the chat extractor follows ``chat.paper``). ``parsed``: the oracle's
    readings of ``images`` (parsed once per role). More failures than ``max_failure_rate`` allows raise
    ``TooManyExtractionFailures``."""

    c = protocol.compositional
    limit = int(np.floor(c.max_failure_rate * len(images)))
    if c.extractor == "world-oracle":
        ex = GraphParserExtractor(parsed, granularity=granularity, name="world-oracle", paper=paper)
        preds = [ex.extract(i, ref) for i, ref in enumerate(refs)]
        failed = sum(not p.ok for p in preds)
        if failed > limit:
            counts = {st: sum(p.status == st for p in preds) for st in sorted({p.status for p in preds})}
            raise TooManyExtractionFailures(failed, len(preds), len(preds), limit, counts)
        return preds, ex.provenance()
    o = c.chat
    ex = ChatCompletionsExtractor(o.model, temperature=o.temperature, seed=o.seed, timeout=o.timeout,
                                  max_retries=o.max_retries, paper=o.paper, api_key_env=o.api_key_env,
                                  base_url_env=o.base_url_env, require_api_key=o.require_api_key)
    cache = cache_dir / f"extractions_{role}.jsonl" if o.cache else None
    preds = extract_all(ex, list(images), list(refs), keys=list(keys), cache_path=cache, max_failures=limit)
    return preds, ex.provenance()
