"""Does a model use its conditioning? epsilon-MSE (v-MSE for a v-prediction model: ``target`` in the result) with the
true, empty and shuffled conditioning on the same noise.

For each graph: a render's VAE latent (posterior mean), noised with a seeded epsilon at a seeded timestep; the UNet
predicts epsilon under

* ``true``: the graph's own conditioning (``pipe.encode_graphs``: SG residual included where the model has one);
* ``text_only``: the same serialised text without the SG residual (``use_graph=False``); equals ``true`` for a
  model whose gate ``alpha_obj`` is 0;
* ``empty``: the empty text (the CFG branch);
* ``shuffled``: another graph's conditioning (the batch rolled by one);
* ``inverted``: the graph with every predicate inverted (``world.invert_predicates``: "left of" -> "right of"), the
  same objects. ``inverted - true`` is what the predicates alone explain.

``embedding_change``: how far each conditioning's token embeddings (``prompt_embeds``) are from the true graph's,
relative to the true ones' norm, per graph then averaged. It locates a lost predicate: a text tower that no longer
encodes predicates changes little under ``inverted`` however well the UNet could use them.

The gap ``empty - true`` (and ``shuffled - true``) is how much of the loss the conditioning explains; a model that
ignores its conditioning has gaps near 0. Noise and timesteps depend only on ``seed``, so two models compared on the
same graphs see exactly the same noisy latents.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..diffusion.prediction import check_prediction, prediction_target
from ..models.attn_grounding import (box_canvas, capture_cross_attention, inside_shares, object_token_weights,
                                     pool_masks)
from ..models.graph_inputs import build_graph_inputs
from ..world import WorldOracle, invert_predicates, rules
from ..world.models.data import to_tensor
from ..world.render import render_array
from .extractors import GraphParserExtractor
from .sg_iou import evaluate_sg_iou, triple_counts
from .stats import paired_bootstrap_ci


@torch.no_grad()
def conditioning_gap(pipe, scenes: Sequence, *, seed: int = 0, batch: int = 64) -> dict:
    sched = pipe.scheduler
    kind = check_prediction(sched.config.prediction_type)
    gen = torch.Generator().manual_seed(seed)
    sums = {"true": [], "text_only": [], "empty": [], "shuffled": [], "inverted": []}
    moved: dict[str, list] = {k: [] for k in sums if k != "true"}
    for start in range(0, len(scenes), batch):
        chunk = list(scenes[start:start + batch])
        graphs = [s.graph() for s in chunk]
        x = to_tensor(render_array(chunk)) * 2 - 1
        lat = pipe.vae.encode(x.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean * pipe.vae.config.scaling_factor
        # drawn on the CPU generator (the same noise on every device), then moved to the model
        noise = torch.randn(lat.shape, generator=gen).to(lat.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(chunk),), generator=gen).to(lat.device)
        noisy = sched.add_noise(lat, noise, t)
        # the model's own target: a v-prediction model's output compared with noise would measure nothing
        target = prediction_target(noise, lat, t, sched.alphas_cumprod, kind)
        cond = pipe.encode_graphs(graphs)
        conds = {"true": cond, "text_only": pipe.encode_graphs(graphs, use_graph=False),
                 "empty": pipe.unconditional(cond), "shuffled": cond[torch.arange(len(chunk)).roll(1)],
                 "inverted": pipe.encode_graphs([invert_predicates(g) for g in graphs])}
        ref = cond.prompt_embeds.float()
        for k, c in conds.items():
            if k != "true":
                d = (c.prompt_embeds.float() - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
                moved[k].append(d.cpu().numpy())
            pred = pipe.unet(noisy, t, **c.unet_kwargs(), return_dict=False)[0]
            sums[k].append(((pred - target) ** 2).mean((1, 2, 3)).float().cpu().numpy())
    per = {k: np.concatenate(v) for k, v in sums.items()}
    mse = {k: float(v.mean()) for k, v in per.items()}
    out = {"n_graphs": len(scenes), "seed": seed, "target": kind, "eps_mse": mse,
           "gap_empty": mse["empty"] - mse["true"], "gap_shuffled": mse["shuffled"] - mse["true"],
           "gap_text_only": mse["text_only"] - mse["true"], "gap_inverted": mse["inverted"] - mse["true"],
           "share_of_loss_explained": (mse["empty"] - mse["true"]) / mse["empty"],
           "embedding_change": {k: float(np.concatenate(v).mean()) for k, v in moved.items()}}
    return out


def sample_graph_images(pipe, graphs: Sequence, seeds: Sequence[int], *, noise_keys: Sequence[str] | None,
                        use_graph: bool = True, steps: int = 20, guidance_scale: float = 6.0, eta: float = 0.0,
                        graph_guidance_scale: float | None = None, graph_guidance_min_t: int | None = None,
                        graph_guidance_negative: str | None = None, guidance_rescale: float | None = None,
                        graphs_per_call: int = 16, on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 [G*K, H, W, 3] samples of an SG pipeline, image g*K + k = graph g with ``seeds[k]``, ``graphs_per_call``
    graphs per pipeline call. ``noise_keys``: the graphs' keys (the per-graph noise rule), None: the shared rule (seed
    k for every graph). ``use_graph=False``: the SG model's text path alone (the SG residual left out).
    ``graph_guidance_*``, ``guidance_rescale``: the pipeline's (None: the model folder's default).
    ``on_chunk(n)`` is called after each call with the number of graphs sampled so far."""
    if graph_guidance_scale is not None and not use_graph:
        raise ValueError("graph guidance guides the SG residual; the text path alone has none")
    if not use_graph:  # plain guidance, whatever the model's default graph guidance
        graph_guidance_scale = guidance_scale
    images = []
    for start in range(0, len(graphs), graphs_per_call):
        chunk = list(graphs[start:start + graphs_per_call])
        how = {"graphs": chunk} if use_graph else {"conditioning": pipe.encode_graphs(chunk, use_graph=False)}
        images.append(pipe(**how, seeds=list(seeds),
                           noise_keys=None if noise_keys is None else noise_keys[start:start + len(chunk)],
                           num_inference_steps=steps, guidance_scale=guidance_scale,
                           graph_guidance_scale=graph_guidance_scale, graph_guidance_min_t=graph_guidance_min_t,
                           graph_guidance_negative=graph_guidance_negative, guidance_rescale=guidance_rescale,
                           eta=eta, output_type="np").images)
        if on_chunk is not None:
            on_chunk(start + len(chunk))
    return (np.concatenate(images) * 255).round().astype(np.uint8)


