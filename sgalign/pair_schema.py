"""The on-disk formats of the preference datasets, shared by their writers (``data_builders``) and their reader
(``training.data``): the candidate rows' columns and ``datasets`` features, the Pick-a-Pic v2 columns, and the codec
of their image bytes. Below both, so neither imports the other for it."""
from __future__ import annotations

import io

from PIL import Image

CANDIDATE_COLUMNS = ("annotation", "candidates", "seeds", "scores", "reward", "provenance")
PICKAPIC_COLUMNS = ("jpg_0", "jpg_1", "label_0", "label_1", "caption")


def candidate_features(score_components: list[str]):
    """``datasets.Features`` of candidate rows with per-candidate scores for each of ``score_components``."""
    from datasets import Features, List, Value  # heavy (~1 s): keeps build_pairs.py --help light
    return Features({"annotation": Value("string"), "candidates": List(Value("binary")),
                     "seeds": List(Value("int64")),
                     "scores": {c: List(Value("float64")) for c in score_components},
                     "reward": List(Value("float64")), "provenance": Value("string")})


def decode_image(data: bytes):
    """An RGB PIL image from the encoded bytes of an image column (PNG candidates, JPEG Pick-a-Pic)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
