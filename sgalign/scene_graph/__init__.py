"""LAION-SG records, the SceneGraph API, LAION-SG's token graph, and the offline CLIP tokenizer."""
from .clip_tokenizer import CLIP_VOCAB_SIZE, clip_tokenizer
from .graph import Item, Relation, SceneGraph, phrase_of
from .io import Reject, SplitFileError, SplitLoad, load_split, read_split_array, validate_record, write_rejects, write_split
from .schema import LaionSGItem, LaionSGRecord, LaionSGRelation
from .token_graph import TokenGraph, build_token_graph, content_token_ids

__all__ = [
    "CLIP_VOCAB_SIZE", "clip_tokenizer", "Item", "Relation", "SceneGraph", "phrase_of", "Reject", "SplitFileError",
    "SplitLoad", "load_split", "read_split_array", "validate_record", "write_rejects", "write_split", "LaionSGItem",
    "LaionSGRecord", "LaionSGRelation", "TokenGraph", "build_token_graph", "content_token_ids",
]
