"""Model backends for the rewards. The protocols (``YesNoVQA``, ``Detector``, ``ImageTextSimilarity``,
``TextParser``) are documented in ``protocols.py``; a new backend (e.g. the shapes-world oracle) plugs in by
implementing one of them and an ``info: BackendInfo`` with ``kind="world"``.

Real adapters (local weights only, lazy heavy imports): ``BlipVQA`` (transformers BLIP-VQA),
``CLIPSimilarity`` (transformers CLIP), ``OwlDetector`` (transformers OWL-ViT / OWLv2), ``SpacyParser``.
Each checks its ``MANIFEST`` first and raises ``BackendUnavailable`` naming the missing files and the folder.
Scripted backends and the regex parser are fallbacks (``info.fallback`` is True).
World backends (``world.py``, ``kind="world"``): ``WorldOracleVQA``, ``WorldOracleDetector``,
``WorldOracleSimilarity`` (an oracle stand-in for C, not a cosine), answering from the shapes-world oracle;
``WorldCLIPSimilarity`` (``world_clip.py``, ``kind="world"``): the real CLIP adapter on the trained world-CLIP.
"""
from .blip_vqa import BlipVQA
from .clip_similarity import CLIPSimilarity
from .manifest import BackendUnavailable, Manifest, RequiredFile, resolve
from .owl_detector import OwlDetector
from .registry import available, build_backend, register
from .protocols import (Detection, Detector, ImageTextSimilarity, ParsedText, TextParser, Token, VQAQuery,
                        YesNoVQA)
from .scripted import RegexTextParser, ScriptedDetector, ScriptedParser, ScriptedSimilarity, ScriptedVQA
from .spacy_parser import SpacyParser
from .world_clip import WorldCLIPSimilarity

__all__ = [
    "BackendUnavailable", "Manifest", "RequiredFile", "resolve", "available", "build_backend", "register",
    "Detection", "Detector", "ImageTextSimilarity",
    "ParsedText", "TextParser", "Token", "VQAQuery", "YesNoVQA", "RegexTextParser", "ScriptedDetector",
    "ScriptedParser", "ScriptedSimilarity", "ScriptedVQA", "BlipVQA", "CLIPSimilarity", "OwlDetector", "SpacyParser",
    "WorldOracleVQA", "WorldOracleDetector", "WorldOracleSimilarity", "WorldCLIPSimilarity",
]
_WORLD = ("WorldOracleVQA", "WorldOracleDetector", "WorldOracleSimilarity")


def __getattr__(name: str):
    if name in _WORLD:
        from . import world  # heavy (sgalign.world: scipy): loaded only when asked for

        return getattr(world, name)
    raise AttributeError(name)
