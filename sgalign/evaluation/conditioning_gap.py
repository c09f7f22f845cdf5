"""Does a model use its conditioning? epsilon-MSE with the true, empty and shuffled conditioning on the same noise.

For each graph: a render's VAE latent (posterior mean), noised with a seeded epsilon at a seeded timestep; the UNet
predicts epsilon under

* ``true``: the graph's own conditioning (``pipe.encode_graphs``: SG residual included where the model has one);
* ``text_only``: the same serialised text without the SG residual (``use_graph=False``); equals ``true`` for a
  model whose gate ``alpha_obj`` is 0;
* ``empty``: the empty text (the CFG branch);
* ``shuffled``: another graph's conditioning (the batch rolled by one).

The gap ``empty - true`` (and ``shuffled - true``) is how much of the loss the conditioning explains; a model that
ignores its conditioning has gaps near 0. Noise and timesteps depend only on ``seed``, so two models compared on the
same graphs see exactly the same noisy latents.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


@torch.no_grad()
def conditioning_gap(pipe, scenes: Sequence, *, seed: int = 0, batch: int = 64) -> dict:
    from ..world.models.data import to_tensor
    from ..world.render import render_array

    sched = pipe.scheduler
    gen = torch.Generator().manual_seed(seed)
    sums = {"true": [], "text_only": [], "empty": [], "shuffled": []}
    for start in range(0, len(scenes), batch):
        chunk = list(scenes[start:start + batch])
        graphs = [s.graph() for s in chunk]
        x = to_tensor(render_array(chunk)) * 2 - 1
        lat = pipe.vae.encode(x.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean * pipe.vae.config.scaling_factor
        # drawn on the CPU generator (the same noise on every device), then moved to the model
        noise = torch.randn(lat.shape, generator=gen).to(lat.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(chunk),), generator=gen).to(lat.device)
        noisy = sched.add_noise(lat, noise, t)
        cond = pipe.encode_graphs(graphs)
        conds = {"true": cond, "text_only": pipe.encode_graphs(graphs, use_graph=False),
                 "empty": pipe.unconditional(cond), "shuffled": cond[torch.arange(len(chunk)).roll(1)]}
        for k, c in conds.items():
            pred = pipe.unet(noisy, t, **c.unet_kwargs(), return_dict=False)[0]
            sums[k].append(((pred - noise) ** 2).mean((1, 2, 3)).float().cpu().numpy())
    per = {k: np.concatenate(v) for k, v in sums.items()}
    mse = {k: float(v.mean()) for k, v in per.items()}
    out = {"n_graphs": len(scenes), "seed": seed, "eps_mse": mse,
           "gap_empty": mse["empty"] - mse["true"], "gap_shuffled": mse["shuffled"] - mse["true"],
           "gap_text_only": mse["text_only"] - mse["true"],
           "share_of_loss_explained": (mse["empty"] - mse["true"]) / mse["empty"]}
    return out
