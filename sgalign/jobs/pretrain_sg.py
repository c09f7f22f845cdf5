"""The SG pre-training command's work (``scripts/pretrain_sg.py``): what ``training.pretrain_sg`` trains on and
starts from, resolved here, in the command layer, and handed to its ``train``.

* ``data.source: world``: ``WorldRenderDataset``, shapes-world renders drawn on the fly (``data.source: laion`` is
  the trainer's own ``build_dataset``);
* ``model.tiny``: RANDOM-INIT tiny components (``pipelines.tiny``) as the starting set that the named parts replace.

So the trainer imports neither the world nor the tiny factory (``tests/test_layers.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..scene_graph import Reject, SceneGraph
from ..training.pretrain_sg import DataConfig, ModelConfig, PretrainConfig, build_components, build_dataset, train
from ..world import rules
from ..world.render import render
from ..world.sampler import SPLIT_CODE, parse_holdout, sample_scene, split_of


class WorldRenderDataset(Dataset):
    """Shapes-world renders drawn on the fly: index ``i`` -> a scene from ``SeedSequence([seed, split code, i])``
    restricted to graphs hashed to ``split`` (so no test graph is trained on), rendered at 64 x 64."""

    def __init__(self, split: str = "train", size: int = 1_000_000, seed: int = 0, resolution: int = 64,
                 holdout: Sequence[str] = ()) -> None:
        held = parse_holdout(holdout)
        self.combos = [(c, s) for c in rules.COLOURS for s in rules.SHAPES if split == "test" or (c, s) not in held]
        self.split, self.size, self.seed, self.resolution = split, size, seed, resolution
        self.code = SPLIT_CODE[split]
        self.rejects: list[Reject] = []

    def __len__(self) -> int:
        return self.size

    def scene(self, i: int):
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.code, int(i)]))
        return sample_scene(rng, self.combos, lambda key: split_of(key) == self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, SceneGraph, tuple[int, int]]:
        sc = self.scene(i)
        im = render(sc)
        if im.size != (self.resolution, self.resolution):
            im = im.resize((self.resolution, self.resolution), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return x, sc.graph(), (64, 64)


def pretrain_dataset(cfg: DataConfig) -> Dataset:
    """The rows of ``data``: the world's renders, or the LAION-SG split (``training.pretrain_sg.build_dataset``)."""
    if cfg.source == "world":
        return WorldRenderDataset(cfg.world_split, cfg.world_size, cfg.world_seed, cfg.resolution, cfg.holdout)
    return build_dataset(cfg)


def pretrain_components(cfg: ModelConfig, seed: int = 0) -> dict[str, Any]:
    """The components of ``model`` (``training.pretrain_sg.build_components``), ``model.tiny``'s tiny random-init
    set as the start that the named parts replace."""
    start = None
    if cfg.tiny:
        from ..pipelines.tiny import tiny_components  # heavy (torchvision, peft: ~2 s): only for model.tiny

        start = tiny_components(cfg.tiny, seed=seed)
    return build_components(cfg, seed, start=start)


def run_pretrain_sg(cfg: PretrainConfig, *, command: str | None = None, log=print) -> Path:
    """``scripts/pretrain_sg.py``'s work: the dataset and components of ``cfg``, then ``training.pretrain_sg.train``;
    returns the output folder."""
    return train(cfg, dataset=pretrain_dataset(cfg.data), components=pretrain_components(cfg.model, cfg.train.seed),
                 command=command, log=log)
