"""Text-encoder hidden states as SD1.5 and SDXL use them, batched.

* SD1.5: one ``CLIPTextModel``; the final hidden state (after the last layer norm), 768-d.
* SDXL (and LAION-SG's SDXL-SG, reference §2.3): ``CLIPTextModel`` + ``CLIPTextModelWithProjection``; the
  *penultimate* hidden states of both, concatenated (768 + 1280 = 2048); pooled = encoder 2's projected
  ``text_embeds`` (1280).

LAION-SG encodes one string at a time with ``padding=False``; we pad a batch instead. CLIP's text encoder is causal,
so the states at real-token positions do not depend on what follows (equal up to float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

HiddenLayer = Literal["last", "penultimate"]


@dataclass
class TextStates:
    hidden: Tensor  # (B, S, D) states for the padded token sequences
    lengths: Tensor  # (B,) real tokens per text, BOS and EOS included
    input_ids: Tensor  # (B, S) ids of the first tokenizer
    pooled: Tensor | None  # (B, P) projected pooled embedding of the last encoder (SDXL), else None


def default_hidden_layer(num_encoders: int) -> HiddenLayer:
    return "last" if num_encoders == 1 else "penultimate"


def encode_texts(texts: Sequence[str], tokenizers: Sequence, text_encoders: Sequence, *,
                 hidden_layer: HiddenLayer | None = None, padding: str = "max_length") -> TextStates:
    """Encode ``texts`` with every (tokenizer, encoder) pair; hidden states concatenated on the feature axis.

    ``padding="max_length"`` pads to the tokenizer's ``model_max_length`` (77), as SD/SDXL prompt encoding does;
    ``"longest"`` is cheaper when only real-token states are used."""
    if len(tokenizers) != len(text_encoders) or not tokenizers:
        raise ValueError(f"need one tokenizer per text encoder, got {len(tokenizers)} and {len(text_encoders)}")
    hidden_layer = hidden_layer or default_hidden_layer(len(text_encoders))
    texts = list(texts)
    states, pooled, ids0, lengths = [], None, None, None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        tok = tokenizer(texts, padding=padding, truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt", return_attention_mask=True)
        n = tok["attention_mask"].sum(1)
        if lengths is None:
            ids0, lengths = tok["input_ids"], n
        elif not torch.equal(n, lengths) or not torch.equal(
                _real(tok["input_ids"], n), _real(ids0[:, :tok["input_ids"].shape[1]], n)):
            raise ValueError("the tokenizers disagree on the token sequence (SDXL's two CLIP tokenizers must share "
                             "the CLIP vocabulary)")
        out = encoder(tok["input_ids"].to(encoder.device), output_hidden_states=True)
        states.append(out.hidden_states[-2] if hidden_layer == "penultimate" else out.last_hidden_state)
        pooled = getattr(out, "text_embeds", None)  # the last encoder's projection wins, as in SDXL
    return TextStates(torch.cat(states, dim=-1), lengths.to(states[0].device), ids0, pooled)


def _real(ids: Tensor, lengths: Tensor) -> Tensor:
    mask = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None].to(ids.device)
    return ids.masked_fill(~mask, -1)
