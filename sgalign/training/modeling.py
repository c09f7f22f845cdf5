"""The networks the trainer owns: the ε-model wrapper, the once-per-batch conditioning, policy and reference.

Conditioning is one value per batch: a dict of row-indexed tensors built by ``ConditionEncoder`` from the frozen
text encoders (text states, SDXL pooled embeds and time ids; for the compositional task also the SG encoder's
*inputs*: node / predicate features, edges, and where each graph output lands in the text). The same dict is
passed to policy, reference and inversion passes; each ``Denoiser`` applies its own SG encoder (the policy's is
trainable, the reference has a frozen copy), so the SG encoder is part of the model, as in SD1.5-SG / SDXL-SG.
``Denoiser`` applies the one fusion, ``sgalign.models.conditioning.fuse_conditioning`` (``text + alpha_obj * graph``
at the graph tokens, then EOS-copy padding), which ``build_conditioning`` calls too; a test checks that the rows
encoded one at a time here equal ``build_conditioning``'s batch.

Guidance's unconditional branch (``ConditionEncoder.unconditional``) follows the architecture, as
``sgalign.models.conditioning.unconditional_conditioning``: SDXL zeros (``force_zeros_for_empty_prompt``; every
tensor but ``time_ids`` zeroed, ``graph_on`` = 0 switches the graph off, so the embeddings are exactly zero);
SD1.5 the empty text with the graph off, EOS-padded like the conditional branch.
"""
from __future__ import annotations

import copy
import functools
import inspect
import math
from typing import Any, Sequence

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor, nn

from ..diffusion.guidance import Unconditional, zeros_like_cond
from ..models.conditioning import collate_condition_rows, encode_condition_rows, fuse_conditioning


class Denoiser(nn.Module):
    """ε(x_t, t, cond) of a UNet (+ optional SG encoder). The policy instance is what accelerate prepares, so
    every grad-bearing forward runs through the distributed wrapper (never the unwrapped module)."""

    def __init__(self, unet: nn.Module, sg_encoder: nn.Module | None = None, pad_with_eos_copies: bool = False):
        super().__init__()
        self.unet = unet
        self.sg_encoder = sg_encoder
        self.pad_with_eos_copies = pad_with_eos_copies

    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        return self.unet(x_t, t, **self.unet_kwargs(cond)).sample

    def encoder_hidden_states(self, cond: dict[str, Tensor]) -> Tensor:
        graph = cond if self.sg_encoder is not None and "nodes" in cond else None
        return fuse_conditioning(cond["text"], cond["lengths"], self.sg_encoder, graph, self.pad_with_eos_copies)

    def unet_kwargs(self, cond: dict[str, Tensor]) -> dict[str, Any]:
        h = self.encoder_hidden_states(cond)
        kw: dict[str, Any] = {"encoder_hidden_states": h}
        if "text_embeds" in cond:
            kw["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(h.dtype),
                                       "time_ids": cond["time_ids"].to(h.dtype)}
        return kw


