"""The losses as pure functions of per-pair (or per-pair × point) mean squared errors.

Conventions (METHODS.md): m(a − b) is the mean over all latent elements; the ½ factor sits inside the sigmoid
argument, so β values transfer from the official scripts; implicit accuracy = argument > 0. Every loss returns
per-pair values; the trainer averages (``preference_metrics``: the step's logged means of those values).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

PICKSCORE_MIN = 0.11543526500463486  # SmPO official normalisation constants for PickScore
PICKSCORE_MAX = 0.28201571106910706


class PreferenceLoss(NamedTuple):
    loss: Tensor  # (B,) −log σ(logits)
    implicit_acc: Tensor  # (B,) 1.0 where logits > 0
    logits: Tensor  # (B,) the sigmoid argument


def _pref(logits: Tensor) -> PreferenceLoss:
    return PreferenceLoss(-F.logsigmoid(logits), (logits > 0).to(logits.dtype), logits)


def preference_metrics(out: PreferenceLoss, model_mse: Tensor, ref_mse: Tensor) -> dict[str, float]:
    """What a DPO-family step logs: implicit accuracy, and the policy's and the reference's mean MSE over the
    stacked winners and losers (Diffusion-DPO, InPO, SmPO report the same three numbers)."""
    return {"implicit_acc": out.implicit_acc.mean().item(), "model_mse": model_mse.mean().item(),
            "ref_mse": ref_mse.mean().item()}


def per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """m(pred − target) per leading index: mean over the trailing C×H×W (float32 at least)."""
    d = (pred.float() - target.float()) ** 2
    return d.flatten(pred.dim() - 3).mean(-1)


def diffusion_dpo_loss(model_w: Tensor, model_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> PreferenceLoss:
    """L = −log σ(−(β/2)((m_θʷ − m_θˡ) − (m_refʷ − m_refˡ))) per pair."""
    return _pref(-0.5 * beta * ((model_w - model_l) - (ref_w - ref_l)))


def smpo_loss(model_w: Tensor, model_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float, prob_w: Tensor,
              gamma: float = 10.0) -> PreferenceLoss:
    """Diffusion-DPO with β_eff = β·γ·(2p − 1): equal scores (p = ½) give zero loss gradient."""
    beta_eff = beta * gamma * (2 * prob_w - 1)
    return _pref(-0.5 * beta_eff * ((model_w - model_l) - (ref_w - ref_l)))


def inversion_dpo_loss(diff_w: Tensor, diff_l: Tensor, step_weights: Tensor, beta: float) -> PreferenceLoss:
    """Inversion-DPO (paper Eq. 16 / S25, official code): diff_* (B, P) = m(ε_θ(g) − ε_ref(g)) per pair × point,
    D = Σ_g w_g diff(g); L = −log σ(+(β/2)(Dʷ − Dˡ)/P). Note the + sign; zero loss gradient at θ = θ_ref."""
    w = step_weights.to(diff_w.dtype)
    P = diff_w.shape[-1]
    return _pref(0.5 * beta * ((w * diff_w).sum(-1) - (w * diff_l).sum(-1)) / P)


def smoothed_preference(score_w: Tensor, score_l: Tensor, s_min: float = PICKSCORE_MIN,
                        s_max: float = PICKSCORE_MAX) -> Tensor:
    """SmPO: ŝ = (s − s_min)/(s_max − s_min), p = e^ŝʷ/(e^ŝʷ + e^ŝˡ)."""
    if s_max <= s_min:
        raise ValueError(f"s_max ({s_max}) must exceed s_min ({s_min})")
    hw, hl = (score_w - s_min) / (s_max - s_min), (score_l - s_min) / (s_max - s_min)
    return torch.sigmoid(hw - hl)


def inpo_target(x_t: Tensor, x0: Tensor, alpha_bar_t: Tensor) -> Tensor:
    """τ = (x_t − √ᾱ_t x₀)/√(1 − ᾱ_t), the noise implied by an inverted latent (ᾱ per sample or scalar)."""
    a = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    if a.dim() == 1:
        a = a.view(-1, *([1] * (x_t.dim() - 1)))
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def inversion_step_weights(alpha_bar: Tensor) -> Tensor:
    """Inversion-DPO's w_g = (1 − ᾱ_g)/(2(1 − ᾱ_g)ᾱ_g) = 1/(2ᾱ_g)."""
    return 1.0 / (2.0 * alpha_bar)


def sft_loss(model_err: Tensor) -> Tensor:
    """Standard ε-prediction loss per sample: m(ε_θ − ε) is already the loss."""
    return model_err


__all__ = ["PICKSCORE_MAX", "PICKSCORE_MIN", "PreferenceLoss", "diffusion_dpo_loss", "inpo_target",
           "inversion_dpo_loss", "inversion_step_weights", "per_sample_mse", "sft_loss", "smoothed_preference",
           "smpo_loss"]
