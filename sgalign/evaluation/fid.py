"""FID through torchmetrics' ``FrechetInceptionDistance`` with a pluggable feature extractor.

torchmetrics' own Inception (``feature=2048``) downloads torch-fidelity weights, so it is never used here: the
metric always gets an ``nn.Module`` -- a ``FIDFeatures`` wrapper = preprocessing + backbone, where the backbone is

* ``InceptionV3Features.from_pretrained(path)``: pytorch-fid's FID-Inception (pool3, 2048-d) loaded from a LOCAL
  ``pt_inception-2015-12-05-6726825d.pth`` (the file pytorch-fid downloads; nothing here downloads it), or
* ``ImageEncoderFeatures``: any image encoder (a CLIP vision tower, the world image encoder, a tiny test net).

Images enter as NCHW RGB, uint8 in [0, 255] or float in [0, 1]. Preprocessing (recorded in every result):

``standard``: the [0, 1] image goes to the backbone, which does its own resizing/normalisation (for the
  Inception: bilinear resize to 299, then 2x-1, exactly pytorch-fid's CLI path).
``paper`` (LAION-SG test/caculate_fid.py): float images are first quantised by truncation (``uint8(x*255)``, as
  its generate_npz.py saved them), resized to 256x256 bilinear WITHOUT antialiasing, mapped to [-1, 1] by x*2-1,
  and only then given to the backbone -- which normalises again (the Inception sees [-3, 1]). Internally
  consistent, but not comparable with standard FID.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from .stats import ConfidenceInterval, check_bootstrap_args, recentred_interval

Preprocess = Literal["standard", "paper"]
PREPROCESS: tuple[str, ...] = ("standard", "paper")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP pixel statistics, for ImageEncoderFeatures
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float [0, 1] NCHW RGB -> float32 [0, 1] NCHW."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"FID expects NCHW RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"FID images must be uint8 or float, got {images.dtype}")
    return images.float()


class FIDFeatures(nn.Module):
    """Preprocessing + backbone, the ``feature=`` module handed to torchmetrics (it exposes ``num_features``)."""

    def __init__(self, backbone: nn.Module, num_features: int, preprocess: Preprocess = "standard",
                 paper_size: int = 256, name: str | None = None) -> None:
        super().__init__()
        if preprocess not in PREPROCESS:
            raise ValueError(f"FID preprocess must be one of {PREPROCESS}, got {preprocess!r}")
        self.backbone, self.num_features = backbone, num_features
        self.preprocess, self.paper_size = preprocess, paper_size
        self.name = name or type(backbone).__name__
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FIDFeatures":  # always a frozen feature extractor
        return super().train(False)

    def preprocess_images(self, images: Tensor) -> Tensor:
        x = to_unit_float(images)
        if self.preprocess == "paper":
            if images.dtype != torch.uint8:
                x = (x.clamp(0, 1) * 255).to(torch.uint8).float() / 255.0  # astype(uint8) truncation
            x = F.interpolate(x, size=(self.paper_size, self.paper_size), mode="bilinear", align_corners=False,
                              antialias=False)
            x = x * 2 - 1
        return x

    def forward(self, images: Tensor) -> Tensor:
        out = self.backbone(self.preprocess_images(images)).flatten(1)
        if out.shape[1] != self.num_features:
            raise ValueError(f"FID backbone {self.name} returned {out.shape[1]} features, expected {self.num_features}")
        return out

    def describe(self) -> dict[str, Any]:
        d = {"backbone": self.name, "num_features": self.num_features, "preprocess": self.preprocess}
        if self.preprocess == "paper":
            d["paper_size"] = self.paper_size
            d["note"] = "LAION-SG preprocessing (no-antialias resize, double normalisation): not standard FID"
        d.update(getattr(self.backbone, "provenance", {}))
        return d


class ImageEncoderFeatures(nn.Module):
    """Any image encoder as an FID backbone: [0, 1] (or, after ``paper`` preprocessing, [-1, 1]) NCHW -> resize to
    ``image_size`` (bilinear, antialiased) -> (x - mean) / std -> encoder -> ``output`` -> (N, D).

    ``output`` picks the features from what the encoder returns: None (a tensor), an attribute/key name such as
    "image_embeds" or "pooler_output" (transformers outputs), or a callable."""

    def __init__(self, encoder: nn.Module, *, image_size: int | None = None, mean: Sequence[float] = (0.0, 0.0, 0.0),
                 std: Sequence[float] = (1.0, 1.0, 1.0), output: str | Callable[[Any], Tensor] | None = None,
                 name: str | None = None) -> None:
        super().__init__()
        self.encoder, self.image_size, self.output = encoder, image_size, output
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.provenance = {"encoder": name or type(encoder).__name__, "image_size": image_size,
                           "mean": list(mean), "std": list(std)}

    def forward(self, x: Tensor) -> Tensor:
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        out = self.encoder((x - self.mean) / self.std)
        if callable(self.output):
            out = self.output(out)
        elif isinstance(self.output, str):
            out = out[self.output] if isinstance(out, dict) else getattr(out, self.output)
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1)


# ---- pytorch-fid's FID-Inception (TF inception-2015-12-05 weights) ----------------------------------------------
# Same module names as torchvision's Inception3, so a pytorch-fid weights file loads by name. Three blocks differ
# from torchvision's: the average pools exclude padding (TF semantics) and Mixed_7c pools by max, not average.

def _fid_blocks() -> tuple[type, ...]:
    from torchvision.models import inception as tv  # heavy (torchvision, ~3 s): only for Inception features

    def pool_avg(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class BlockA(tv.InceptionA):
        def forward(self, x: Tensor) -> Tensor:
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(pool_avg(x))], 1)

    class BlockC(tv.InceptionC):
        def forward(self, x: Tensor) -> Tensor:
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = x
            for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                          self.branch7x7dbl_5):
                d = layer(d)
            return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(pool_avg(x))], 1)

    class BlockE(tv.InceptionE):
        max_pool = False  # Mixed_7c of the FID network pools by max

        def forward(self, x: Tensor) -> Tensor:
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else pool_avg(x)
            return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)

    class BlockEMax(BlockE):
        max_pool = True

    return tv, BlockA, BlockC, BlockE, BlockEMax


class InceptionV3Features(nn.Module):
    """pytorch-fid's ``InceptionV3([3])``: pool3 features (2048-d) of the FID Inception network.

    Input: float NCHW in [0, 1] of any size; resized to 299 (bilinear, no antialias) and mapped by 2x-1 inside,
    as pytorch-fid's defaults ``resize_input=True, normalize_input=True``. Build with ``from_pretrained``."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        tv, block_a, block_c, block_e, block_e_max = _fid_blocks()
        conv = tv.BasicConv2d
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = block_a(192, pool_features=32)
        self.Mixed_5c = block_a(256, pool_features=64)
        self.Mixed_5d = block_a(288, pool_features=64)
        self.Mixed_6a = tv.InceptionB(288)
        self.Mixed_6b = block_c(768, channels_7x7=128)
        self.Mixed_6c = block_c(768, channels_7x7=160)
        self.Mixed_6d = block_c(768, channels_7x7=160)
        self.Mixed_6e = block_c(768, channels_7x7=192)
        self.Mixed_7a = tv.InceptionD(768)
        self.Mixed_7b = block_e(1280)
        self.Mixed_7c = block_e_max(2048)
        self.provenance: dict[str, Any] = {"weights": None}

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "InceptionV3Features":
        """Load pytorch-fid's weights file (a state dict of torchvision-Inception3 names; ``fc.*`` is unused and
        skipped; a ``.safetensors`` file with the same names also works)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"FID Inception weights not found at {path}. Expected pytorch-fid's {PYTORCH_FID_WEIGHTS} "
                f"(from {PYTORCH_FID_URL}); download it on a machine with network access and pass its local path.")
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict (pytorch-fid {PYTORCH_FID_WEIGHTS}), got {type(state)}")
        model = cls()
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # absent in older files; unused
        if missing or unexpected:
            raise ValueError(f"{path} is not a pytorch-fid Inception state dict ({PYTORCH_FID_WEIGHTS}): "
                             f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        model.provenance = {"weights": path.name, "weights_sha256": _sha256(path)}
        return model.requires_grad_(False).eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inception_fid_features(path: str | Path, preprocess: Preprocess = "standard") -> FIDFeatures:
    """The FID-Inception feature module for torchmetrics, from a local pytorch-fid weights file."""
    return FIDFeatures(InceptionV3Features.from_pretrained(path), 2048, preprocess, name="pytorch-fid InceptionV3")


# ---- computing FID ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FIDResult:
    fid: float
    n_real: int
    n_fake: int
    features: dict[str, Any]  # FIDFeatures.describe(): backbone, dims, preprocess, weights file + sha256
    ci: ConfidenceInterval | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = None if self.ci is None else self.ci.to_dict()
        return d


def _batches(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterable[Tensor]:
    if isinstance(images, Tensor):
        yield from images.split(batch_size)
    else:
        yield from images


def fid_metric(features: FIDFeatures) -> "FrechetInceptionDistance":  # noqa: F821
    # heavy (torchmetrics, torchvision): only where FID is computed
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=features, reset_real_features=True)


@torch.no_grad()
def compute_fid(real: Tensor | Iterable[Tensor], fake: Tensor | Iterable[Tensor], features: FIDFeatures,
                batch_size: int = 32) -> FIDResult:
    """FID between real and generated images (tensors or iterables of NCHW batches), via torchmetrics."""
    metric = fid_metric(features)
    for batch in _batches(real, batch_size):
        metric.update(batch, real=True)
    for batch in _batches(fake, batch_size):
        metric.update(batch, real=False)
    n_real, n_fake = int(metric.real_features_num_samples), int(metric.fake_features_num_samples)
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"FID needs at least 2 real and 2 generated images, got {n_real} and {n_fake}")
    return FIDResult(float(metric.compute()), n_real, n_fake, features.describe())


class _Identity(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


@torch.no_grad()
def extract_features(images: Tensor | Iterable[Tensor], features: FIDFeatures, batch_size: int = 32) -> Tensor:
    """(N, D) float64 features of all images (for re-use across FIDs and for bootstrap intervals)."""
    return torch.cat([features(b).double() for b in _batches(images, batch_size)])


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """FID of two (N, D) feature sets, through torchmetrics (identity feature module)."""
    # heavy (torchmetrics, torchvision): only where FID is computed
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"fid_from_features: need (N, D) feature matrices of equal D, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    metric = FrechetInceptionDistance(feature=_Identity(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def _graph_rows(n_real: int, n_fake: int, fake_per_real: int | None) -> int | None:
    if fake_per_real is None:
        return None
    if fake_per_real < 1 or n_fake != n_real * fake_per_real:
        raise ValueError(f"FID by graph: {n_fake} generated rows are not {fake_per_real} per each of {n_real} real "
                         "rows (generated row g*K + k must belong to real row g)")
    return fake_per_real


def _draw(rng: np.random.Generator, n_real: int, n_fake: int, k: int | None) -> tuple[Tensor, Tensor]:
    """Row indices of one resample: whole graphs (real row g with its K generated rows) when ``k`` is given,
    else real and generated rows independently."""
    if k is None:
        return torch.from_numpy(rng.integers(0, n_real, n_real)), torch.from_numpy(rng.integers(0, n_fake, n_fake))
    g = rng.integers(0, n_real, n_real)
    return torch.from_numpy(g), torch.from_numpy((g[:, None] * k + np.arange(k)[None, :]).reshape(-1))


def fid_bootstrap(real: Tensor, fake: Tensor, features_info: dict[str, Any] | None = None, *,
                  n_resamples: int = 200, level: float = 0.95, seed: int = 0,
                  fake_per_real: int | None = None) -> FIDResult:
    """FID with a bootstrap interval that always contains the estimate.

    Resampling: with ``fake_per_real=K`` (generated row g*K + k is seed k of the graph of real row g) whole graphs
    are drawn -- the render and all K generated images of a graph together; without it the two sets are resampled
    independently (unrelated sets). Cost: one D x D eigendecomposition per resample.

    Interval: FID is biased upward at small N and resampling with replacement duplicates rows, so the bootstrap
    distribution sits above the estimate and its plain percentile interval can exclude it (FID 12.2 with
    [20.5, 24.5] was seen). ``recentred_interval`` keeps the bootstrap spread (asymmetric) around the estimate
    instead; it shows sampling spread, not a bias correction -- compare with the FID floor at the same N."""
    check_bootstrap_args(n_resamples, level)
    k = _graph_rows(len(real), len(fake), fake_per_real)
    rng = np.random.default_rng(seed)
    estimate = fid_from_features(real, fake)
    boot = []
    for _ in range(n_resamples):
        ir, jf = _draw(rng, len(real), len(fake), k)
        boot.append(fid_from_features(real[ir], fake[jf]))
    unit = "image (real and generated independently)" if k is None else "graph (render + all seeds together)"
    ci = recentred_interval(estimate, np.array(boot), level, n_resamples, seed, len(real) if k else
                            min(len(real), len(fake)), unit=unit, lower_bound=0.0)
    return FIDResult(estimate, len(real), len(fake), dict(features_info or {}), ci)


@dataclass(frozen=True)
class PairedFID:
    """FID(a) - FID(b) against the same real set: a bootstrap interval (the same resampled graphs on both sides)
    and a permutation p-value (per graph, the two models' images swapped at random)."""

    difference: ConfidenceInterval
    p_value: float
    n_permutations: int

    def to_dict(self) -> dict[str, Any]:
        return {"difference": self.difference.to_dict(), "p_value": self.p_value,
                "n_permutations": self.n_permutations,
                "test": "two-sided permutation test, model and baseline images of a graph exchanged together"}


def fid_paired(real: Tensor, fake_a: Tensor, fake_b: Tensor, *, fake_per_real: int = 1, n_resamples: int = 200,
               level: float = 0.95, seed: int = 0) -> PairedFID:
    """Paired comparison of two models' FIDs on the same graphs and seeds (rows as in ``fid_bootstrap``).

    Two independent FID intervals cannot be compared (each carries its own small-N bias); the difference with the
    same resampled graphs on both sides can: the shared bias largely cancels. The interval is re-centred on the
    observed difference (``recentred_interval``); the permutation test needs no bootstrap at all: under "same
    distribution" swapping a graph's model and baseline images leaves the FID difference's law unchanged."""
    check_bootstrap_args(n_resamples, level)
    if fake_a.shape != fake_b.shape:
        raise ValueError(f"fid_paired: the two generated sets differ in shape: {tuple(fake_a.shape)} vs "
                         f"{tuple(fake_b.shape)}")
    k = _graph_rows(len(real), len(fake_a), fake_per_real)
    rng = np.random.default_rng(seed)
    observed = fid_from_features(real, fake_a) - fid_from_features(real, fake_b)
    boot = []
    for _ in range(n_resamples):
        ir, jf = _draw(rng, len(real), len(fake_a), k)
        boot.append(fid_from_features(real[ir], fake_a[jf]) - fid_from_features(real[ir], fake_b[jf]))
    ci = recentred_interval(observed, np.array(boot), level, n_resamples, seed, len(real),
                            unit="graph (render + all seeds together)")
    extreme = 0
    for _ in range(n_resamples):
        swap = torch.from_numpy(np.repeat(rng.random(len(real)) < 0.5, k))[:, None]
        pa, pb = torch.where(swap, fake_b, fake_a), torch.where(swap, fake_a, fake_b)
        d = fid_from_features(real, pa) - fid_from_features(real, pb)
        extreme += abs(d) >= abs(observed) - 1e-12
    return PairedFID(ci, (1 + extreme) / (1 + n_resamples), n_resamples)