def predicate_probe(pipe, graphs: Sequence, images: np.ndarray, seeds: Sequence[int], *,
                    noise_keys: Sequence[str] | None, steps: int = 20, guidance_scale: float = 6.0, eta: float = 0.0,
                    graphs_per_call: int = 16, n_resamples: int = 1000, seed: int = 0,
                    use_graph: bool = True, graph_guidance_scale: float | None = None,
                    graph_guidance_min_t: int | None = None, graph_guidance_negative: str | None = None,
                    guidance_rescale: float | None = None) -> dict:
    """Does the model draw what the predicates say, or what its noise says?

    ``images`` (uint8, image g*K + k = graph g with ``seeds[k]``) are the model's samples of ``graphs``; the probe
    samples every graph again with its predicates inverted (``world.invert_predicates``) with the same noise (the true
    graph's ``noise_keys``, the per-graph rule; None: the shared rule, seed k for every graph) and scores
    both sets against the *true* graphs with the world oracle (phrase granularity). A model that reads predicates
    loses Relation-IoU on the inverted graphs (their layouts contradict the true relations); one whose layout comes
    from the noise scores the same on both, and its images barely change. Graphs without relations are left out.
    Also reported: the mean absolute pixel change (0-255) between the two samples at the same seed, against the change
    between two seeds of the same true graph (what the noise alone moves)."""
    k = len(seeds)
    keep = [g for g, gr in enumerate(graphs) if gr.relations]
    if not keep:
        raise ValueError("predicate_probe: no graph has a relation")
    true = [graphs[g] for g in keep]
    keys = None if noise_keys is None else [noise_keys[g] for g in keep]
    mine = np.stack([images[g * k + j] for g in keep for j in range(k)])
    # use_graph=False: the SG model's text path alone (the SG residual left out), as the images were sampled
    inverted = sample_graph_images(pipe, [invert_predicates(gr) for gr in true], seeds, noise_keys=keys,
                                   use_graph=use_graph, steps=steps, guidance_scale=guidance_scale, eta=eta,
                                   graph_guidance_scale=graph_guidance_scale,
                                   graph_guidance_min_t=graph_guidance_min_t,
                                   graph_guidance_negative=graph_guidance_negative, guidance_rescale=guidance_rescale,
                                   graphs_per_call=graphs_per_call)
    per_gt = [gr for gr in true for _ in range(k)]
    groups = [g for g in range(len(true)) for _ in range(k)]
    ex = GraphParserExtractor(WorldOracle(), granularity="phrase")
    scores, kinds = {}, {}
    for name, ims in (("true", mine), ("inverted", inverted)):
        preds = [ex.extract(im, reference=gr) for im, gr in zip(ims, per_gt)]
        scores[name] = evaluate_sg_iou(per_gt, preds, mode="normalized", granularity="phrase",
                                       n_resamples=n_resamples, seed=seed, groups=groups)
        kinds[name] = _triples_by_kind(per_gt, preds)
    rel = {n: np.array([s.relation_iou if s is not None else np.nan for s in r.per_image]) for n, r in scores.items()}
    ok = ~(np.isnan(rel["true"]) | np.isnan(rel["inverted"]))
    drop = paired_bootstrap_ci(rel["true"][ok], rel["inverted"][ok], n_resamples=n_resamples, seed=seed,
                               groups=[g for g, o in zip(groups, ok) if o], unit="graph (all seeds together)")
    pixel = np.abs(mine.astype(np.float32) - inverted.astype(np.float32)).mean((1, 2, 3))
    noise_pixel = (np.abs(mine[0::k].astype(np.float32) - mine[1::k].astype(np.float32)).mean((1, 2, 3))
                   if k > 1 else None)
    return {"n_graphs": len(true), "seeds": list(seeds), "noise_rule": "shared" if keys is None else "per-graph",
            "relation_iou_vs_true_graph": {n: float(r.mean["relation_iou"]) for n, r in scores.items()},
            "sg_iou_vs_true_graph": {n: float(r.mean["sg_iou"]) for n, r in scores.items()},
            "relation_iou_drop": drop.to_dict(),
            # per predicate kind, over the true graph's triples: how often both phrases were drawn, and how often the
            # triple then holds. A size relation is implied by the two phrases ("large ... bigger than ... small"),
            # so only the spatial row says whether the layout follows the predicate (chance: about 1 in 4)
            "triples_by_kind": kinds,
            "pixel_change_inverted": float(pixel.mean()),
            "pixel_change_other_seed": None if noise_pixel is None else float(noise_pixel.mean())}


