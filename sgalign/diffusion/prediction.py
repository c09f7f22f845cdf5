"""What a denoiser predicts (``prediction_type``, diffusers' names) and the conversions the rest of the code needs.

* ``epsilon``: the noise. ``v_prediction``: v = √ᾱ ε − √(1−ᾱ) x₀ (SD2.x, zero-terminal-SNR bases).
* ``as_epsilon``: a model's function as an ε function, ε = √ᾱ v + √(1−ᾱ) x_t, exact for every ᾱ (at ᾱ = 0, the
  zero-terminal-SNR end, ε = x_t). Samplers and inversions work on this ε contract whatever the model predicts.
* ``prediction_target``: the regression target in the model's own output space, from the ε that noised x₀ (or the
  noise implied by an inverted latent). A loss on it is the model's own loss; an ε-space loss of a v model would
  weight each t by ᾱ_t, and give the layout-deciding t near T almost no weight.

ᾱ is taken at the timestep *told to the network* (what its output refers to); ``** 0.5`` as diffusers'
``get_velocity``, so a v target here equals diffusers' bit for bit.
"""
from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor

from .counter import EpsFn
from .inversion import broadcast_like

Prediction = Literal["epsilon", "v_prediction"]


def check_prediction(kind: str) -> Prediction:
    if kind not in get_args(Prediction):
        raise ValueError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction)")
    return kind  # type: ignore[return-value]


def _roots(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    a = alphas_cumprod.to(device=like.device, dtype=like.dtype)[t.to(like.device).long()]
    return broadcast_like(a ** 0.5, like), broadcast_like((1 - a) ** 0.5, like)


def prediction_target(eps: Tensor, x0: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction: Prediction) -> Tensor:
    """The target of a model predicting ``prediction`` at x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε."""
    if check_prediction(prediction) == "epsilon":
        return eps
    sa, sb = _roots(alphas_cumprod, t, eps)
    return sa * eps - sb * x0


def epsilon_from_output(out: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction: Prediction) -> Tensor:
    """The ε a model's output ``out`` at (x_t, t) stands for."""
    if check_prediction(prediction) == "epsilon":
        return out
    sa, sb = _roots(alphas_cumprod, t, x_t)
    return sa * out + sb * x_t.to(out.dtype)


def as_epsilon(fn: EpsFn, alphas_cumprod: Tensor, prediction: Prediction) -> EpsFn:
    """``fn`` (the model's own output) as an ε function; ``fn`` itself for an ε model."""
    if check_prediction(prediction) == "epsilon":
        return fn

    def eps_fn(x_t, t, cond):
        return epsilon_from_output(fn(x_t, t, cond), x_t, t, alphas_cumprod, prediction)

    return eps_fn
