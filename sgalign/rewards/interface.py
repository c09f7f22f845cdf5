"""The reward protocol: anything that scores a batch of (image, target) and returns a ``RewardOutput``.

A target is a ``SceneGraph`` or a prompt string (or, for DPG, a question set / item id of a DSG file).
``reward.name`` is the key of its main component in ``RewardOutput.scores``; that value lies in [0, 1] and is what
``CombinedReward`` averages (Inversion-DPO Eq. 17)."""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from PIL import Image

from .provenance import RewardOutput


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, images: Sequence[Image.Image], targets: Sequence[Any]) -> RewardOutput: ...
