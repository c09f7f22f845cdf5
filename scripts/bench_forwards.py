"""UNet forwards per training pair for each method, with and without the trajectory cache.

Counts are what the methods' ForwardCounter reports (one forward = one latent through the ε network; a CFG
call counts two). The network is a tiny random-init conv net standing in for the UNet: forward *counts* do not
depend on the network, only on the method's settings and the sampled timesteps (averaged over --pairs).
The "cost" column is the METHODS.md model: no-grad forwards + 3 × grad forwards (forward + backward ≈ 2F),
without gradient-checkpoint recompute. Usage: python scripts/bench_forwards.py [--pairs 256] [--batch 8]
"""
from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn

from sgalign.diffusion import ZEROS, TrajectoryCache, model_fingerprint, scaled_linear_alphas_cumprod
from sgalign.machine import machine_line
from sgalign.methods import MethodContext, PairBatch, build_method


class TinyEps(nn.Module):  # random-init stand-in (counts only)
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.temb = nn.Linear(1, 4)

    def forward(self, x, t, cond):
        return self.conv(x) + self.temb(t.float()[:, None] / 1000)[..., None, None] + cond.view(-1, 1, 1, 1)


ROWS = [  # (method, options, label)
    ("diffusion-dpo", {}, "default"),
    ("sft", {}, "default"),
    ("inpo", {}, "default (policy inverts, exact grid)"),
    ("inpo", {"inverter": "reference"}, "inverter=reference"),
    ("inpo", {"faithful": True}, "faithful (official)"),
    ("smpo", {}, "default (policy inverts, ReNoise)"),
    ("smpo", {"inverter": "reference"}, "inverter=reference"),
    ("smpo", {"faithful": True}, "faithful, 10-pt grid (SDXL)"),
    ("smpo", {"faithful": True, "num_points": 5}, "faithful, 5-pt grid (SD1.5)"),
    ("inversion-dpo", {}, "default (N=80, CFG 2, trajectory target)"),
    ("inversion-dpo", {"faithful": True}, "faithful (official, N=80)"),
    ("inversion-dpo", {"subsample": 1}, "subsample k=1"),
    ("inversion-dpo", {"faithful": True, "gradient": "constant-memory"}, "faithful, constant-memory"),
]


def measure(name, opts, pairs, bsz, cache_dir=None):
    torch.manual_seed(0)
    ref = TinyEps().requires_grad_(False)
    pol = TinyEps()
    pol.load_state_dict(ref.state_dict())
    ac = scaled_linear_alphas_cumprod()
    gen = torch.Generator().manual_seed(0)
    cache = TrajectoryCache(cache_dir) if cache_dir else None
    ctx = MethodContext(lambda x, t, c: pol(x, t, c), lambda x, t, c: ref(x, t, c), ac, gen, cache,
                        model_fingerprint(ref) if cache else None,
                        unconditional=ZEROS)  # a toy ε net has no empty text: zeros, as the figures always used
    method = build_method(name, **opts)
    g = torch.Generator().manual_seed(1)
    data = [PairBatch(torch.randn(bsz, 4, 8, 8, generator=g), torch.randn(bsz, 4, 8, 8, generator=g),
                      torch.randn(bsz, generator=g), torch.rand(bsz, generator=g), torch.rand(bsz, generator=g))
            for _ in range(max(1, pairs // bsz))]
    passes = 2 if cache else 1  # with a cache: one cold epoch, then measure the warm epoch
    for epoch in range(passes):
        tot, used = {}, None
        for b in data:
            out = method(b, ctx)
            if not out.backward_done:
                out.loss.backward()
            pol.zero_grad(set_to_none=True)
            for k, v in out.forwards.as_dict().items():
                tot[k] = tot.get(k, 0.0) + v / len(data)
            used = out.provenance.get("cache_used")
    return tot, used


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pairs-inversion-dpo", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine_line()}")
    print(f"pairs averaged: {a.pairs} (inversion-dpo: {a.pairs_inversion_dpo}), batch {a.batch}; "
          "F = one latent through the ε network (CFG = 2F)\n")
    hdr = "| method | setting | cache | policy no-grad | policy grad | reference no-grad | forwards | cost ≈F |"
    print(hdr)
    print("|" + "---|" * 8)
    for name, opts, label in ROWS:
        n = a.pairs_inversion_dpo if name == "inversion-dpo" else a.pairs
        for use_cache in (False, True):
            with tempfile.TemporaryDirectory() as d:
                tot, used = measure(name, opts, n, min(a.batch, n), d if use_cache else None)
            if use_cache and not used:
                cache = "n/a" if name in ("diffusion-dpo", "sft") else "n/a: policy inverts (not deterministic)"
                print(f"| {name} | {label} | {cache} | | | | | |")
                continue
            pn, pg, rn = tot.get("policy_no_grad", 0), tot.get("policy_grad", 0), tot.get("reference_no_grad", 0)
            print(f"| {name} | {label} | {'warm' if use_cache else 'off'} | {pn:.2f} | {pg:.2f} | {rn:.2f} | "
                  f"{pn + pg + rn:.2f} | {pn + rn + 3 * pg:.1f} |")


if __name__ == "__main__":
    main()
