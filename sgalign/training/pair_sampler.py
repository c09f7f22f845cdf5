"""Dynamic win/lose pairs from scored candidates, with exact, skip-free resume.

The compositional task stores K scored candidates per annotation (DATA_AND_METRICS.md, "Candidate dataset").
Pairs are formed at training time: two candidates whose combined rewards differ by more than ``margin``; the
higher-scored one wins. Up to C(K, 2) pairs per annotation.

``DynamicPairSampler`` yields ``PairIndex`` items in a seeded order that depends only on (seed, epoch), so its
state is two integers (epoch, position) and resuming never re-iterates a loader to skip ahead. Under data
parallelism each rank takes every ``num_replicas``-th item of the same global order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np


@dataclass(frozen=True)
class PairIndex:
    annotation: int  # row of the candidate dataset
    win: int  # candidate index within the row
    lose: int
    reward_win: float
    reward_lose: float


def eligible_pairs(rewards: Sequence[float], margin: float = 0.0) -> list[tuple[int, int]]:
    """All (win, lose) candidate index pairs with reward_win - reward_lose > margin, in (i, j) order."""
    out = []
    for i in range(len(rewards)):
        for j in range(i + 1, len(rewards)):
            d = rewards[i] - rewards[j]
            if d > margin:
                out.append((i, j))
            elif -d > margin:
                out.append((j, i))
    return out


class DynamicPairSampler:
    """Seeded, resumable stream of pairs over epochs.

    mode="one-per-annotation": each epoch, every annotation with an eligible pair contributes one pair drawn
    uniformly among its eligible pairs (a fresh draw every epoch: the dynamic pairing). mode="all-pairs": every
    eligible pair once per epoch. Annotations with no eligible pair are counted in ``skipped_annotations``.
    """

    def __init__(self, rewards: Sequence[Sequence[float]], margin: float = 0.0, seed: int = 0,
                 mode: Literal["one-per-annotation", "all-pairs"] = "one-per-annotation", shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if mode not in ("one-per-annotation", "all-pairs"):
            raise ValueError(f"unknown pair mode {mode!r}: use 'one-per-annotation' or 'all-pairs'")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.rewards = [list(map(float, r)) for r in rewards]
        self.margin, self.seed, self.mode, self.shuffle = margin, seed, mode, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self._pairs = [eligible_pairs(r, margin) for r in self.rewards]
        self.skipped_annotations = [a for a, p in enumerate(self._pairs) if not p]
        self.epoch = 0
        self.position = 0  # items of this rank already yielded in the current epoch

    def epoch_items(self, epoch: int) -> list[PairIndex]:
        """The global order of one epoch (identical on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        items: list[tuple[int, int, int]] = []
        for a, pairs in enumerate(self._pairs):
            if not pairs:
                continue
            if self.mode == "all-pairs":
                items += [(a, w, l) for w, l in pairs]
            else:
                w, l = pairs[int(rng.integers(len(pairs)))]
                items.append((a, w, l))
        if self.shuffle:
            items = [items[i] for i in rng.permutation(len(items))]
        # equal length on every rank (pad by wrapping, like torch's DistributedSampler) so ranks stay in step
        if self.num_replicas > 1 and items:
            per_rank = -(-len(items) // self.num_replicas)
            items += items[: per_rank * self.num_replicas - len(items)]
        return [PairIndex(a, w, l, self.rewards[a][w], self.rewards[a][l]) for a, w, l in items]

    def __len__(self) -> int:
        """Items per epoch on this rank."""
        return len(self.epoch_items(0)[self.rank::self.num_replicas])

    def __iter__(self) -> Iterator[PairIndex]:
        """Endless stream; resumes exactly at (epoch, position)."""
        while True:
            mine = self.epoch_items(self.epoch)[self.rank::self.num_replicas]
            if not mine:
                raise ValueError("no annotation has a pair whose rewards differ by more than the margin "
                                 f"({self.margin}); lower the margin or check the rewards")
            while self.position < len(mine):
                item = mine[self.position]
                self.position += 1
                yield item
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
