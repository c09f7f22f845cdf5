"""The real CLIP BPE tokenizer, offline.

The 49,408-token CLIP vocabulary (OpenAI's ``bpe_simple_vocab_16e6.txt.gz``) ships inside the open_clip_torch
wheel. We rebuild from it the ``vocab``/``merges`` of the Hugging Face CLIP tokenizer (the same construction as
CLIP's ``SimpleTokenizer``) and wrap them as a ``transformers.CLIPTokenizer`` -- no hub access. Ids equal
open_clip's tokenizer (tested). SD1.5 and SDXL's first tokenizer pad with "<|endoftext|>"; SDXL's second with "!".
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408
_N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the file


def bpe_vocab_path() -> Path:
    """Location of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open_clip package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip_torch is not installed: it carries the CLIP BPE vocabulary "
                                "(bpe_simple_vocab_16e6.txt.gz). Run scripts/setup.sh.")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "bpe_simple_vocab_16e6.txt.gz"
        if p.is_file():
            return p
    raise FileNotFoundError(f"bpe_simple_vocab_16e6.txt.gz not found in {list(spec.submodule_search_locations)}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (printable bytes map to themselves).

    Insertion order matters: it is the order of the first 256 vocabulary ids (printable bytes first)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges) of the CLIP BPE, built from the gzip file the way CLIP's SimpleTokenizer does."""
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = lines[1:_N_MERGES + 1]  # first line is a version header
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} entries, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77) -> "CLIPTokenizer":
    """A ``transformers.CLIPTokenizer`` with the real CLIP vocabulary, built offline.

    ``pad_token="!"`` gives SDXL's ``tokenizer_2``. ``save_pretrained`` writes a normal tokenizer folder."""
    from transformers import CLIPTokenizer  # heavy (~1 s): scene_graph serves light tools (validate_sg.py)

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], pad_token=pad_token,
                         model_max_length=model_max_length)
