"""world VAE: a small ``diffusers.AutoencoderKL`` for 64x64 renders, 4x16x16 latents.

Why 16x16 (downsampling 4) and not SD's 8 (8x8 latents): the world's small objects are 9-12 px wide, so at 8x8 one
latent cell would carry a whole object and the decoder would have to invent its shape (square vs circle is exactly
what the oracle checks). 4x16x16 = 1,024 numbers for 12,288 pixel values (12x compression; SD's is 48x) keeps
shapes and colours readable, and a UNet on 16x16 latents is still cheap.

Architecture: block_out_channels (16, 32, 64) (narrow at 64x64, where convolutions cost most), one ResNet per
block, mid-block attention, 4 latent channels.
Loss (no perceptual or adversarial term -- no pretrained LPIPS net exists offline): per-pixel L1 on [-1, 1] images
+ ``kl_weight`` x the posterior KL per pixel. Both are SD's (sum over pixels / batch) terms divided by the pixel
count, so ``kl_weight = 1e-6`` is SD's KL weight.

``scaling_factor`` = 1 / std of posterior samples over validation renders, recorded in the VAE config as SD's
0.18215 is (diffusion trains on ``latents * scaling_factor``, which then have unit variance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..oracle import WorldOracle
from ..render import render_array
from ..robustness import oracle_accuracy
from ..sampler import WorldScene
from .loop import run_steps
from .data import render_stream, to_tensor

WORLD_VAE_DIR = Path(__file__).resolve().parent.parent / "weights" / "world-vae"


def world_vae(seed: int = 0, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=scaling_factor)


def vae_loss(vae, images: torch.Tensor, kl_weight: float = 1e-6) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 reconstruction of a posterior sample + ``kl_weight`` x KL per pixel; images in [0, 1]."""
    x = images * 2 - 1
    posterior = vae.encode(x).latent_dist
    rec = vae.decode(posterior.sample()).sample
    l1 = (rec - x).abs().mean()
    kl = posterior.kl().mean() / x[0].numel()
    loss = l1 + kl_weight * kl
    with torch.no_grad():
        mse = float(F.mse_loss((rec.clamp(-1, 1) + 1) / 2, images))
    return loss, {"loss": float(loss.detach()), "l1": float(l1.detach()), "kl": float(kl.detach()), "mse": mse}


@dataclass
class VaeTrainArgs:
    steps: int = 1000
    batch: int = 16
    seed: int = 0
    lr: float = 1e-3
    kl_weight: float = 1e-6
    warmup: int = 50


def train_world_vae(args: VaeTrainArgs, progress: Callable[[int, dict[str, float]], None] | None = None):
    """Train the world VAE from scratch on the train-split render stream. Returns (vae, history)."""
    vae = world_vae(args.seed).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = min(args.warmup, max(args.steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, args.steps) / max(args.steps, 1))))
    torch.manual_seed(args.seed)  # posterior sampling noise
    stream = render_stream("train", args.seed + 1000, args.batch)  # its own stream, not world-CLIP's batches
    history = run_steps(vae, opt, sched, args.steps, stream,
                        lambda batch: vae_loss(vae, batch[1], args.kl_weight), progress)
    return vae.eval(), history


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> reconstruction in [0, 1] (posterior mode unless ``sample``)."""
    dist = vae.encode(images * 2 - 1).latent_dist
    return ((vae.decode(dist.sample() if sample else dist.mode()).sample.clamp(-1, 1) + 1) / 2)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [0, 1] -> uint8 [N, H, W, 3] (rounded, as a saved PNG would be)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def latent_scaling_factor(vae, scenes: Sequence[WorldScene], batch: int = 100, seed: int = 0) -> float:
    """1 / std of posterior samples over the renders of ``scenes`` (SD's recipe for ``scaling_factor``)."""
    g = torch.Generator().manual_seed(seed)
    z = []
    for i in range(0, len(scenes), batch):
        x = to_tensor(render_array(list(scenes[i:i + batch])))
        z.append(vae.encode(x * 2 - 1).latent_dist.sample(generator=g))
    return float(1.0 / torch.cat(z).std())


@torch.no_grad()
def evaluate_world_vae(vae, scenes: Sequence[WorldScene], batch: int = 100) -> dict[str, float]:
    """Reconstruction MSE / PSNR (on [0, 1] images, uint8-rounded) and the oracle's accuracy on reconstructions."""
    sq, recs = [], []
    for i in range(0, len(scenes), batch):
        x = to_tensor(render_array(list(scenes[i:i + batch])))
        r = torch.from_numpy(to_uint8(reconstruct(vae, x))).permute(0, 3, 1, 2).float() / 255.0
        sq.append(((r - x) ** 2).flatten(1).mean(1))
        recs.append(to_uint8(r))
    mse = torch.cat(sq)
    acc = oracle_accuracy(scenes, WorldOracle().parse_batch(list(np.concatenate(recs))))
    return {"n": len(scenes), "mse": float(mse.mean()), "psnr_db": float((-10 * torch.log10(mse)).mean()),
            "psnr_of_mean_mse_db": float(-10 * torch.log10(mse.mean())),
            "oracle_objects_exact": acc.objects_exact, "oracle_relations_recall": acc.relations_recall,
            "oracle_graph_exact": acc.graph_exact}


def load_world_vae(path: str | Path = WORLD_VAE_DIR):
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no world VAE checkpoint (config.json missing); train one with "
                                "`python scripts/pretrain_vae.py --out DIR`")
    return AutoencoderKL.from_pretrained(path).eval()