def _triples_by_kind(graphs: Sequence, preds: Sequence) -> dict:
    """Per predicate kind (spatial / size) of the graphs' triples: their number, the share whose two phrases the
    extraction found, and the share of those that hold in it (``sg_iou.triple_counts``, pooled)."""
    out = {}
    for kind, c in triple_counts(graphs, preds).items():
        n, f, h = (int(v) for v in c.sum(0))
        out[kind] = {"triples": n, "both_found": f / n if n else None, "holds_given_found": h / f if f else None}
    return out


@torch.no_grad()
def attention_probe(pipe, scenes: Sequence, *, timesteps: Sequence[int] = (999, 900, 700, 500, 200), seed: int = 0,
                    n_resamples: int = 1000) -> dict:
    """Where the UNet's object tokens attend, by timestep: the share of each object's cross-attention mass inside its
    true box (``models.attn_grounding``; mean over the cross-attention layers, heads and the phrase's tokens, then
    over a graph's objects), on a render's latent noised at ``t`` with one seeded noise, under the true graph and
    under every predicate inverted (the same objects). A base that places objects by its predicates attends less
    inside the true boxes when they are inverted, most of all at high t, where x_t shows little of the layout;
    equal shares mean the placement comes from x_t, not from the conditioning. ``uniform``: the mean box area, the
    share of attention spread evenly. Per t: ``true``, ``inverted``, ``text_only`` (the SG residual left out) and
    ``drop`` = true - inverted with a paired bootstrap interval over graphs. Scenes without an object are skipped."""
    scenes = [s for s in scenes if s.objects]
    graphs = [s.graph() for s in scenes]
    x = to_tensor(render_array(scenes)) * 2 - 1
    lat = pipe.vae.encode(x.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(seed)).to(lat.device)
    gi = build_graph_inputs(graphs, "object", [pipe.tokenizer], [pipe.text_encoder],
                            self_loops=pipe.sg_encoder.config.self_loops if pipe.sg_encoder is not None else True)
    conds = {"true": pipe.encode_graphs(graphs), "inverted": pipe.encode_graphs([invert_predicates(g) for g in graphs]),
             "text_only": pipe.encode_graphs(graphs, use_graph=False)}
    token_w = object_token_weights(gi, conds["true"].prompt_embeds.shape[1]).to(lat.device)
    present = token_w.sum(-1) > 0
    full = box_canvas(graphs, [{i: o.box for i, o in enumerate(s.objects)} for s in scenes], rules.CANVAS,
                      token_w.shape[1])
    masks: dict[int, torch.Tensor] = {}
    out: dict = {"n_graphs": len(scenes), "seed": seed, "by_t": {}}
    for t in timesteps:
        tt = torch.full((len(scenes),), int(t), device=lat.device)
        noisy = pipe.scheduler.add_noise(lat, noise, tt)
        share = {}
        for k, c in conds.items():
            with capture_cross_attention(pipe.unet) as maps:
                pipe.unet(noisy, tt, **c.unet_kwargs(), return_dict=False)
            for res in {int(round(p.shape[1] ** 0.5)) for p in maps} - set(masks):
                masks[res] = pool_masks(full, res).to(lat.device)
            inside = inside_shares(maps, token_w, masks).mean(0)  # (B, O), mean over the layers
            share[k] = ((inside * present).sum(1) / present.sum(1)).cpu().numpy()
        area = next(iter(masks.values())).mean(-1)
        drop = paired_bootstrap_ci(share["true"], share["inverted"], n_resamples=n_resamples, seed=seed)
        out["by_t"][int(t)] = {**{k: float(v.mean()) for k, v in share.items()},
                               "uniform": float(((area * present).sum(1) / present.sum(1)).mean()),
                               "drop": {"estimate": drop.estimate, "low": drop.low, "high": drop.high}}
    return out
