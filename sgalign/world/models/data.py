"""Render batches drawn on the fly from the seeded world sampler, and corrupted captions for composition tests.

Nothing is stored on disk: batch ``step`` of a stream is drawn from its own generator
``SeedSequence([seed, split code, step])``, so a training run is reproducible from (seed, step) and restartable
at any step. Training streams keep only graphs hashed to their split (``sampler.split_of``), so no test graph is
ever trained on. Evaluation sets are the sampler's fixed, distinct splits (``sample_split``).

Captions are the serialised graph, ``SceneGraph.serialize()`` ("s p o " per relation, then isolated items), the
text LAION-SG feeds its text encoders. Corruptions make a caption that is *false* for the image:

* ``colour``: one object's colour changed to one that gives a phrase absent from the image;
* ``relation``: one relation's predicate changed to a predicate that does not hold between its two objects;
* ``swap``: one relation's subject and object exchanged ("A left of B" -> "B left of A"; always false).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np
import torch

from .. import rules
from ..render import render_array
from ..sampler import SPLIT_CODE, SPLITS, WorldScene, parse_holdout, sample_scene, split_of

CORRUPTIONS: tuple[str, ...] = ("colour", "relation", "swap")


def caption(scene: WorldScene) -> str:
    """The text world-CLIP reads: LAION-SG's serialised graph."""
    return scene.graph().serialize()


def scene_stream_batch(split: str, seed: int, step: int, batch: int,
                       holdout: Sequence[str] = ()) -> list[WorldScene]:
    """Batch ``step`` of a seeded stream of ``split`` scenes (graphs may repeat across batches, never across splits)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    held = parse_holdout(holdout)
    combos = [(c, s) for c in rules.COLOURS for s in rules.SHAPES if split == "test" or (c, s) not in held]
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODE[split], step]))
    return [sample_scene(rng, combos, lambda key: split_of(key) == split) for _ in range(batch)]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def render_stream(split: str, seed: int, batch: int, start: int = 0,
                  holdout: Sequence[str] = ()) -> Iterator[tuple[list[WorldScene], torch.Tensor]]:
    """Endless ``(scenes, images [B, 3, 64, 64] in [0, 1])`` batches from step ``start``."""
    step = start
    while True:
        scenes = scene_stream_batch(split, seed, step, batch, holdout)
        yield scenes, to_tensor(render_array(scenes))
        step += 1


def corrupt(scene: WorldScene, kind: str, rng: np.random.Generator) -> WorldScene:
    """A copy of ``scene`` whose graph is false for the scene's render (see module docstring)."""
    objs, rels = list(scene.objects), list(scene.relations)
    if kind == "colour":
        present = {o.phrase for o in objs}
        i = int(rng.integers(len(objs)))
        choices = [c for c in rules.COLOURS if f"{c} {objs[i].size} {objs[i].shape}" not in present]
        objs[i] = dataclasses.replace(objs[i], colour=choices[int(rng.integers(len(choices)))])
    elif kind == "relation":
        holding = scene.holding_relations()
        k = int(rng.integers(len(rels)))
        s, p, o = rels[k]
        choices = [q for q in rules.PREDICATES if (s, q, o) not in holding]
        rels[k] = (s, choices[int(rng.integers(len(choices)))], o)
    elif kind == "swap":
        k = int(rng.integers(len(rels)))
        s, p, o = rels[k]
        rels[k] = (o, p, s)
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
    return WorldScene(tuple(objs), tuple(rels))