class ConditionEncoder:
    """Per-row conditioning from the frozen text encoders (cached per key), collated into one batch dict."""

    def __init__(self, tokenizers: Sequence, text_encoders: Sequence, *, sg_mode: str | None = None,
                 self_loops: bool = True, height: int = 512, width: int = 512, cache: bool = True):
        self.tokenizers, self.text_encoders = list(tokenizers), list(text_encoders)
        self.sg_mode, self.self_loops = sg_mode, self_loops
        self.height, self.width = height, width
        self.cache: dict[Any, dict[str, Tensor]] | None = {} if cache else None
        self._empty: dict[str, Tensor] | None = None

    @torch.no_grad()
    def row(self, prompt: Any, key: Any = None) -> dict[str, Tensor]:
        """One row's conditioning, encoded alone (the row-by-row reference of ``batch``)."""
        if self.cache is not None and key is not None and key in self.cache:
            return self.cache[key]
        return self._store(key, self._rows([prompt])[0])

    def _rows(self, prompts: Sequence[Any]) -> list[dict[str, Tensor]]:
        """Conditioning rows of ``prompts`` (``models.conditioning.encode_condition_rows``), float32 on the CPU."""
        try:
            rows = encode_condition_rows(prompts, self.tokenizers, self.text_encoders, mode=self.sg_mode or "object",
                                         graph=self.sg_mode is not None, self_loops=self.self_loops,
                                         height=self.height, width=self.width)
        except RuntimeError as e:  # name the graphs: a row has no index the user knows
            raise RuntimeError(f"scene graphs {[str(p) for p in prompts]!r}: {e}") from None
        return [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in r.items()} for r in rows]

    def _store(self, key: Any, row: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.cache is not None and key is not None:
            self.cache[key] = row
        return row

    @torch.no_grad()
    def batch(self, prompts: Sequence[Any], keys: Sequence[Any] | None = None) -> dict[str, Tensor]:
        """The batch's conditioning: cached rows reused, every other unique prompt encoded once, all of them in one
        text-encoder call. A caption is identified by its text (rows of one prompt share it), a scene graph by
        its key (two graphs can share a serialised text); a graph without a key is encoded for its row alone. With
        the cache on, each unique prompt goes through the encoders alone (see ``Trainer._latents``)."""
        keys = list(keys or [None] * len(prompts))
        rows: list[dict[str, Tensor] | None] = [None] * len(prompts)
        todo: dict[Any, list[int]] = {}  # unique prompt -> the rows that use it
        for i, (p, k) in enumerate(zip(prompts, keys)):
            if self.cache is not None and k is not None and k in self.cache:
                rows[i] = self.cache[k]
                continue
            ident = ("text", p) if isinstance(p, str) else ("key", k) if k is not None else ("row", i)
            todo.setdefault(ident, []).append(i)
        if todo:
            uniq = list(todo.values())
            # cached: one prompt per call, so a cached row is a pure function of its prompt (a batched call's floats
            # may depend on the batch, i.e. on what was cached before: a resumed run would cache other values)
            enc = ([r for ix in uniq for r in self._rows([prompts[ix[0]]])] if self.cache is not None
                   else self._rows([prompts[ix[0]] for ix in uniq]))
            for idx, row in zip(uniq, enc):
                for i in idx:
                    rows[i] = self._store(keys[i], row)
        return collate_condition_rows(rows)  # type: ignore[arg-type]

    def batch_rows(self, prompts: Sequence[Any], keys: Sequence[Any] | None = None) -> dict[str, Tensor]:
        """``batch`` row by row, each text encoded alone (the reference path of the equality tests)."""
        return collate_condition_rows([self.row(p, k) for p, k in zip(prompts, keys or [None] * len(prompts))])

    @property
    def sdxl(self) -> bool:
        return len(self.text_encoders) > 1  # one encoder => SD1.5, two => SDXL (as models.build_conditioning)

    def unconditional(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        """Guidance's unconditional branch of a batch ``cond`` (same keys and shapes, so both stack in one call):
        SDXL zeros; SD1.5 the empty text's states (the graph off)."""
        u = zeros_like_cond(cond)
        if self.sdxl:
            return u
        e = self._empty_text()
        B = cond["text"].shape[0]
        u["text"] = e["text"].to(cond["text"].device, cond["text"].dtype)[None].expand(B, -1, -1)
        u["lengths"] = e["lengths"].to(cond["lengths"].device, cond["lengths"].dtype).expand(B)
        return u

    @torch.no_grad()
    def _empty_text(self) -> dict[str, Tensor]:
        if self._empty is None:
            self._empty = {k: v for k, v in self._rows([""])[0].items() if k in ("text", "lengths")}
        return self._empty

    def unconditional_branch(self) -> Unconditional:
        return Unconditional(self.unconditional, "zeros" if self.sdxl else "empty-text")


@functools.lru_cache(maxsize=None)
def _signed_processor_class():
    class SignedAttnProcessor2_0(AttnProcessor2_0):
        """``AttnProcessor2_0`` whose ``__call__`` carries its signature: diffusers' ``Attention.forward`` calls
        ``inspect.signature(processor.__call__)`` on every forward (~0.6 ms each, 8 % of an SmPO step on the world
        SD1.5); a precomputed ``__signature__`` answers at once. Same computation."""

        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    SignedAttnProcessor2_0.__call__.__signature__ = inspect.signature(AttnProcessor2_0.__call__)
    return AttnProcessor2_0, SignedAttnProcessor2_0


def sign_attention_processors(module: nn.Module) -> nn.Module:
    """Swap every plain ``AttnProcessor2_0`` in ``module`` for the signed subclass (others are left alone)."""
    plain, signed = _signed_processor_class()
    for m in module.modules():
        if type(getattr(m, "processor", None)) is plain:
            m.processor = signed()
    return module


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def add_lora(unet: nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str]) -> None:
    """peft LoRA adapters on the UNet (B = 0 at init, so the policy starts equal to the base)."""
    from peft import LoraConfig  # heavy (peft loads torchvision, ~2 s): only with LoRA
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                                target_modules=target_modules))


def frozen_copy(module: nn.Module | None) -> nn.Module | None:
    return None if module is None else freeze(copy.deepcopy(module))


def weight_drift(policy: nn.Module, reference: nn.Module) -> float:
    """‖θ − θ_ref‖ / ‖θ_ref‖ over the policy's trainable tensors that the reference holds under the same name: how
    far alignment moved the weights (a diagnostic: a method that changes nothing shows ~0). NaN when none match
    (LoRA: the reference is the policy itself with adapters off)."""
    ref = dict(reference.named_parameters())
    num = den = 0.0
    for name, p in policy.named_parameters():
        r = ref.get(name)
        if not p.requires_grad or r is None or r is p or r.shape != p.shape:
            continue
        num += float((p.detach().float() - r.detach().float()).pow(2).sum())
        den += float(r.detach().float().pow(2).sum())
    return math.sqrt(num / den) if den > 0 else math.nan
