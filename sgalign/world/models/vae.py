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

Latent-interpolation consistency (``interp_weight``, default on): a plain L1 + KL VAE puts the palette on one line
through the background latent (background -> yellow -> red -> purple -> blue -> green -> cyan), so a diffusion
model's blurry, mean-regressing predictions decode to *other palette colours* (speckle). SD's own VAE latents are
roughly linear in RGB; we ask for that directly: ``L1(decode(z_a + l (z_b - z_a)), x_a + l (x_b - x_a))`` with
``l ~ U(0, 1)`` and ``z`` the posterior means, on two kinds of path per step: background -> image (half the batch;
``z_a`` the all-background image's mean) and image -> another image of the batch (the other half: colour <-> colour
paths). ``blend_test`` measures the property.

``scaling_factor`` = 1 / std of posterior samples over validation renders, recorded in the VAE config as SD's
0.18215 is (diffusion trains on ``latents * scaling_factor``, which then have unit variance).

``normalise_latent_channels`` goes further and is what the world base uses: the world's latents are far from
zero-mean (the background, most of every image, sits at about (0.2, -1.7, -1.2, -1.7) x the scale, i.e. 2-3 channel
stds from 0). SD's noise schedule keeps a little signal at its last timestep (SNR 0.005), so a UNet learns to read
an image's mean latent from the spatial mean of x_T; sampling starts from zero-mean noise, so every sample is
pulled to a latent mean of ~0, which decodes to a yellowish wash with speckle (Lin et al. 2024, "Common diffusion
noise schedules and sample steps are flawed", the same leak). Measured on the shipped base, 64 validation graphs x 2
seeds: shifting only the initial noise by the data mean raised phrase Entity-IoU 0.215 -> 0.527 and brought
objects per image 6.3 -> 3.0. The fix at the source: an exact affine change of latent coordinates, baked into
``quant_conv`` / ``post_quant_conv``, so that the latents are zero-mean and unit-std per channel (SDXL's
``latents_mean`` / ``latents_std``, but inside the weights, so every SD pipeline and trainer uses it unchanged);
decoded images are the same to float precision and ``scaling_factor`` becomes 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import rules
from ..oracle import WorldOracle, colour_model
from ..render import render_array
from ..robustness import oracle_accuracy
from ..sampler import WorldScene
from ...diffusion.loop import Loop, warmup_cosine
from .data import render_stream, to_tensor

WORLD_VAE_DIR = Path(__file__).resolve().parent.parent / "weights" / "world-vae"


def world_vae(seed: int = 0, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL  # heavy (~3 s): keeps pretrain_vae.py --help and world.models light

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=scaling_factor)


def background_image(n: int = 1) -> torch.Tensor:
    """[n, 3, 64, 64] all-background images in [0, 1]."""
    bg = torch.tensor(rules.BACKGROUND, dtype=torch.float32) / 255.0
    return bg[None, :, None, None].expand(n, 3, rules.CANVAS, rules.CANVAS).clone()


InterpPaths = Literal["background", "background+pairs"]


def vae_loss(vae, images: torch.Tensor, kl_weight: float = 1e-6, interp_weight: float = 0.0,
             generator: torch.Generator | None = None,
             interp_paths: InterpPaths = "background") -> tuple[torch.Tensor, dict[str, float]]:
    """L1 reconstruction of a posterior sample + ``kl_weight`` x KL per pixel (+ ``interp_weight`` x the
    latent-interpolation consistency, module docstring); images in [0, 1]."""
    b = images.shape[0]
    x = images * 2 - 1
    xb = background_image(1) * 2 - 1 if interp_weight else x[:0]
    posterior = vae.encode(torch.cat([x, xb])).latent_dist
    z = posterior.sample(generator)
    rec = vae.decode(z[:b]).sample
    l1 = (rec - x).abs().mean()
    kl = posterior.kl()[:b].mean() / x[0].numel()
    loss = l1 + kl_weight * kl
    stats = {"l1": float(l1.detach()), "kl": float(kl.detach())}
    if interp_weight:
        # "background": every row on a background -> image path (the measured recipe); "background+pairs": half
        # the rows on image -> image paths instead (colour <-> colour)
        mean, h = posterior.mean, (b // 2 if interp_paths == "background+pairs" else b)
        lam = torch.rand(b, 1, 1, 1, generator=generator)
        # first half: background -> image; second half: image -> the next image of the half (colour <-> colour)
        za = torch.cat([mean[b:].expand(h, -1, -1, -1), mean[h:b]])
        xa = torch.cat([xb.expand(h, -1, -1, -1), x[h:b]])
        zb = torch.cat([mean[:h], mean[h:b].roll(1, 0)])
        xt = torch.cat([x[:h], x[h:b].roll(1, 0)])
        mix = vae.decode(za + lam * (zb - za)).sample
        interp = (mix - (xa + lam * (xt - xa))).abs().mean()
        loss = loss + interp_weight * interp
        stats["interp"] = float(interp.detach())
    with torch.no_grad():
        stats["mse"] = float(F.mse_loss((rec.clamp(-1, 1) + 1) / 2, images))
    return loss, {"loss": float(loss.detach()), **stats}


@dataclass
class VaeTrainArgs:
    steps: int = 1000
    batch: int = 16
    seed: int = 0
    lr: float = 1e-3
    kl_weight: float = 1e-6
    interp_weight: float = 1.0  # latent-interpolation consistency (0: the plain L1 + KL VAE, the control)
    interp_paths: InterpPaths = "background"
    warmup: int = 50
    init: str | None = None  # start from this VAE folder (fine-tuning) instead of a fresh VAE


def _train(trained: dict[str, torch.nn.Module], vae, args: VaeTrainArgs, gen: torch.Generator, stream_seed: int,
           progress: Callable[[int, dict[str, float]], None] | None, max_seconds: float | None) -> list[dict]:
    """``args.steps`` steps of ``vae_loss`` on the train-split render stream of ``stream_seed``, ``trained``'s
    parameters optimised (fewer steps once ``max_seconds`` are spent); ``progress(step, stats)``, step from 0."""
    params = [p for m in trained.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(min(args.warmup, max(args.steps // 10, 1)),
                                                                 args.steps))
    stream = render_stream("train", stream_seed, args.batch)
    loop = Loop(trained, opt, sched, max_grad_norm=1.0, max_seconds=max_seconds)
    return loop.run(args.steps, lambda _: vae_loss(vae, next(stream)[1], args.kl_weight, args.interp_weight, gen,
                                                   args.interp_paths),
                    on_step=None if progress is None else lambda done, stats: progress(done - 1, stats))


def train_world_vae(args: VaeTrainArgs, progress: Callable[[int, dict[str, float]], None] | None = None,
                    max_seconds: float | None = None):
    """Train the world VAE from scratch (or from ``args.init``) on the train-split render stream (at most
    ``max_seconds``, if given). Returns (vae, history)."""
    vae = (world_vae(args.seed) if args.init is None else load_world_vae(args.init)).train()
    gen = torch.Generator().manual_seed(args.seed)  # posterior sampling noise and interpolation weights
    # its own render stream (seed + 1000), not world-CLIP's batches
    history = _train({"vae": vae}, vae, args, gen, args.seed + 1000, progress, max_seconds)
    return vae.eval(), history


def refine_world_vae_decoder(vae, args: VaeTrainArgs,
                             progress: Callable[[int, dict[str, float]], None] | None = None,
                             max_seconds: float | None = None):
    """Fine-tune the decoder (and post_quant_conv) alone with the same loss, the encoder frozen: latents (and so any
    latent cache or diffusion model trained on them) stay exactly as they are, only the decoding of blends
    improves. Returns (vae, history)."""
    vae.requires_grad_(False)
    trained = {"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv}
    for m in trained.values():
        m.requires_grad_(True)
    vae.train()
    history = _train(trained, vae, args, torch.Generator().manual_seed(args.seed + 1), args.seed + 2000, progress,
                     max_seconds)
    vae.requires_grad_(False)
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
def latent_channel_stats(vae, scenes: Sequence[WorldScene], batch: int = 100, seed: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of posterior samples over the renders of ``scenes`` (unscaled latents)."""
    g = torch.Generator().manual_seed(seed)
    z = []
    for i in range(0, len(scenes), batch):
        x = to_tensor(render_array(list(scenes[i:i + batch])))
        z.append(vae.encode(x * 2 - 1).latent_dist.sample(generator=g))
    z = torch.cat(z).transpose(0, 1).flatten(1)
    return z.mean(1), z.std(1)


@torch.no_grad()
def normalise_latent_channels(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Re-parametrise ``vae`` in place so its latents become ``(z - mean) / std`` per channel; decoding is unchanged.

    Encoder: the posterior mean rows of ``quant_conv`` are shifted and scaled, the log-variance rows shifted by
    ``-2 log std``. Decoder: ``post_quant_conv`` absorbs ``z = std z' + mean`` (weights x std, bias + W mean).
    ``scaling_factor`` is set to 1 (the latents already have unit std)."""
    if not (vae.config.use_quant_conv and vae.config.use_post_quant_conv):
        raise ValueError("normalise_latent_channels needs a VAE with quant_conv and post_quant_conv")
    c = vae.config.latent_channels
    mean, std = mean.to(torch.float32), std.to(torch.float32)
    q, pq = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] /= std[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - mean) / std
    q.bias[c:] -= 2 * torch.log(std)
    pq.bias += torch.einsum("oikl,i->o", pq.weight, mean)
    pq.weight *= std[None, :, None, None]
    vae.register_to_config(scaling_factor=1.0)


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
    from diffusers import AutoencoderKL  # heavy (~3 s): keeps pretrain_vae.py --help and world.models light

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no world VAE checkpoint (config.json missing); train one with "
                                "`python scripts/pretrain_vae.py --out DIR`")
    return AutoencoderKL.from_pretrained(path).eval()


def colour_square(colour: str | None, size: int = 32) -> torch.Tensor:
    """[1, 3, 64, 64] in [0, 1]: a centred ``size`` px square of a palette colour (None: background only)."""
    img = background_image(1)
    if colour is not None:
        lo = (rules.CANVAS - size) // 2
        img[:, :, lo:lo + size, lo:lo + size] = (torch.tensor(rules.PALETTE[colour], dtype=torch.float32)
                                                  / 255.0)[:, None, None]
    return img


def read_colour(rgb: np.ndarray, min_alpha: float = 0.15) -> str:
    """The oracle's reading of one RGB colour (0-255): its blend-line fit, 'background' below ``min_alpha``."""
    k, alpha = colour_model(np.asarray(rgb, dtype=np.float32)[None])
    return "background" if float(alpha[0]) < min_alpha else rules.COLOURS[int(k[0])]


@torch.no_grad()
def blend_test(vae, n_points: int = 11, centre: int = 8, pairs: bool = True) -> dict:
    """Decode latent paths and read the centre colour with the oracle's colour model.

    ``background``: for every palette colour, ``z_bg + l (z_c - z_bg)`` for ``l`` in [0, 1]; passes iff every
    centre reads as the background or that colour, and reports the largest RGB distance of the centre from the
    colour's true blend line. ``pairs`` (reported, not judged: an RGB blend of two palette colours can itself sit
    near a third colour's line): ``z_a + l (z_b - z_a)`` for every ordered-free pair."""
    def latent(colour):
        return vae.encode(colour_square(colour) * 2 - 1).latent_dist.mode()

    def centre_rgb(z0, z1):
        """Centre mean RGB (0-255) of the decoded path z0 + l (z1 - z0), one row per l (one batched decode)."""
        lam = torch.as_tensor(lams, dtype=z0.dtype)[:, None, None, None]
        img = (vae.decode(z0 + lam * (z1 - z0)).sample.clamp(-1, 1) + 1) / 2 * 255
        lo = (rules.CANVAS - centre) // 2
        return img[:, :, lo:lo + centre, lo:lo + centre].mean((2, 3)).numpy()

    lams = np.linspace(0, 1, n_points)
    bg_rgb = np.asarray(rules.BACKGROUND, dtype=np.float64)
    z_bg = latent(None)
    lat = {c: latent(c) for c in rules.COLOURS}
    out: dict = {"points": n_points, "background": {}, "pairs": {}}
    for c in rules.COLOURS:
        d = np.asarray(rules.PALETTE[c], dtype=np.float64) - bg_rgb
        rgbs = centre_rgb(z_bg, lat[c]).astype(np.float64)
        reads = [read_colour(rgb) for rgb in rgbs]
        t = np.clip((rgbs - bg_rgb) @ d / (d @ d), 0, 1)
        worst = float(np.linalg.norm(rgbs - bg_rgb - t[:, None] * d, axis=1).max())
        out["background"][c] = {"reads": reads, "passes": all(r in ("background", c) for r in reads),
                                "max_rgb_off_line": round(worst, 2)}
    for i, a in enumerate(rules.COLOURS if pairs else ()):
        for b in rules.COLOURS[i + 1:]:
            reads = [read_colour(rgb) for rgb in centre_rgb(lat[a], lat[b])]
            out["pairs"][f"{a}->{b}"] = {"reads": reads,
                                         "other_colours": sorted(set(reads) - {a, b, "background"})}
    out["passes"] = all(v["passes"] for v in out["background"].values())
    return out
