"""The conditioning value of SD1.5-SG / SDXL-SG and the one function that builds it.

``SGConditioning`` is what the UNet is called with; the trainer passes the same value to policy, reference and
inversion passes (``unet(x, t, **cond.unet_kwargs())``). ``build_conditioning`` makes it from scene graphs:

1. serialise each graph (LAION-SG's "s p o " ... "item " text) and encode it: ``hidden (B, 77, D)``, ``pooled``;
2. (``use_graph``) run the SG encoder on the graph inputs and add ``alpha_obj * g`` at the content positions of
   the graph's tokens (at most 75, the text's own truncation);
3. pad after EOS with copies of the EOS vector (``pad_with_eos_copies``, LAION-SG) or keep the padding states;
4. SDXL: pooled = the serialised text's pooled embedding (the graph never touches it) and ``add_time_ids``.

With ``alpha_obj == 0`` the result equals the text-only conditioning exactly (``use_graph=False``).

Steps 2-3 are ``fuse_conditioning``, the one implementation of the fusion: vectorised over a batch of graphs padded
to a common size (``graph_rows`` -> ``collate_graph_rows``). The trainer's ``Denoiser`` calls it on its cached,
once-per-batch rows; ``build_conditioning`` on the rows of the graphs it is given. Both make those rows with
``encode_condition_rows``, the one home of the inputs' encoding.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch
from torch import Tensor

from ..scene_graph import SceneGraph
from .graph_inputs import GraphInputs, as_scene_graphs, build_graph_inputs
from .sg_encoder import SGEncoder
from .text import HiddenLayer, encode_texts


@dataclass
class SGConditioning:
    prompt_embeds: Tensor  # (B, 77, D)
    pooled_prompt_embeds: Tensor | None = None  # (B, P), SDXL
    add_time_ids: Tensor | None = None  # (B, 6), SDXL: original (h, w), crop (top, left), target (h, w)

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def _map(self, fn) -> "SGConditioning":
        return SGConditioning(*(None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                                for f in fields(self)))

    def to(self, *args: Any, **kwargs: Any) -> "SGConditioning":
        out = self._map(lambda t: t.to(*args, **kwargs))
        if out.add_time_ids is not None:  # time ids are integers in spirit; keep them out of low precision casts
            out.add_time_ids = self.add_time_ids.to(device=out.prompt_embeds.device)
        return out

    def repeat_interleave(self, n: int) -> "SGConditioning":
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def __getitem__(self, index: Any) -> "SGConditioning":
        return self._map(lambda t: t[index])

    def zeros_like(self) -> "SGConditioning":
        """SDXL's unconditional branch (``force_zeros_for_empty_prompt``): zero embeddings, same time ids."""
        out = replace(self, prompt_embeds=torch.zeros_like(self.prompt_embeds))
        if self.pooled_prompt_embeds is not None:
            out.pooled_prompt_embeds = torch.zeros_like(self.pooled_prompt_embeds)
        return out

    @classmethod
    def cat(cls, items: Sequence["SGConditioning"]) -> "SGConditioning":
        return cls(*(None if getattr(items[0], f.name) is None else torch.cat([getattr(c, f.name) for c in items])
                     for f in fields(cls)))

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``UNet2DConditionModel.forward`` (besides sample and timestep)."""
        kw: dict[str, Any] = {"encoder_hidden_states": self.prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kw["added_cond_kwargs"] = {"text_embeds": self.pooled_prompt_embeds,
                                       "time_ids": self.add_time_ids.to(self.prompt_embeds.dtype)}
        return kw


def make_add_time_ids(batch: int, height: int, width: int, original_size: tuple[int, int] | None = None,
                      crop_top_left: tuple[int, int] = (0, 0), device: Any = None) -> Tensor:
    """SDXL micro-conditioning, (h, w) order as SDXL expects (LAION-SG's training wrote (w, h): not reproduced)."""
    oh, ow = original_size or (height, width)
    row = torch.tensor([oh, ow, *crop_top_left, height, width], dtype=torch.float32, device=device)
    return row.expand(batch, 6).clone()


def build_conditioning(graphs: Any, sg_encoder: SGEncoder | None, tokenizers: Sequence, text_encoders: Sequence, *,
                       use_graph: bool | Tensor = True, height: int | None = None, width: int | None = None,
                       original_size: tuple[int, int] | None = None, hidden_layer: HiddenLayer | None = None,
                       pad_with_eos_copies: bool | None = None) -> SGConditioning:
    """Conditioning of ``graphs`` (SceneGraphs or LAION-SG records). One encoder => SD1.5, two => SDXL.

    ``use_graph=False`` (or ``sg_encoder=None``) gives the text-only conditioning of the serialised graphs; a (B,)
    bool ``use_graph`` chooses per row (the fusion's ``graph_on``), in one encoder call.
    ``height``/``width`` (pixels) are needed for SDXL's time ids."""
    rows_on = None
    if isinstance(use_graph, Tensor):
        rows_on, use_graph = use_graph.bool().cpu(), bool(use_graph.any())
    sgs = as_scene_graphs(graphs)
    cfg = sg_encoder.config if sg_encoder is not None else None
    if pad_with_eos_copies is None:
        pad_with_eos_copies = cfg.pad_with_eos_copies if cfg is not None else True
    with_graph = use_graph and sg_encoder is not None
    batch = collate_condition_rows(encode_condition_rows(
        sgs, tokenizers, text_encoders, mode=cfg.mode if cfg is not None else "object", graph=with_graph,
        self_loops=cfg.self_loops if cfg is not None else True, height=height, width=width,
        original_size=original_size, hidden_layer=hidden_layer))
    hidden = batch["text"]
    if cfg is not None and hidden.shape[-1] != cfg.text_dim:
        raise ValueError(f"SG encoder text_dim={cfg.text_dim} but the text encoders give {hidden.shape[-1]}-d states")
    graph = {k: batch[k].to(hidden.device) for k in GRAPH_KEYS} if with_graph else None
    if graph is not None and rows_on is not None:
        graph["graph_on"] = graph["graph_on"] * rows_on.to(graph["graph_on"])
    cond = SGConditioning(fuse_conditioning(hidden, batch["lengths"], sg_encoder if with_graph else None, graph,
                                            pad_with_eos_copies))
    if "text_embeds" in batch:  # SDXL
        cond.pooled_prompt_embeds, cond.add_time_ids = batch["text_embeds"], batch["time_ids"]
    return cond


GRAPH_KEYS = ("nodes", "preds", "edges", "edge_mask", "gather", "gather_mask", "graph_on")


def encode_condition_rows(prompts: Sequence[Any], tokenizers: Sequence, text_encoders: Sequence, *,
                          mode: str = "object", graph: bool = False, self_loops: bool = True,
                          height: int | None = None, width: int | None = None,
                          original_size: tuple[int, int] | None = None,
                          hidden_layer: HiddenLayer | None = None) -> list[dict[str, Tensor]]:
    """The fusion's inputs, one dict per prompt (a ``SceneGraph``, serialised in ``mode``; or a caption, with no
    graph): ``text`` (S, D) and ``lengths`` from the text encoders in one call, SDXL's ``text_embeds`` / ``time_ids``,
    and with ``graph`` its SG-encoder rows (``graph_rows``; a caption gets the empty graph). The one place the
    trainer's cached rows and ``build_conditioning`` encode their inputs; ``collate_condition_rows`` batches them."""
    sgs = [p if isinstance(p, SceneGraph) else None for p in prompts]
    st = encode_texts([sg.serialize(faithful=mode == "faithful") if sg is not None else str(p)
                       for sg, p in zip(sgs, prompts)], tokenizers, text_encoders, hidden_layer=hidden_layer)
    rows: list[dict[str, Tensor]] = [{"text": st.hidden[i], "lengths": st.lengths[i]} for i in range(len(prompts))]
    if st.pooled is not None:  # SDXL
        if height is None or width is None:
            raise ValueError("SDXL conditioning needs height and width (pixels) for add_time_ids")
        time_ids = make_add_time_ids(len(prompts), height, width, original_size, device=st.hidden.device)
        for i, r in enumerate(rows):
            r["text_embeds"], r["time_ids"] = st.pooled[i], time_ids[i]
    if graph:
        gi = build_graph_inputs([sg if sg is not None else SceneGraph([]) for sg in sgs], mode, tokenizers,
                                text_encoders, hidden_layer=hidden_layer, self_loops=self_loops)
        for r, g in zip(rows, graph_rows(gi, st.input_ids, st.lengths)):
            r.update(g)
    return rows


def collate_condition_rows(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack ``encode_condition_rows`` rows; graph parts padded (``collate_graph_rows``)."""
    out = {k: torch.stack([r[k] for r in rows]) for k in ("text", "lengths", "text_embeds", "time_ids")
           if k in rows[0]}
    if "nodes" in rows[0]:
        out.update(collate_graph_rows(rows))
    return out


def graph_rows(gi: GraphInputs, input_ids: Tensor, lengths: Tensor) -> list[dict[str, Tensor]]:
    """Per graph of ``gi`` (one batch's disjoint union), its SG-encoder inputs and where its outputs go in its
    text: ``nodes`` (n, D), ``preds`` (t, D), ``edges`` (t, 2) local; over the S text positions ``gather`` (the row
    of ``cat([node_out, pred_out])`` of this graph, nodes first) and ``gather_mask``. The graph's tokens must be the
    tokenised text's at those positions; the text's own truncation (75 content tokens at most) applies."""
    S = input_ids.shape[1]
    n_total = gi.x.shape[0]
    rows, n0, t0 = [], 0, 0
    for b, ((n, t), gather, want) in enumerate(zip(gi.sizes, gi.gather, gi.sequence_token_ids)):
        c = max(0, min(len(gather), int(lengths[b]) - 2))
        if input_ids[b, 1:1 + c].tolist() != want[:c]:
            raise RuntimeError(f"graph {b}: graph tokens do not align with the serialised text's tokens")
        g = gather[:c]
        local = torch.where(g < n_total, g - n0, g - n_total - t0 + n)  # batch rows -> this graph's nodes, preds
        g_row, gm = torch.zeros(S, dtype=torch.long), torch.zeros(S)
        g_row[1:1 + c], gm[1:1 + c] = local, 1.0
        rows.append({"nodes": gi.x[n0:n0 + n].float(), "preds": gi.pred[t0:t0 + t].float(),
                     "edges": (gi.edge_index[:, t0:t0 + t].t() - n0).long(), "gather": g_row, "gather_mask": gm})
        n0, t0 = n0 + n, t0 + t
    return rows


def collate_graph_rows(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """``graph_rows`` rows padded into one batch: ``nodes`` (B, N, D), ``preds`` (B, T, D), ``edges`` (B, T, 2),
    ``edge_mask`` (B, T), ``gather`` re-based to the padded pool (predicate rows follow N nodes), ``gather_mask`` and
    ``graph_on`` (B,) = 1 (guidance's zero branch sets 0: the graph off)."""
    B, D = len(rows), rows[0]["nodes"].shape[-1]
    N = max(r["nodes"].shape[0] for r in rows)
    T = max(r["preds"].shape[0] for r in rows)
    nodes, preds = torch.zeros(B, N, D), torch.zeros(B, T, D)
    edges, em = torch.zeros(B, T, 2, dtype=torch.long), torch.zeros(B, T)
    gather = torch.stack([r["gather"] for r in rows])
    for b, r in enumerate(rows):
        n, t = r["nodes"].shape[0], r["preds"].shape[0]
        nodes[b, :n], preds[b, :t], edges[b, :t], em[b, :t] = r["nodes"], r["preds"], r["edges"], 1.0
        gather[b] = torch.where(gather[b] >= n, gather[b] - n + N, gather[b])
    return {"nodes": nodes, "preds": preds, "edges": edges, "edge_mask": em, "gather": gather,
            "gather_mask": torch.stack([r["gather_mask"] for r in rows]), "graph_on": torch.ones(B)}


def graph_residual(sg_encoder: SGEncoder, graph: dict[str, Tensor], like: Tensor) -> Tensor:
    """(B, S, D) like ``like``: the SG encoder's outputs of the padded ``graph`` batch at their text positions,
    zero elsewhere. Padding nodes have no edges, so they change no real node's output."""
    nodes, preds = graph["nodes"], graph["preds"]
    B, N, _ = nodes.shape
    T = preds.shape[1]
    if N == 0:
        return torch.zeros_like(like)
    em = graph["edge_mask"].bool()
    off = (torch.arange(B, device=nodes.device) * N)[:, None, None]
    edge_index = (graph["edges"].long() + off)[em].t().contiguous()
    dt = sg_encoder.dtype
    node_out, pred_out = sg_encoder(nodes.reshape(B * N, -1).to(dt), preds[em].to(dt), edge_index)
    D = node_out.shape[-1]
    pred_full = node_out.new_zeros(B, T, D).masked_scatter(em[..., None], pred_out)
    pool = torch.cat([node_out.view(B, N, D), pred_full], 1)
    res = pool.gather(1, graph["gather"].long()[..., None].expand(-1, -1, D))
    return (res * graph["gather_mask"].to(res.dtype)[..., None]).to(like.dtype)


def fuse_conditioning(text: Tensor, lengths: Tensor, sg_encoder: SGEncoder | None, graph: dict[str, Tensor] | None,
                      pad_with_eos_copies: bool) -> Tensor:
    """The fusion: ``text + alpha_obj * graph_on * residual`` at the graph tokens (when an SG encoder and a padded
    ``graph`` batch are given), then, with ``pad_with_eos_copies``, every position after EOS a copy of the EOS
    state. ``text`` (B, S, D) text-encoder states, ``lengths`` (B,) tokens up to and including EOS."""
    h = text
    if sg_encoder is not None and graph is not None:
        on = graph["graph_on"].to(h.dtype)[:, None, None]
        h = h + sg_encoder.alpha_obj.to(h.dtype) * on * graph_residual(sg_encoder, graph, h)
    if pad_with_eos_copies:
        lengths = lengths.long()
        pos = torch.arange(h.shape[1], device=h.device)
        eos = h[torch.arange(h.shape[0], device=h.device), (lengths - 1).clamp(min=0)]
        h = torch.where((pos[None] >= lengths[:, None])[..., None], eos[:, None], h)
    return h


def unconditional_conditioning(cond: SGConditioning, tokenizers: Sequence, text_encoders: Sequence, *,
                               hidden_layer: HiddenLayer | None = None,
                               pad_with_eos_copies: bool = True) -> SGConditioning:
    """The classifier-free-guidance branch for ``cond``: SDXL zeros (``force_zeros_for_empty_prompt``, as LAION-SG's
    inference gets from ``StableDiffusionXLPipeline``); SD1.5 the empty text, padded like the conditional branch."""
    if cond.pooled_prompt_embeds is not None:
        return cond.zeros_like()
    empty = build_conditioning([SceneGraph([])], None, tokenizers, text_encoders, use_graph=False,
                               hidden_layer=hidden_layer, pad_with_eos_copies=pad_with_eos_copies)
    return empty.to(cond.prompt_embeds.dtype).repeat_interleave(len(cond))

