"""The conditioning value of SD1.5-SG / SDXL-SG and the one function that builds it.

``SGConditioning`` is what the UNet is called with; the trainer passes the same value to policy, reference and
inversion passes (``unet(x, t, **cond.unet_kwargs())``). ``build_conditioning`` makes it from scene graphs:

1. serialise each graph (LAION-SG's "s p o " ... "item " text) and encode it: ``hidden (B, 77, D)``, ``pooled``;
2. (``use_graph``) run the SG encoder on the graph inputs and add ``alpha_obj * g`` at the content positions of
   the graph's tokens (at most 75, the text's own truncation);
3. pad after EOS with copies of the EOS vector (``pad_with_eos_copies``, LAION-SG) or keep the padding states;
4. SDXL: pooled = the serialised text's pooled embedding (the graph never touches it) and ``add_time_ids``.

With ``alpha_obj == 0`` the result equals the text-only conditioning exactly (``use_graph=False``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch
from torch import Tensor

from ..scene_graph import SceneGraph
from .graph_inputs import as_scene_graphs, build_graph_inputs
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
                       use_graph: bool = True, height: int | None = None, width: int | None = None,
                       original_size: tuple[int, int] | None = None, hidden_layer: HiddenLayer | None = None,
                       pad_with_eos_copies: bool | None = None) -> SGConditioning:
    """Conditioning of ``graphs`` (SceneGraphs or LAION-SG records). One encoder => SD1.5, two => SDXL.

    ``use_graph=False`` (or ``sg_encoder=None``) gives the text-only conditioning of the serialised graphs.
    ``height``/``width`` (pixels) are needed for SDXL's time ids."""
    sgs = as_scene_graphs(graphs)
    cfg = sg_encoder.config if sg_encoder is not None else None
    mode = cfg.mode if cfg is not None else "object"
    if pad_with_eos_copies is None:
        pad_with_eos_copies = cfg.pad_with_eos_copies if cfg is not None else True
    texts = [sg.serialize(faithful=mode == "faithful") for sg in sgs]
    st = encode_texts(texts, tokenizers, text_encoders, hidden_layer=hidden_layer)
    hidden, lengths = st.hidden, st.lengths
    if cfg is not None and hidden.shape[-1] != cfg.text_dim:
        raise ValueError(f"SG encoder text_dim={cfg.text_dim} but the text encoders give {hidden.shape[-1]}-d states")

    if use_graph and sg_encoder is not None:
        hidden = hidden + sg_encoder.alpha_obj.to(hidden.dtype) * _graph_residual(
            sgs, sg_encoder, tokenizers, text_encoders, st.input_ids, lengths, hidden, hidden_layer)
    if pad_with_eos_copies:
        pos = torch.arange(hidden.shape[1], device=hidden.device)
        eos = hidden[torch.arange(len(sgs), device=hidden.device), lengths - 1]  # (B, D)
        hidden = torch.where((pos[None] >= lengths[:, None])[..., None], eos[:, None], hidden)

    cond = SGConditioning(hidden)
    if st.pooled is not None:  # SDXL
        if height is None or width is None:
            raise ValueError("SDXL conditioning needs height and width (pixels) for add_time_ids")
        cond.pooled_prompt_embeds = st.pooled
        cond.add_time_ids = make_add_time_ids(len(sgs), height, width, original_size, device=hidden.device)
    return cond


def _graph_residual(sgs, sg_encoder: SGEncoder, tokenizers, text_encoders, input_ids: Tensor, lengths: Tensor,
                    hidden: Tensor, hidden_layer) -> Tensor:
    """(B, S, D): graph outputs at the content positions of the graph tokens, zero elsewhere."""
    cfg = sg_encoder.config
    gi = build_graph_inputs(sgs, cfg.mode, tokenizers, text_encoders, hidden_layer=hidden_layer,
                            self_loops=cfg.self_loops)
    residual = torch.zeros_like(hidden)
    if gi.num_nodes == 0:
        return residual
    dtype = sg_encoder.dtype
    node_out, pred_out = sg_encoder(gi.x.to(dtype), gi.pred.to(dtype), gi.edge_index)
    pool = torch.cat([node_out, pred_out]).to(hidden.dtype)
    rows, cols, src = [], [], []
    for b, (gather, want) in enumerate(zip(gi.gather, gi.sequence_token_ids)):
        c = min(len(gather), int(lengths[b]) - 2)  # the text's own truncation (75 content tokens at most)
        have = input_ids[b, 1:1 + c].tolist()
        if have != want[:c]:
            raise RuntimeError(f"graph {b}: graph tokens do not align with the serialised text's tokens")
        rows.append(torch.full((c,), b, dtype=torch.long))
        cols.append(torch.arange(1, 1 + c))
        src.append(gather[:c])
    rows, cols, src = (torch.cat(t).to(hidden.device) for t in (rows, cols, src))
    residual[rows, cols] = pool[src]
    return residual


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

