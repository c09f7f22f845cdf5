"""``--source shapes``: world annotations sampled here (``sgalign.world.sample_split``), then the same candidate
build as LAION-SG (``laion_sg.build_candidates``). Records are ``split_records`` (img_id = split code + index), so
the annotations of a world build are fixed by ``world.{split, n, seed, holdout}``."""
from __future__ import annotations

from sgalign.world import sample_split, split_records

from .config import WorldSection
from .laion_sg import AnnotationPlan, dedupe_records


def plan_world(world: WorldSection) -> AnnotationPlan:
    scenes = sample_split(world.split, world.n, seed=world.seed, holdout=world.holdout)
    records = split_records(world.split, scenes)
    return dedupe_records(records, list(range(len(records))), [],
                   {"kind": "shapes", **world.model_dump()})
