"""64x64 RGB renders of world scenes: flat shapes on a plain light background, anti-aliased.

Shapes are drawn at ``supersample`` times the resolution and box-filtered down, so every edge pixel is an exact
blend of the shape colour and the background (the oracle's colour model reads such blends back exactly).
A triangle is isosceles, apex up, filling its square box (base = height = extent).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from . import rules
from .sampler import WorldScene


def render(scene: WorldScene, supersample: int = 4) -> Image.Image:
    k = supersample
    img = Image.new("RGB", (rules.CANVAS * k, rules.CANVAS * k), rules.BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        x0, y0, x1, y1 = (v * k for v in obj.box)
        fill = rules.PALETTE[obj.colour]
        if obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)  # PIL's end coordinates are inclusive
        elif obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; expected one of {rules.SHAPES}")
    return img.reduce(k) if k > 1 else img


def render_array(scenes: list[WorldScene], supersample: int = 4) -> np.ndarray:
    """uint8 array [N, 64, 64, 3]."""
    return np.stack([np.asarray(render(s, supersample)) for s in scenes])
