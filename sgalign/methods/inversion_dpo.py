"""Inversion-DPO: the frozen reference fully DDIM-inverts each image (N steps, CFG), the policy is scored on
the same trajectory points.

* ``target='reference'`` (official, ``faithful=True``): diff = m(ε_θ − ε_ref) per point, w_g = 1/(2ᾱ_g),
  L = −log σ(+(β/2)(Dʷ − Dˡ)/P). Exactly zero gradient at θ = θ_ref.
* ``target='trajectory'`` (default): Diffusion-DPO form on the trajectory with τ_g = (x_g − √ᾱ_g x₀)/√(1−ᾱ_g);
  the points are the inverted latents x_g told their own level g, whose ε_ref the inversion already computed
  (source-labelled inversion), so P = N − 1 points and no extra reference forwards.
* A v-prediction base is scored on the ε contract (``MethodContext.eps_policy``; ε_θ − ε_ref = √ᾱ (v_θ − v_ref)):
  the method is defined on the inversion's ε, and the official w_g = 1/(2ᾱ_g) makes its weighted ε term exactly
  ½ m(v_θ − v_ref). The grid's top level (N − 1)·T/N is below T − 1, where a zero-terminal-SNR ᾱ is 0, unless N = T
  (refused with the official weights).
* ``subsample=k``: k of the P points per pair (same for winner and loser), unbiased for the mean.
* ``gradient='constant-memory'``: a no-grad policy pass gives the per-pair σ-coefficient, then each point is
  replayed with grad and back-propagated at once (the method calls backward; ``MethodOutput.backward_done``).
* ``uncond``: the guidance's unconditional branch. ``'model'`` (default): the model's own (SD1.5 empty text, SDXL
  zeros), from ``MethodContext.unconditional``; ``'zeros'`` (official, ``faithful=True``): zero embeddings for every
  model, the official code's SDXL-only convention (it has no SD1.5 path). Identical for SDXL.
* Faithful optimizer: the official run decays weights by wd·lr = 1e-2 × (1e-8 × #GPUs) ≤ 8e-10 of their value per
  step (Adafactor, ``--adam_weight_decay`` 1e-2, ``--scale_lr`` with batch 1, accumulation 1), less than half an
  fp32 ulp (≥ 2⁻²⁵ ≈ 3e-8 relative), so it never changes a weight: its effective weight decay is exactly 0. At our
  learning rates a 1e-2 decay would move θ off θ_ref at step 1 and give the zero-gradient objective a gradient, so
  ``faithful=True`` asks for ``optimizer.weight_decay=0`` (``Method.optimizer_overrides``, merged into the
  resolved training config).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..diffusion.batching import cat_rows
from ..diffusion.cache import cached_invert
from ..diffusion.guidance import ZEROS, Unconditional, guided
from ..diffusion.schedule import alpha_at
from .base import (Count, InitialAlpha, Method, MethodConfig, MethodContext, MethodOutput, NonNegative, PairBatch,
                   Positive)
from .functional import (diffusion_dpo_loss, inpo_target, inversion_dpo_loss, inversion_step_weights,
                         per_sample_mse)
from .registry import register_method


@dataclass
class InversionDPOConfig(MethodConfig):
    beta: Positive = 2000.0  # official launcher (argparse 5000)
    num_steps: Count = 80  # official launcher N (argparse 40); Δ = T // N
    guidance_scale: NonNegative = 2.0  # CFG in inversion and in the policy pass (unconditional branch: ``uncond``)
    subsample: Count | None = None  # k points per pair; None = all (official)
    gradient: Literal["standard", "constant-memory"] = "standard"
    use_cache: bool = True  # reference inversion is deterministic: cache it when a cache is given
    target: Literal["reference", "trajectory"] | None = None
    initial_alpha: InitialAlpha | None = None
    step_weighting: Literal["uniform", "inv-alpha"] | None = None
    # 'model' (SD1.5 empty text, SDXL zeros) or 'zeros' (official, every model)
    uncond: Literal["model", "zeros"] | None = None
    _corrected = {"target": "trajectory", "initial_alpha": "one", "step_weighting": "uniform", "uncond": "model"}
    _official = {"target": "reference", "initial_alpha": "alpha0", "step_weighting": "inv-alpha", "uncond": "zeros"}
    _official_optimizer = {"weight_decay": 0.0}  # the official wd·lr is below fp32 resolution (module docstring)


def unconditional_branch(cfg, ctx: MethodContext) -> Unconditional:
    """The guidance's unconditional branch chosen by ``cfg.uncond`` (see the module docstring)."""
    if cfg.uncond == "zeros":
        return ZEROS
    if cfg.uncond != "model":
        raise ValueError(f"uncond must be 'model' or 'zeros', got {cfg.uncond!r}")
    if ctx.unconditional is None:
        raise ValueError("uncond='model' needs MethodContext.unconditional (the model's own unconditional branch: "
                         "SD1.5 empty text, SDXL zeros; the trainer provides it); or set uncond='zeros'")
    return ctx.unconditional


