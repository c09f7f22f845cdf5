"""The image encoder an evaluation's FID runs on (``compositional.fid_features``): world-CLIP's projected image
embedding, Inception-v3, or a labelled seeded random-init CNN when no trained world-CLIP is there."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..rewards.backends.world_clip import default_world_clip_dir
from .fid import CLIP_MEAN, CLIP_STD, FIDFeatures, ImageEncoderFeatures, inception_fid_features
from .protocol import EvalProtocol


def world_clip_dir(path: str | None) -> Path:
    """The world-CLIP folder a protocol names; None: the shipped one."""
    return Path(path) if path else default_world_clip_dir()


def world_clip_status(path: Path) -> tuple[bool, bool]:
    """(usable, trained): a folder with config.json; trained = it has the pretraining's training_record.json."""
    return (path / "config.json").is_file(), (path / "training_record.json").is_file()


class _ClipImageTower(torch.nn.Module):
    """world-CLIP's projected image embedding (unnormalised) from CLIP-normalised pixels."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


class RandomInitEncoder(torch.nn.Module):
    """FALLBACK FID backbone: a seeded random-init 2-layer CNN (64 px in, 16-d pooled features). Its FIDs compare
    images under one fixed random projection only; they are not world-CLIP or Inception FIDs."""

    def __init__(self, seed: int = 0, dim: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.conv2 = torch.nn.Conv2d(16, dim, 4, stride=4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.conv2(torch.nn.functional.gelu(self.conv1(x)))).mean((2, 3))


def world_clip_fid_features(clip_dir: str | Path, preprocess: str = "standard") -> FIDFeatures:
    """FIDFeatures on world-CLIP's projected image embedding (the folder ``clip_dir``), at its vision tower's image
    size; a folder without the pretraining's training_record.json is labelled UNTRAINED in the features' name."""
    from transformers import CLIPModel  # heavy; only where world-CLIP features are built

    clip = CLIPModel.from_pretrained(clip_dir).eval()
    trained = world_clip_status(Path(clip_dir))[1]
    name = "world-CLIP image tower (projected)" + ("" if trained else " [UNTRAINED: no training_record.json]")
    return FIDFeatures(ImageEncoderFeatures(_ClipImageTower(clip), image_size=clip.config.vision_config.image_size,
                                            mean=CLIP_MEAN, std=CLIP_STD, name=name),
                       num_features=clip.config.projection_dim, preprocess=preprocess, name="world-CLIP")


def build_fid_features(protocol: EvalProtocol) -> tuple[Any, dict[str, Any], list[str]]:
    """(FIDFeatures, provenance, fallbacks) for ``compositional.fid_features``."""
    c = protocol.compositional
    choice = c.fid_features
    clip_dir = world_clip_dir(c.world_clip_path)
    usable, trained = world_clip_status(clip_dir)
    if choice == "auto":
        choice = "world-clip" if usable and trained else "random-init"
    if choice == "inception":
        feats = inception_fid_features(c.inception_path, c.fid_preprocess)
        return feats, {"choice": "inception", **feats.describe()}, []
    if choice == "world-clip":
        if not usable:
            raise FileNotFoundError(f"compositional.fid_features=world-clip: no world-CLIP at {clip_dir} (config.json "
                                    "missing); train it with scripts/pretrain_clip.py or set fid_features=random-init")
        feats = world_clip_fid_features(clip_dir, c.fid_preprocess)
        fallbacks = [] if trained else [f"FID features: world-CLIP folder {clip_dir.name} has no training_record.json "
                                        "(not the trained world-CLIP)"]
        return feats, {"choice": "world-clip", "folder": clip_dir.name, "trained": trained, **feats.describe()}, \
            fallbacks
    enc = RandomInitEncoder(seed=0)
    feats = FIDFeatures(ImageEncoderFeatures(enc, image_size=64, name="RANDOM-INIT 2-layer CNN (fallback, seed 0)"),
                        num_features=16, preprocess=c.fid_preprocess, name="random-init CNN (fallback)")
    why = "requested" if c.fid_features == "random-init" else f"no trained world-CLIP at {clip_dir.name}"
    return feats, {"choice": "random-init", "fallback": True, **feats.describe()}, \
        [f"FID features: random-init CNN fallback ({why}); FID values are not world-CLIP FIDs"]
