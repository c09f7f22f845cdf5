"""The combined reward of Inversion-DPO Eq. 17: r = (1/N) sum_i r_i over N reward components, each in [0, 1].

``CombinedReward`` runs its member rewards on the same batch, keeps every member's components and parts, and adds
the combined value under ``reward``; the provenance lists every member's."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from PIL import Image

from .provenance import Provenance, RewardOutput, check_unit
from .interface import Reward

COMBINED_KEY = "reward"


def combine(components: Mapping[str, float]) -> float:
    """Eq. 17: the plain mean of the components (each checked to lie in [0, 1])."""
    if not components:
        raise ValueError("combine: no reward components")
    vals = [check_unit(k, v) for k, v in components.items()]
    return sum(vals) / len(vals)


class CombinedReward:
    name = COMBINED_KEY

    def __init__(self, rewards: Sequence[Reward]):
        if not rewards:
            raise ValueError("CombinedReward needs at least one reward")
        names = [r.name for r in rewards]
        if len(set(names)) != len(names) or COMBINED_KEY in names:
            raise ValueError(f"CombinedReward: reward names must be distinct and not {COMBINED_KEY!r}: {names}")
        self.rewards = list(rewards)

    def __call__(self, images: Sequence[Image.Image], targets: Sequence[Any]) -> RewardOutput:
        outs = [r(images, targets) for r in self.rewards]
        scores: list[dict[str, float]] = []
        parts: list[dict[str, Any]] = []
        for i in range(len(images)):
            comp: dict[str, float] = {}
            part: dict[str, Any] = {}
            for r, o in zip(self.rewards, outs):
                comp[r.name] = o.scores[i][r.name]
                part.update(o.parts[i])
            scores.append({**comp, COMBINED_KEY: combine(comp)})
            part["reward/components"] = sorted(comp)
            parts.append(part)
        prov: list[Provenance] = [p for o in outs for p in o.provenance]
        return RewardOutput(scores, parts, prov)
