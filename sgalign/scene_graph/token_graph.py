"""LAION-SG's token-level scene graph, as a pure function of (scene graph, tokenizer).

SDXL-SG (LAION-SG) builds its graph from CLIP *tokens*, not objects (reference: anchor-laion-sg.md §2.5):

* every triple contributes its own nodes -- nothing is shared between triples, even the same item;
* subject tokens s_1..s_a are nodes, head = s_a (the last BPE piece of the label, which comes last in the
  phrase), with a-1 "attribute edges" s_i -> s_a whose predicate is the token of "-";
* object tokens likewise (head o_b);
* each relation token p_j is the predicate of its own parallel edge s_a -> o_b;
* isolated items are not in the graph (they reach the model only through the serialised text);
* each part is tokenised on its own and BOS/EOS dropped.

Re-serialising the triples (subject tokens, relation tokens, object tokens) gives exactly the token prefix of
the serialised graph text, which is what lets the encoder add graph features position by position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .graph import SceneGraph
from .schema import LaionSGRecord

ATTRIBUTE_PREDICATE_TEXT = "-"


class Tokenizer(Protocol):
    """A HF-style tokenizer: ``tokenizer(text, ...)["input_ids"]`` with BOS first and EOS last."""

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


def content_token_ids(tokenizer: Tokenizer, text: str, max_length: int = 77) -> list[int]:
    """Token ids of ``text`` without BOS/EOS, as LAION-SG's encoder computes them (no padding, truncation at
    ``max_length`` including BOS/EOS, then ``[1:-1]``)."""
    ids = tokenizer(text, padding=False, truncation=True, max_length=max_length)["input_ids"]
    if ids and isinstance(ids[0], list):  # batched output
        ids = ids[0]
    return list(ids)[1:-1]


@dataclass(frozen=True)
class TokenGraph:
    node_token_ids: list[int]  # O node tokens
    pred_token_ids: list[int]  # T predicate tokens (attribute "-" edges and relation-token edges)
    edges: list[tuple[int, int]]  # T (subject node, object node)
    triple_index: list[tuple[int, tuple[int, int], int]]  # per triple: (subject head, [p_start, p_end), object head)
    sequence_index: list[int]  # re-serialisation: indices into node tokens ++ predicate tokens
    attribute_token_id: int

    @property
    def num_nodes(self) -> int:
        return len(self.node_token_ids)

    @property
    def sequence_token_ids(self) -> list[int]:
        """Token ids of the re-serialised triples (equal to the serialised text's token prefix)."""
        pool = self.node_token_ids + self.pred_token_ids
        return [pool[i] for i in self.sequence_index]

    def to_tensors(self) -> dict[str, Any]:
        import torch  # heavy: scene_graph serves light tools (validate_sg.py)

        return {
            "node_token_ids": torch.tensor(self.node_token_ids, dtype=torch.long),
            "pred_token_ids": torch.tensor(self.pred_token_ids, dtype=torch.long),
            "edges": torch.tensor(self.edges, dtype=torch.long).reshape(-1, 2),
            "sequence_index": torch.tensor(self.sequence_index, dtype=torch.long),
        }


def build_token_graph(graph: SceneGraph | LaionSGRecord | dict[str, Any], tokenizer: Tokenizer,
                      max_length: int = 77) -> TokenGraph:
    """LAION-SG's token graph of a scene graph (or record) under ``tokenizer``. See the module docstring."""
    sg = graph if isinstance(graph, SceneGraph) else SceneGraph.from_record(graph)
    dash = content_token_ids(tokenizer, ATTRIBUTE_PREDICATE_TEXT, max_length)
    if len(dash) != 1:
        raise ValueError(f"the attribute predicate {ATTRIBUTE_PREDICATE_TEXT!r} must be one token, got {dash}")
    attr_tok = dash[0]

    nodes: list[int] = []
    preds: list[int] = []
    edges: list[tuple[int, int]] = []
    triple_index: list[tuple[int, tuple[int, int], int]] = []
    sequence: list[tuple[str, int]] = []  # ("n" | "p", index) resolved to pool indices at the end

    def add_phrase(text: str, what: str) -> tuple[int, list[int]]:
        toks = content_token_ids(tokenizer, text, max_length)
        if not toks:
            raise ValueError(f"{what} {text!r} has no tokens under this tokenizer")
        start = len(nodes)
        nodes.extend(toks)
        head = len(nodes) - 1
        for i in range(start, head):
            edges.append((i, head))
            preds.append(attr_tok)
        return head, list(range(start, head + 1))

    for k, (subj, rel, obj) in enumerate(sg.triples()):
        s_head, s_nodes = add_phrase(subj, f"triple {k} subject")
        o_head, o_nodes = add_phrase(obj, f"triple {k} object")
        p_start = len(preds)
        for tok in content_token_ids(tokenizer, rel, max_length):
            preds.append(tok)
            edges.append((s_head, o_head))
        p_end = len(preds)
        triple_index.append((s_head, (p_start, p_end), o_head))
        sequence += [("n", i) for i in s_nodes] + [("p", j) for j in range(p_start, p_end)] + [("n", i) for i in o_nodes]

    n_nodes = len(nodes)
    sequence_index = [i if kind == "n" else n_nodes + i for kind, i in sequence]
    return TokenGraph(nodes, preds, edges, triple_index, sequence_index, attr_tok)
