"""spaCy text parser from a local model folder (e.g. ``en_core_web_sm`` 3.5.0 unpacked; the official 3-in-1 run
pins spaCy 3.5.3 with it). Tokens with coarse POS and whitespace, and ``doc.noun_chunks``. Without spaCy or the
folder, ``BackendUnavailable`` says what is missing; ``resolve(..., fallback=RegexTextParser)`` substitutes the
labelled regex parser."""
from __future__ import annotations

import json
from pathlib import Path

from ..provenance import BackendInfo
from .manifest import Manifest, RequiredFile, require_module
from .protocols import ParsedText, Token

MANIFEST = Manifest("spacy-parser", (
    RequiredFile.of("meta.json", purpose="pipeline metadata (name, version)"),
    RequiredFile.of("config.cfg", purpose="pipeline config"),
), origin="a spaCy pipeline folder, e.g. en_core_web_sm-3.5.0/en_core_web_sm/en_core_web_sm-3.5.0")


class SpacyParser:
    def __init__(self, nlp, info: BackendInfo):
        self.nlp, self.info = nlp, info

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "SpacyParser":
        root = MANIFEST.check(path)
        require_module(MANIFEST.backend, "spacy", "pip install spacy (the official run pins 3.5.3)")
        import spacy  # optional dependency (extras), checked just above

        meta = json.loads((root / "meta.json").read_text())
        nlp = spacy.load(root)
        info = BackendInfo("spacy-parser", f"spacy-{spacy.__version__}/{meta.get('lang', '?')}_{meta.get('name', '?')}"
                           f"-{meta.get('version', '?')}", "real", fallback=False, details={"folder": root.name})
        return cls(nlp, info)

    def parse(self, text: str) -> ParsedText:
        doc = self.nlp(text)
        return ParsedText(tuple(Token(t.text, t.pos_, t.whitespace_) for t in doc),
                          tuple(c.text for c in doc.noun_chunks))
