"""The synthetic shapes world: seeded scene graphs and layouts, renders, and the oracle that reads them back."""
from . import rules
from .oracle import Detection, OracleScene, Phrase, Question, WorldOracle
from .render import render, render_array
from .sampler import (SPLITS, WorldObject, WorldScene, graph_key, img_id_for, invert_predicates, parse_holdout,
                      predicate_blind_hold, sample_scene, sample_split, split_of, split_records)

__all__ = [
    "rules", "Detection", "OracleScene", "Phrase", "Question", "WorldOracle", "render", "render_array", "SPLITS",
    "WorldObject", "WorldScene", "graph_key", "img_id_for", "invert_predicates", "parse_holdout",
    "predicate_blind_hold", "sample_scene", "sample_split", "split_of", "split_records",
]
