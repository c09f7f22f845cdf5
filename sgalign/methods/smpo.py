"""SmPO-Diffusion: InPO with ReNoise inversion and a reward-smoothed β_eff = β·γ·(2p − 1).

``faithful=True``: the second ReNoise evaluation is labelled with the source timestep, diffusers-0.20 grid,
ᾱ_0 clean level, and the first pair's t and p for the whole batch (official bs = 1 assumption)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import (Count, Grid, InitialAlpha, Inverter, Label, Method, MethodConfig, MethodContext, MethodOutput,
                   NonNegative, Offset, PairBatch, Positive)
from ._inverted import inverted_loss, provide_inverted
from .functional import PICKSCORE_MAX, PICKSCORE_MIN, preference_metrics, smoothed_preference, smpo_loss
from .inpo import INVERTED_CORRECTED, INVERTED_OFFICIAL
from .registry import register_method


@dataclass
class SmPOConfig(MethodConfig):
    beta: Positive = 5000.0  # SDXL; SD1.5 launcher / paper ablation 2000
    gamma: Positive = 10.0
    s_min: float = PICKSCORE_MIN
    s_max: float = PICKSCORE_MAX
    num_points: Count = 10  # SDXL 10, SD1.5 5 in the official launchers
    renoise_steps: Offset = 1
    inverter: Inverter = "policy"
    label: Label = "target"
    steps_offset: Offset = 1
    order_by_reward: bool = True  # winner = higher score (SmPO orders pairs by the reward, not the human label)
    use_cache: bool = True
    grid: Grid | None = None
    eta: NonNegative | None = None
    per_pair_t: bool | None = None
    initial_alpha: InitialAlpha | None = None
    renoise_label: Label | None = None
    per_pair_prob: bool | None = None
    _corrected = {**INVERTED_CORRECTED, "eta": 0.0, "renoise_label": "target", "per_pair_prob": True}
    _official = {**INVERTED_OFFICIAL, "eta": 0.0, "renoise_label": "source", "per_pair_prob": False}


@register_method("smpo")
class SmPO(Method):
    config_class = SmPOConfig

    def _ordered(self, batch: PairBatch) -> tuple[PairBatch, torch.Tensor]:
        if batch.score_w is None or batch.score_l is None:
            raise ValueError("smpo needs reward scores: PairBatch.score_w and score_l (e.g. PickScore, "
                             "precomputed by the prepare step)")
        sw, sl = batch.score_w.float(), batch.score_l.float()
        if self.config.order_by_reward:
            swap = sl > sw
            s4 = swap.view(-1, 1, 1, 1).to(batch.x0_w.device)  # scores may come from the CPU, latents not
            batch = PairBatch(batch.x0_l.where(s4, batch.x0_w), batch.x0_w.where(s4, batch.x0_l), batch.cond,
                              torch.maximum(sw, sl), torch.minimum(sw, sl),
                              _swap_ids(batch.image_ids_w, batch.image_ids_l, swap, 0),
                              _swap_ids(batch.image_ids_w, batch.image_ids_l, swap, 1))
            sw, sl = batch.score_w, batch.score_l
        return batch, smoothed_preference(sw, sl, self.config.s_min, self.config.s_max)

    def provide(self, batch: PairBatch, ctx: MethodContext) -> dict[str, Any]:
        cfg = self.config.resolve()
        batch, p = self._ordered(batch)
        out = provide_inverted(batch, ctx, cfg, cfg.renoise_steps, cfg.renoise_label)
        out["prob_w"] = p if cfg.per_pair_prob else p[:1].expand_as(p)
        return out

    def loss(self, p: dict[str, Any], batch: PairBatch, ctx: MethodContext) -> MethodOutput:
        c = self.config
        out, m, r = inverted_loss(p, batch, ctx,
                                  lambda a, b, cc, d: smpo_loss(a, b, cc, d, c.beta, p["prob_w"].to(a.device), c.gamma))
        met = preference_metrics(out, m, r)
        met["prob_w"] = p["prob_w"].mean().item()
        return MethodOutput(out.loss.mean(), out.loss.detach(), met, provenance={"cache_used": p["cache_used"]})


def _swap_ids(ids_w, ids_l, swap, side):
    if not ids_w or not ids_l:
        return None
    pairs = [(l, w) if s else (w, l) for w, l, s in zip(ids_w, ids_l, swap.tolist())]
    return [pr[side] for pr in pairs]
