"""Small word lists shared by the reward logic: spatial predicates (mapped onto 3-in-1's locality words) and
attribute kinds (DPG's attribute categories). Used only for scene graphs, where no benchmark file says the type."""
from __future__ import annotations

import re

# 3-in-1's locality words, in the order the official scorer searches the prompt for them.
LOCALITIES = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
              "on the top of", "on top of")

# Scene-graph predicate (normalised) -> official locality word. Predicates without a 2-D rule ("behind", "in front
# of", "inside") are not here: 3-in-1 could not score them spatially, so a graph of them is typed "action".
_PREDICATE_LOCALITY = {
    "left of": "on the left of", "to the left of": "on the left of", "on the left of": "on the left of",
    "on the left side of": "on the left of", "at the left of": "on the left of",
    "right of": "on the right of", "to the right of": "on the right of", "on the right of": "on the right of",
    "on the right side of": "on the right of", "at the right of": "on the right of",
    "above": "on the top of", "over": "on the top of", "on the top of": "on the top of",
    "on top of": "on top of", "on": "on top of", "atop": "on top of", "sitting on": "on top of",
    "below": "on the bottom of", "under": "on the bottom of", "beneath": "on the bottom of",
    "underneath": "on the bottom of", "on the bottom of": "on the bottom of", "on bottom of": "on the bottom of",
    "next to": "next to", "beside": "next to", "by": "next to", "alongside": "next to",
    "near": "near", "close to": "near", "nearby": "near", "near to": "near",
    "on side of": "on side of", "on the side of": "on side of",
}
# Spatial for DPG's relation category (tuple "relation - spatial (...)"), a superset of the above.
_DPG_SPATIAL_EXTRA = {"behind", "in front of", "inside", "in", "at", "across from", "opposite", "around",
                      "between", "outside", "within", "against"}

COLOURS = frozenset("""red green blue yellow orange purple pink brown black white gray grey golden gold silver cyan
magenta violet beige teal turquoise maroon navy""".split())
SIZES = frozenset("small large big tiny huge little tall short long wide narrow giant massive miniature".split())
SHAPES = frozenset("round rectangular circular triangular oval square spherical cubic flat curved".split())
TEXTURES = frozenset("wooden metallic plastic glass leather fluffy soft hard smooth rough furry shiny fabric rubber "
                     "ceramic stone striped spotted checkered".split())


def normalise_predicate(predicate: str) -> str:
    p = re.sub(r"\s+", " ", predicate.strip().lower())
    p = re.sub(r"^(is|are|was|were) ", "", p)
    return p


def predicate_locality(predicate: str) -> str | None:
    """The official locality word a scene-graph predicate corresponds to, or None when it has no 2-D rule."""
    return _PREDICATE_LOCALITY.get(normalise_predicate(predicate))


def is_spatial_predicate(predicate: str) -> bool:
    """Spatial in 3-in-1's sense: scorable by the position rule."""
    return predicate_locality(predicate) is not None


def dpg_relation_kind(predicate: str) -> str:
    p = normalise_predicate(predicate)
    return "spatial" if (p in _PREDICATE_LOCALITY or p in _DPG_SPATIAL_EXTRA) else "non-spatial"


def attribute_kind(attribute: str) -> str:
    a = attribute.strip().lower()
    for kind, words in (("color", COLOURS), ("size", SIZES), ("shape", SHAPES), ("texture", TEXTURES)):
        if a in words:
            return kind
    return "other"
