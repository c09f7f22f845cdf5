"""Counting ε-network (UNet) forwards: one count per latent row evaluated, split by grad / no-grad."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

EpsFn = Callable[[Tensor, Tensor, Any], Tensor]


@dataclass
class ForwardCounter:
    """Wraps ``eps_fn(x_t, t, cond) -> eps``; a call on B latents counts B forwards (a CFG call that evaluates
    two branches counts 2B, because guidance wraps the counted function)."""

    eps_fn: EpsFn
    name: str = "unet"
    grad: int = 0
    no_grad: int = 0

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        out = self.eps_fn(x_t, t, cond)
        if torch.is_grad_enabled() and out.requires_grad:
            self.grad += x_t.shape[0]
        else:
            self.no_grad += x_t.shape[0]
        return out

    def reset(self) -> None:
        self.grad = self.no_grad = 0


@dataclass
class ForwardStats:
    """UNet forwards per training pair, by network and grad mode (F = one forward of one latent)."""

    per_pair: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, counters: list[ForwardCounter], num_pairs: int) -> "ForwardStats":
        d: dict[str, float] = {}
        for c in counters:
            d[f"{c.name}_no_grad"] = d.get(f"{c.name}_no_grad", 0.0) + c.no_grad / num_pairs
            d[f"{c.name}_grad"] = d.get(f"{c.name}_grad", 0.0) + c.grad / num_pairs
        return cls(d)

    @property
    def no_grad(self) -> float:
        return sum(v for k, v in self.per_pair.items() if k.endswith("_no_grad"))

    @property
    def grad(self) -> float:
        return sum(v for k, v in self.per_pair.items() if k.endswith("_grad") and not k.endswith("_no_grad"))

    def as_dict(self) -> dict[str, float]:
        return {**self.per_pair, "no_grad": self.no_grad, "grad": self.grad}
