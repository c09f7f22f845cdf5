"""World prompts: the t2i prompt of a world graph (``SceneGraph.serialize()``) read back to its graph.

Used by the evaluation's t2i scorers and the world Pick-a-Pic labels (both score a prompt's image against its graph).
"""
from __future__ import annotations

import re

from ..scene_graph import SceneGraph
from . import rules


def parse_world_prompt(text: str) -> SceneGraph:
    """A world prompt (``SceneGraph.serialize()`` of a world graph: "<phrase> <predicate> <phrase> " per relation,
    then "<phrase> " per isolated item, phrase = "colour size shape") back to its graph. World phrases are distinct
    within a scene, so equal phrases are the same object. Raises ``ValueError`` naming the unparsed text."""
    phrase = rf"(?:{'|'.join(rules.COLOURS)}) (?:{'|'.join(rules.SIZES)}) (?:{'|'.join(rules.SHAPES)})"
    pred = "|".join(re.escape(p) for p in sorted(rules.PREDICATES, key=len, reverse=True))
    clause = re.compile(rf"\s*(?:({phrase}) ({pred}) ({phrase})|({phrase}))(?=\s|$)")
    items: list[str] = []
    rels: list[tuple[int, str, int]] = []
    pos, text_s = 0, text.strip()
    while pos < len(text_s):
        m = clause.match(text_s, pos)
        if m is None:
            raise ValueError(f"prompt {text!r}: cannot read a world clause at {text_s[pos:pos + 30]!r}; expected "
                             "'<colour> <size> <shape> <predicate> <colour> <size> <shape>' or '<colour> <size> "
                             "<shape>' clauses (SceneGraph.serialize of a world graph)")
        for p in (m.group(1), m.group(3), m.group(4)):
            if p is not None and p not in items:
                items.append(p)
        if m.group(2) is not None:
            rels.append((items.index(m.group(1)), m.group(2), items.index(m.group(3))))
        pos = m.end()
    if not items:
        raise ValueError(f"prompt {text!r}: empty")
    objs = [(p.split()[2], [p.split()[0], p.split()[1]]) for p in items]
    return SceneGraph.from_triples(objs, rels)
