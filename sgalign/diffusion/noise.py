"""Initial noise for sampling: which seed draws each image's noise, and the Gaussian with its per-channel spatial mean
optionally shrunk.

**Which seed.** An evaluation samples K images per graph (``sampling.seeds``). Under the ``shared`` rule (sgalign's
rule until results version 3) image k of *every* graph starts from ``seeds[k]``: in the shapes world the layout
partly follows the noise, so one seed's layout bias is shared by all graphs, the images of a seed are not independent
across graphs, and intervals that resample graphs are too narrow (docs/RESULTS.md, "Independent noise per graph").
The ``per-graph`` rule (the default) seeds image k of graph g with ``hashed_seed("eval", key_g, seeds[k])``, key_g a
stable identity of the graph's content: another graph, or another seed list, draws independent noise, and a model and
its baseline sampled under one protocol still get identical noise per image (comparisons stay paired).

Why: SD's noise schedule leaves signal at its first sampling step (ᾱ ≈ 0.008 at t = 951), so a UNet can read an
image's mean latent from the spatial mean of x_T. A well-calibrated model shrinks that reading (the noise's mean is
mostly noise); a small, briefly trained one takes it at face value and amplifies it ~1/sqrt(ᾱ) ≈ 11x. On 16x16
latents the noise mean per channel has std 1/16, so the world base drew per-image latent means with 2-6x the spread
of real renders: colours and brightness of whole images drift, and phrase Entity-IoU fell (docs/RESULTS.md, "World
base model"). Shrinking the noise's spatial mean by ``scale`` (1 = plain Gaussian, 0 = mean-free) restores the data's
spread; the world recipe calibrates ``scale`` on validation graphs by that statistic alone and stores it in the
pipeline's config (``initial_noise_mean_scale``), so every sampling path of that model uses it.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Literal, Sequence

import torch

NoiseRule = Literal["per-graph", "shared"]
NOISE_RULES: dict[str, str] = {
    "per-graph": "image (g, k) seeded by blake2b-64('eval:' + key_g + ':' + seeds[k]) & (2**63 - 1); key_g = sha256 of "
                 "input g's content (serialised graph / prompt text)[:16], '#n' appended to the n-th repeat",
    "shared": "image (g, k) seeded by seeds[k] for every g (the same noise for every graph; results before version 3)",
}


def hashed_seed(*parts: object) -> int:
    """A 63-bit seed that is a stable function of ``parts`` (joined by ':'), on every machine and Python version."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def noise_keys(contents: Sequence[str]) -> list[str]:
    """Stable noise identities of inputs given by their content (a graph's serialised text, a prompt): a content
    hash, and a repeat of the same content within one input set gets its own key (``#2``, ``#3``...), so no two
    inputs of a set ever share noise."""
    seen: Counter[str] = Counter()
    keys = []
    for text in contents:
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        seen[h] += 1
        keys.append(h if seen[h] == 1 else f"{h}#{seen[h]}")
    return keys


def image_seeds(seeds: Sequence[int], keys: Sequence[str] | None, rule: NoiseRule = "per-graph") -> list[int]:
    """The seed of every image, in the order image ``g * K + k`` = input ``g`` with ``seeds[k]``.

    ``rule="shared"`` ignores ``keys`` (and needs their count only through the caller's batch)."""
    if rule == "shared":
        if keys is None:
            return [int(s) for s in seeds]
        return [int(s) for _ in keys for s in seeds]
    if rule != "per-graph":
        raise ValueError(f"noise rule must be one of {sorted(NOISE_RULES)}, got {rule!r}")
    if keys is None:
        raise ValueError("the per-graph noise rule needs each input's noise key (diffusion.noise.noise_keys)")
    return [hashed_seed("eval", key, int(s)) for key in keys for s in seeds]


def image_generators(seeds: Sequence[int], keys: Sequence[str] | None, rule: NoiseRule = "per-graph",
                     device: str = "cpu") -> list[torch.Generator]:
    """One seeded generator per image (``image_seeds``), the form diffusers' pipelines take."""
    return [torch.Generator(device=device).manual_seed(s) for s in image_seeds(seeds, keys, rule)]


def shrink_spatial_mean(noise: torch.Tensor, scale: float) -> torch.Tensor:
    """``noise - (1 - scale) * mean_{h,w}(noise)`` per image and channel (``noise``: [B, C, H, W])."""
    if not 0.0 <= scale <= 1.0:
        raise ValueError(f"initial noise mean scale must be in [0, 1], got {scale}")
    if scale == 1.0:
        return noise
    return noise - (1.0 - scale) * noise.mean(dim=(-2, -1), keepdim=True)
