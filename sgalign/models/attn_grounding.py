"""Grounding of a UNet's cross-attention in object boxes: an auxiliary training loss (TokenCompose's token loss).

A UNet learns *what* to draw from its text well before it learns *where*: a world base that draws its entities can
still draw the same layout whatever its predicates say (docs/RESULTS.md). Where an object goes is decided at high
noise, where x_t holds no layout yet, so it can only come from the conditioning: the object's tokens (the phrase
states, plus the SG path's residual that carries the graph) must tell the cross-attention where. This loss asks for
that directly. For every object of a training image, the cross-attention mass of its phrase tokens should fall
inside its box:

    L = mean over objects and cross-attention layers of (1 - sum_{p in box} A_o(p) / sum_p A_o(p))^2

with ``A_o`` the attention of the object's tokens (mean over heads and tokens) at each query position (Wang et al.
2024, "TokenCompose", their token loss). The boxes are soft masks: a cell's value is the fraction of it the box
covers. The loss reaches the UNet's queries and keys and, through the keys, the text and SG encoders.

``capture_cross_attention`` records the maps without changing the forward: the capture processor computes the
attention probabilities a second time beside the unchanged default processor, so the UNet's output (and its
epsilon loss) is bit-identical with or without it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..scene_graph import SceneGraph
from .graph_inputs import GraphInputs


class _CaptureCrossAttention:
    """Delegates the forward to ``inner`` and appends the cross-attention probabilities ``(B * heads, HW, S)``."""

    def __init__(self, inner, store: list[Tensor], detach_context: bool = False) -> None:
        self.inner, self.store, self.detach_context = inner, store, detach_context

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs) -> Tensor:
        if encoder_hidden_states is not None:
            if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
                # a deliberate limit, not a gap: the maps are recomputed here, and only this form is recomputed
                raise NotImplementedError("capture_cross_attention: this cross-attention has a spatial or group norm "
                                          "or 4-D input; only UNet2DConditionModel's transformer-block form (3-D "
                                          "input, no norms) is captured")
            ctx = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            q = attn.head_to_batch_dim(attn.to_q(hidden_states))
            k = attn.head_to_batch_dim(attn.to_k(ctx.detach() if self.detach_context else ctx))
            self.store.append(attn.get_attention_scores(q, k, None))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


@contextlib.contextmanager
def capture_cross_attention(unet, detach_context: bool = False) -> Iterator[list[Tensor]]:
    """Within the block, every cross-attention call of ``unet`` appends its probabilities to the yielded list; the
    UNet's own processors are restored on exit. ``detach_context``: the maps' keys come from detached conditioning
    states, so a loss on the maps does not reach the encoders through the keys (the forward is unchanged)."""
    before = dict(unet.attn_processors)
    store: list[Tensor] = []
    unet.set_attn_processor({name: (_CaptureCrossAttention(proc, store, detach_context)
                                    if name.endswith("attn2.processor") else proc) for name, proc in before.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(before)


def object_token_weights(gi: GraphInputs, seq_len: int) -> Tensor:
    """(B, O, S): for graph b's object (node) o, ``1 / n_tokens`` at the text positions of its phrase tokens (the SG
    path's gather: position 1 + i holds the i-th graph token, after BOS), 0 elsewhere; O the largest node count."""
    n_total = int(gi.x.shape[0])
    O = max(n for n, _ in gi.sizes)
    w = torch.zeros(len(gi.sizes), O, seq_len)
    n0 = 0
    for b, ((n, _), gather) in enumerate(zip(gi.sizes, gi.gather)):
        g = torch.as_tensor(gather)[: seq_len - 2]
        pos = torch.nonzero(g < n_total)[:, 0]
        w[b, (g[pos] - n0).long(), pos + 1] = 1.0
        n0 += n
    return w / w.sum(-1, keepdim=True).clamp(min=1.0)


def box_canvas(graphs: Sequence[SceneGraph], boxes: Sequence[dict[int, Sequence[float]]], canvas: int,
               n_objects: int) -> Tensor:
    """(B, O, canvas, canvas) 0/1 box masks in node order (``to_pyg().item_ids``, as ``object_token_weights``); rows
    of absent objects are 0. Built once per batch; ``pool_masks`` gives each attention resolution's."""
    full = torch.zeros(len(graphs), n_objects, canvas, canvas)
    for b, (sg, bx) in enumerate(zip(graphs, boxes)):
        for o, item_id in enumerate(sg.to_pyg().item_ids):
            x0, y0, x1, y1 = (int(round(v)) for v in bx[int(item_id)])
            full[b, o, max(y0, 0):min(y1, canvas), max(x0, 0):min(x1, canvas)] = 1.0
    return full


def pool_masks(full: Tensor, res: int) -> Tensor:
    """(B, O, res * res) soft masks: the fraction of each of a res x res grid's cells the box covers."""
    return F.adaptive_avg_pool2d(full, res).flatten(2)


def box_masks(graphs: Sequence[SceneGraph], boxes: Sequence[dict[int, Sequence[float]]], canvas: int,
              n_objects: int, res: int) -> Tensor:
    """``pool_masks(box_canvas(...), res)``: one resolution's soft masks."""
    return pool_masks(box_canvas(graphs, boxes, canvas, n_objects), res)


def inside_shares(maps: Sequence[Tensor], token_w: Tensor, masks: dict[int, Tensor]) -> Tensor:
    """(L, B, O): per captured map ((B * heads, HW, S) each), the share of each object's attention mass (heads and its
    tokens averaged; ``token_w`` (B, O, S) from ``object_token_weights``) inside its box (``masks[res]`` (B, O,
    res * res) from ``box_masks``, one per map resolution)."""
    B, out = token_w.shape[0], []
    for p in maps:
        hw = p.shape[1]
        a = p.view(B, -1, hw, p.shape[-1]).float().mean(1)  # (B, HW, S), heads averaged
        a_obj = torch.einsum("bps,bos->bop", a, token_w.to(a))  # (B, O, HW)
        out.append((a_obj * masks[math.isqrt(hw)].to(a)).sum(-1) / a_obj.sum(-1).clamp(min=1e-8))
    return torch.stack(out)


def grounding_loss(maps: Sequence[Tensor], token_w: Tensor, masks: dict[int, Tensor], rows: Tensor) -> Tensor:
    """The token loss over the captured ``maps`` of the ``rows`` (B,) bool that count (rows whose conditioning is the
    graph's text, not the empty prompt): mean over layers and present objects of (1 - ``inside_shares``)^2."""
    present = token_w.sum(-1) > 0  # (B, O)
    keep = present & rows[:, None].to(present.device)
    if not maps or not bool(keep.any()):
        return token_w.new_zeros(())
    return ((1.0 - inside_shares(maps, token_w, masks)) ** 2)[:, keep].mean()
