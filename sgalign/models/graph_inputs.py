"""Graph inputs of the SG encoder for a batch of scene graphs: node/predicate features, edges, and where every
graph output goes in the serialised-graph text.

Both modes return one disjoint union graph for the batch (torch_geometric style) and, per graph, ``gather``: for
content position j of the serialised text (BOS excluded), the row of ``cat([node_out, pred_out])`` whose vector is
added there. ``sequence_token_ids`` are the token ids those positions must hold; the conditioning checks them
against the tokenised serialised text, so a misalignment is an error rather than a silent shift.

* ``faithful`` -- LAION-SG's token graph (``sgalign.scene_graph.build_token_graph``). Each phrase, predicate and
  "-" is encoded on its own and its content-token states (BOS/EOS dropped) are the features (reference §2.5).
* ``object`` -- one node per item (``SceneGraph.to_pyg()``), feature = the mean content-token state of the item's
  phrase encoded on its own; one edge per relation with the mean state of its predicate; one self-loop per item
  with the "-" state. A node's output is added at every token of that item's phrase (each time it appears), an
  edge's output at the tokens of its predicate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from ..scene_graph import LaionSGRecord, SceneGraph, build_token_graph
from ..scene_graph.token_graph import ATTRIBUTE_PREDICATE_TEXT, content_token_ids
from .text import HiddenLayer, encode_texts


def as_scene_graph(graph: SceneGraph | LaionSGRecord | dict[str, Any], index: int = 0) -> SceneGraph:
    """A ``SceneGraph`` from a ``SceneGraph``, a ``LaionSGRecord`` or a LAION-SG record dict."""
    if isinstance(graph, SceneGraph):
        return graph
    if isinstance(graph, (LaionSGRecord, dict)):
        try:
            return SceneGraph.from_record(graph)
        except Exception as e:  # pydantic / id errors: say which graph of the batch
            raise ValueError(f"graph {index}: not a valid LAION-SG record: {e}") from e
    raise TypeError(f"graph {index}: expected SceneGraph, LaionSGRecord or a record dict, got {type(graph).__name__}")


def as_scene_graphs(graphs: Iterable[Any] | SceneGraph | LaionSGRecord) -> list[SceneGraph]:
    if isinstance(graphs, (SceneGraph, LaionSGRecord, dict)):  # a single graph
        graphs = [graphs]
    out = [as_scene_graph(g, i) for i, g in enumerate(graphs)]
    if not out:
        raise ValueError("no scene graphs given")
    return out


@dataclass
class GraphInputs:
    x: Tensor  # (N, D) node features
    pred: Tensor  # (T, D) predicate features
    edge_index: Tensor  # (2, T) subject -> object, offsets applied
    gather: list[Tensor]  # per graph (L_b,) rows of cat([node_out, pred_out])
    sequence_token_ids: list[list[int]]  # per graph, the L_b token ids at those positions
    sizes: list[tuple[int, int]]  # per graph (nodes, predicates): its rows of x and of pred / edge_index, in order

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


class _Parts:
    """Encodes the unique part strings of a batch in one text-encoder call."""

    def __init__(self, texts: set[str], tokenizers: Sequence, text_encoders: Sequence,
                 hidden_layer: HiddenLayer | None) -> None:
        self.index = {t: i for i, t in enumerate(sorted(texts))}
        st = encode_texts(list(self.index), tokenizers, text_encoders, hidden_layer=hidden_layer, padding="longest")
        self.hidden, self.lengths, self.ids = st.hidden, st.lengths.tolist(), st.input_ids

    def tokens(self, text: str) -> Tensor:
        """(n-2, D) content-token states of ``text`` encoded alone."""
        u = self.index[text]
        return self.hidden[u, 1:self.lengths[u] - 1]

    def token_ids(self, text: str) -> list[int]:
        u = self.index[text]
        return self.ids[u, 1:self.lengths[u] - 1].tolist()

    def mean(self, text: str, what: str) -> Tensor:
        t = self.tokens(text)
        if t.shape[0] == 0:
            raise ValueError(f"{what} {text!r} has no tokens")
        return t.mean(0)


def build_graph_inputs(graphs: Sequence[SceneGraph], mode: str, tokenizers: Sequence, text_encoders: Sequence, *,
                       hidden_layer: HiddenLayer | None = None, self_loops: bool = True) -> GraphInputs:
    if mode not in ("object", "faithful"):
        raise ValueError(f"mode must be 'object' or 'faithful', got {mode!r}")
    texts = {ATTRIBUTE_PREDICATE_TEXT}
    for sg in graphs:
        texts |= {sg.phrase(it) for it in sg.items} | {r.predicate for r in sg.relations}
    parts = _Parts(texts, tokenizers, text_encoders, hidden_layer)
    build = _faithful_graph if mode == "faithful" else _object_graph
    xs, preds, edges, seqs, seq_ids, sizes = [], [], [], [], [], []
    n_nodes = n_preds = 0
    for b, sg in enumerate(graphs):
        x, p, e, seq, ids = build(sg, parts, tokenizers[0], self_loops, b)
        xs += x
        preds += p
        edges.append(torch.as_tensor(e, dtype=torch.long).reshape(-1, 2) + n_nodes)
        # ("n", i) -> node row, ("p", j) -> predicate row; made global once the totals are known
        seqs.append([(k, i + (n_nodes if k == "n" else n_preds)) for k, i in seq])
        seq_ids.append(ids)
        sizes.append((len(x), len(p)))
        n_nodes, n_preds = n_nodes + len(x), n_preds + len(p)
    dim, ref = parts.hidden.shape[-1], parts.hidden
    x = torch.stack(xs) if xs else ref.new_zeros(0, dim)
    pred = torch.stack(preds) if preds else ref.new_zeros(0, dim)
    gather = [torch.tensor([i if k == "n" else n_nodes + i for k, i in s], dtype=torch.long) for s in seqs]
    return GraphInputs(x, pred, torch.cat(edges).t().contiguous().to(ref.device), gather, seq_ids, sizes)


def _faithful_graph(sg: SceneGraph, parts: _Parts, tokenizer: Any, self_loops: bool, b: int):
    """LAION-SG's token graph; features in ``build_token_graph``'s node / predicate order."""
    tg = build_token_graph(sg, tokenizer)
    dash = parts.tokens(ATTRIBUTE_PREDICATE_TEXT)[0]
    x: list[Tensor] = []
    preds: list[Tensor] = []
    node_ids: list[int] = []
    for s, p, o in sg.triples():
        s_tok, o_tok, p_tok = parts.tokens(s), parts.tokens(o), parts.tokens(p)
        x += list(s_tok) + list(o_tok)
        node_ids += parts.token_ids(s) + parts.token_ids(o)
        # build_token_graph's predicate order per triple: subject "-" edges, object "-" edges, relation tokens
        preds += [dash] * (len(s_tok) - 1) + [dash] * (len(o_tok) - 1) + list(p_tok)
    if node_ids != tg.node_token_ids or len(preds) != len(tg.pred_token_ids):
        raise RuntimeError(f"graph {b}: token graph and part encodings disagree (tokenizer mismatch?)")
    n = tg.num_nodes
    seq = [("n", i) if i < n else ("p", i - n) for i in tg.sequence_index]
    return x, preds, tg.edges, seq, tg.sequence_token_ids


def _object_graph(sg: SceneGraph, parts: _Parts, tokenizer: Any, self_loops: bool, b: int):
    """One node per item (isolated included), one edge per relation, optional self-loops."""
    data = sg.to_pyg()
    x = [parts.mean(t, f"graph {b}: item phrase") for t in data.node_text]
    preds = [parts.mean(t, f"graph {b}: predicate") for t in data.edge_text]
    edges = data.edge_index.t().tolist()
    if self_loops:
        dash = parts.tokens(ATTRIBUTE_PREDICATE_TEXT)[0]
        preds += [dash] * len(x)
        edges += [[i, i] for i in range(len(x))]
    node_of = {int(item_id): n for n, item_id in enumerate(data.item_ids)}
    seq: list[tuple[str, int]] = []
    ids: list[int] = []

    def put(kind: str, index: int, text: str) -> None:
        tok = content_token_ids(tokenizer, text)
        seq.extend([(kind, index)] * len(tok))
        ids.extend(tok)

    for k, r in enumerate(sg.relations):
        put("n", node_of[r.subject], sg.phrase(r.subject))
        put("p", k, r.predicate)
        put("n", node_of[r.object], sg.phrase(r.object))
    for it in sg.isolated_items:
        put("n", node_of[it.item_id], sg.phrase(it))
    return x, preds, edges, seq, ids