@register_method("inversion-dpo")
class InversionDPO(Method):
    config_class = InversionDPOConfig

    def provide(self, batch: PairBatch, ctx: MethodContext) -> dict[str, Any]:
        cfg = self.config.resolve()
        if cfg.target not in ("reference", "trajectory"):
            raise ValueError(f"inversion-dpo target must be 'reference' or 'trajectory', got {cfg.target!r}")
        B, dev, ac, T = batch.size, batch.x0_w.device, ctx.alphas_cumprod, ctx.num_train_timesteps
        N, d = cfg.num_steps, T // cfg.num_steps
        ia = 1.0 if cfg.initial_alpha == "one" else ac[0]
        levels = torch.tensor([-d] + [k * d for k in range(N)], device=dev)
        # official: ε at (x_{g−Δ}, g); trajectory target: ε at (x_g, g) so the inversion's ε_ref is reusable
        labels = levels[1:] if cfg.target == "reference" else levels[:-1].clamp(min=0)
        if cfg.step_weighting == "inv-alpha" and bool((alpha_at(ac, labels, ia) <= 0).any()):
            # a zero-terminal-SNR schedule's last level (alpha_bar = 0), reached when N = T: the weight is infinite
            raise ValueError(f"inversion-dpo: step_weighting 'inv-alpha' (1/(2 alpha_bar)) at a level where alpha_bar "
                             f"= 0 (num_steps={N} of T={T} reaches t = T - 1); use fewer steps or "
                             "step_weighting='uniform'")
        x0 = torch.cat([batch.x0_w, batch.x0_l])
        cond2 = cat_rows([batch.cond, batch.cond])
        use_cache = cfg.use_cache and ctx.cache is not None
        if use_cache and ctx.reference_hash is None:
            raise ValueError("a trajectory cache needs MethodContext.reference_hash (diffusion.model_fingerprint(ref))")
        ids = (batch.image_ids_w + batch.image_ids_l) if batch.image_ids_w and batch.image_ids_l else None
        u = self._uncond(cfg, ctx)
        tr = cached_invert(ctx.cache if use_cache else None, x0, guided(ctx.eps_reference, cfg.guidance_scale, u),
                           levels, ac, cond2, labels=labels, initial_alpha=ia, model_hash=ctx.reference_hash or "",
                           grid_spec=f"full(steps={N},T={T},labels={cfg.target})",
                           guidance_spec=f"cfg={cfg.guidance_scale}" + (f":{u.spec}" if u else "")
                           + ("" if ctx.prediction == "epsilon" else f":{ctx.prediction}"), image_ids=ids)
        if cfg.target == "reference":
            xs, labs, eps_ref = tr.latents[:, :N], tr.labels, tr.eps_point
            tau = None
        else:
            xs, labs, eps_ref = tr.latents[:, 1:N], tr.labels[:, 1:], tr.eps_point[:, 1:]
            a = alpha_at(ac, tr.levels[:, 1:N], ia).to(x0.dtype)
            tau = inpo_target(xs, x0[:, None], a[..., None, None, None])
        P = labs.shape[1]
        if cfg.subsample is not None:
            if not 1 <= cfg.subsample <= P:
                raise ValueError(f"subsample must be in 1..{P}, got {cfg.subsample}")
            gdev = ctx.generator.device if ctx.generator is not None else "cpu"
            pick = torch.rand(B, P, generator=ctx.generator, device=gdev).argsort(1)[:, :cfg.subsample]
            pick = pick.sort(1).values.to(dev)
            pick = torch.cat([pick, pick])
            take = lambda z: z.gather(1, pick.view(*pick.shape, *([1] * (z.dim() - 2))).expand(-1, -1, *z.shape[2:]))
            xs, labs, eps_ref = take(xs), take(labs), take(eps_ref)
            tau = take(tau) if tau is not None else None
        a_lab = alpha_at(ac, labs, ia).float()
        if cfg.step_weighting == "inv-alpha":
            w = inversion_step_weights(a_lab)
        elif cfg.step_weighting == "uniform":
            w = torch.ones_like(a_lab)
        else:
            raise ValueError(f"step_weighting must be 'inv-alpha' or 'uniform', got {cfg.step_weighting!r}")
        return {"x": xs, "t": labs, "eps_ref": eps_ref, "tau": tau, "weights": w[:B], "cond2": cond2,
                "cache_used": use_cache, "points": labs.shape[1], "uncond": u.spec if u else None}

    def loss_space(self, ctx: MethodContext) -> str:
        return "epsilon"  # module docstring: the inversion's ε, whatever the model predicts

    @staticmethod
    def _uncond(cfg, ctx: MethodContext) -> Unconditional | None:
        return unconditional_branch(cfg, ctx) if cfg.guidance_scale != 1.0 else None

    def _point_terms(self, p, j, e):
        """(2B,) per-row term whose winner − loser difference the loss is linear in, for point j."""
        return per_sample_mse(e, p["eps_ref"][:, j] if p["tau"] is None else p["tau"][:, j])

    def _loss_from(self, p, diffs: torch.Tensor):
        cfg = self.config.resolve()
        B, P = p["weights"].shape
        dw, dl = diffs[:B], diffs[B:]
        if p["tau"] is None:
            return inversion_dpo_loss(dw, dl, p["weights"], cfg.beta)
        ref = per_sample_mse(p["eps_ref"], p["tau"])  # (2B, P)
        w = p["weights"]
        red = lambda z: (w * z).sum(1) / P
        return diffusion_dpo_loss(red(dw), red(dl), red(ref[:B]), red(ref[B:]), cfg.beta)

    def loss(self, p: dict[str, Any], batch: PairBatch, ctx: MethodContext) -> MethodOutput:
        cfg = self.config.resolve()
        pol = guided(ctx.eps_policy, cfg.guidance_scale, self._uncond(cfg, ctx))
        P = p["points"]
        # uncond_branch: what the unconditional branch actually was (e.g. 'empty-text' for an SD1.5 'model' branch)
        prov = {"cache_used": p["cache_used"], "points_per_image": P, "uncond_branch": p["uncond"]}
        if cfg.gradient == "standard":
            # the official target keeps one call per point: its exact zero gradient at θ = θ_ref needs ε_θ from
            # calls shaped as the inversion's ε_ref calls (CPU kernels round differently at other batch sizes)
            e = point_eps(pol, p["x"], p["t"], p["cond2"], fused=p["tau"] is not None)
            diffs = torch.stack([self._point_terms(p, j, e[j]) for j in range(P)], 1)
            out = self._loss_from(p, diffs)
            return MethodOutput(out.loss.mean(), out.loss.detach(), _m(out), provenance=prov)
        if cfg.gradient != "constant-memory":
            raise ValueError(f"gradient must be 'standard' or 'constant-memory', got {cfg.gradient!r}")
        with torch.no_grad():
            diffs = torch.stack([self._point_terms(p, j, pol(p["x"][:, j], p["t"][:, j], p["cond2"]))
                                 for j in range(P)], 1)
            out = self._loss_from(p, diffs)
            B = p["weights"].shape[0]
            # dL/dz_b = −σ(−z_b)/B; z is linear in Σ_j w_j (dʷ − dˡ) with slope ±(β/2)/P
            sign = 1.0 if p["tau"] is None else -1.0
            coef = -torch.sigmoid(-out.logits) / B * sign * 0.5 * cfg.beta / P
        backward = ctx.backward or (lambda z: z.backward())
        for j in range(P):
            e = pol(p["x"][:, j], p["t"][:, j], p["cond2"])
            dj = self._point_terms(p, j, e)
            backward((coef * p["weights"][:, j] * (dj[:B] - dj[B:])).sum())
        return MethodOutput(out.loss.mean(), out.loss.detach(), _m(out), backward_done=True, provenance=prov)


def point_eps(eps_fn, x: torch.Tensor, t: torch.Tensor, cond, fused: bool = True) -> list[torch.Tensor]:
    """ε at every trajectory point: x (R, P, …), t (R, P) -> P tensors (R, …). ``fused``: all R·P rows in one
    call (the standard gradient keeps every point's activations anyway, so one call costs no extra memory and
    saves P − 1 calls' overhead); else one call per point."""
    R, P = t.shape
    if not fused:
        return [eps_fn(x[:, j], t[:, j], cond) for j in range(P)]
    xs = x.transpose(0, 1).reshape(R * P, *x.shape[2:])  # point-major: rows of point j are one block
    e = eps_fn(xs, t.t().reshape(-1), cat_rows([cond] * P))
    return list(e.view(P, R, *e.shape[1:]).unbind(0))


def _m(out) -> dict[str, float]:
    return {"implicit_acc": out.implicit_acc.mean().item(), "logit": out.logits.mean().item()}
