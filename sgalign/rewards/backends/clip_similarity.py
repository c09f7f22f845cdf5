"""CLIP image-text cosine through transformers (``CLIPModel``) from a local folder: CLIPScore's C for 3-in-1.

Returns the raw cosine of the projected, L2-normalised embeddings (no x100, no clipping), as the official
``CLIP_similarity.py``. The official code does not truncate (a text over 77 tokens is an error there):
``truncate=False`` reproduces that; the default truncates and says so in ``info.details``. The official run uses
fp16 on GPU (OpenAI ``clip.load``): pass ``dtype=torch.float16`` for that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from ..provenance import BackendInfo
from ._hf import CONFIG, PREPROCESSOR, WEIGHTS, fingerprint, is_random_init, pick_device, pooled_features, \
    require_transformers, version_string
from .manifest import Manifest, RequiredFile

MANIFEST = Manifest("clip-similarity", (
    CONFIG, WEIGHTS, PREPROCESSOR,
    RequiredFile.of("tokenizer.json", "vocab.json", purpose="CLIP BPE vocabulary"),
    RequiredFile.of("tokenizer.json", "merges.txt", purpose="CLIP BPE merges"),
), origin="a CLIPModel saved with save_pretrained, e.g. openai/clip-vit-base-patch32 (= OpenAI ViT-B/32)")


def load_clip(root: Path, backend: str, device: str | None = None, dtype=None, tokenizer_root: Path | None = None):
    """(CLIPModel in eval mode on ``device``, tokenizer, CLIPImageProcessor) from a checked local folder; the
    tokenizer from ``tokenizer_root`` when it lives in a subfolder (the world-CLIP layout)."""
    require_transformers(backend)
    # heavy: the rewards import without transformers and torch
    from transformers import AutoConfig, AutoTokenizer, CLIPImageProcessor, CLIPModel

    model_type = AutoConfig.from_pretrained(root, local_files_only=True).model_type
    if model_type != "clip":
        raise ValueError(f"{backend}: {root}/config.json has model_type {model_type!r}, expected 'clip'")
    model = CLIPModel.from_pretrained(root, local_files_only=True, **({"dtype": dtype} if dtype else {}))
    model.to(pick_device(device)).eval()
    tok = AutoTokenizer.from_pretrained(tokenizer_root or root, local_files_only=True)
    proc = CLIPImageProcessor.from_pretrained(root, local_files_only=True)
    return model, tok, proc


class CLIPSimilarity:
    def __init__(self, model, tokenizer, image_processor, info: BackendInfo, truncate: bool = True):
        self.model, self.tokenizer, self.image_processor, self.info = model, tokenizer, image_processor, info
        self.truncate = truncate

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, dtype=None,
                        truncate: bool = True) -> "CLIPSimilarity":
        root = MANIFEST.check(path)
        model, tok, proc = load_clip(root, MANIFEST.backend, device, dtype)
        random_init = is_random_init(model.config)
        info = BackendInfo("clip-similarity", version_string(model.config), "real", fallback=random_init, details={
            **fingerprint(root), "folder": root.name, "truncate": truncate, "dtype": str(model.dtype),
            "random_init": random_init})
        return cls(model, tok, proc, info, truncate)

    def similarity(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        import torch  # heavy: as transformers

        if len(images) != len(texts):
            raise ValueError(f"{self.info.name}: {len(images)} images but {len(texts)} texts")
        if not texts:
            return []
        max_len = self.model.config.text_config.max_position_embeddings
        row = {t: i for i, t in enumerate(dict.fromkeys(texts))}  # a reward batch repeats each prompt: encode once
        enc = self.tokenizer(list(row), padding=True, truncation=self.truncate,
                             max_length=max_len if self.truncate else None, return_tensors="pt")
        if enc.input_ids.shape[1] > max_len:
            raise ValueError(f"{self.info.name}: a text is {enc.input_ids.shape[1]} tokens, over the context of "
                             f"{max_len} (official behaviour: error; pass truncate=True to cut)")
        pv = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        dev = self.model.device
        with torch.no_grad():
            img = pooled_features(self.model.get_image_features(pixel_values=pv.to(dev, self.model.dtype)))
            txt = pooled_features(self.model.get_text_features(input_ids=enc.input_ids.to(dev),
                                                               attention_mask=enc.attention_mask.to(dev)))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            txt = txt[torch.tensor([row[t] for t in texts], device=txt.device)]
            cos = (img * txt).sum(-1).float()
        return [float(c) for c in cos]
