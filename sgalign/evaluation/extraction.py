"""The scene graphs an evaluation reads back from generated images: the world oracle (each image parsed once) or an
OpenAI-compatible chat endpoint (with a resumable cache), under the protocol's failure budget."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..scene_graph import SceneGraph
from .protocol import EvalProtocol


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
    from .extractors import ChatCompletionsExtractor, GraphParserExtractor, TooManyExtractionFailures, extract_all

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
