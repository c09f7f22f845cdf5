"""The five alignment methods as latent/target providers plus pure losses, behind one interface.

A generic trainer never names a method; it does::

    # cfg.method: 'diffusion-dpo' | 'inversion-dpo' | 'inpo' | 'smpo' | 'sft'
    method = build_method(cfg.method, **cfg.method_options)
    ctx = MethodContext(policy=policy_fn, reference=ref_fn, alphas_cumprod=ac, generator=gen,
                        cache=TrajectoryCache(dir) or None, reference_hash=model_fingerprint(ref_unet),
                        backward=accelerator.backward, unconditional=uncond,  # uncond: diffusion.Unconditional
                        prediction=scheduler.config.prediction_type)  # 'epsilon' | 'v_prediction'
    out = method(PairBatch(x0_w, x0_l, cond, score_w, score_l), ctx)   # latents (B, C, H, W)
    if not out.backward_done:
        accelerator.backward(out.loss)
    log(out.metrics, out.forwards.as_dict(), out.provenance)

* The networks are ``fn(x_t, t, cond) -> output`` (t integer, per row), the output ε or v (``prediction``); ``cond``
  is opaque, only row-selected / concatenated (``sgalign.diffusion.batching``). Methods regress in the model's own
  space (``ctx.target``: diffusers' DPO script does so for v) and invert on ε (``ctx.eps_policy`` /
  ``ctx.eps_reference``); Inversion-DPO is defined on the inversion's ε and scores v models there too. Guidance is
  folded into ε functions by the methods that use it.
* ``Method.provide(batch, ctx)`` (no grad) returns the noisy latents, timesteps and targets;
  ``Method.loss(provided, batch, ctx)`` evaluates policy (grad) and reference (no grad) and applies the pure loss
  of ``sgalign.methods.functional``. ``__call__`` runs both with counted networks: ``MethodOutput.forwards`` holds
  UNet forwards per pair (policy/reference × grad/no-grad).
* Each method's config is a dataclass with ``faithful``: options left ``None`` resolve to the official code's
  behaviour when ``faithful=True`` and to our corrected default otherwise; ``MethodOutput.provenance`` records the
  resolved options. ``Method.optimizer_overrides()`` names optimizer settings a faithful run needs (merged into the
  training config when it is resolved, unless configured explicitly).
"""
from . import diffusion_dpo, inpo, inversion_dpo, sft, smpo  # noqa: F401  (registration)
from .base import Method, MethodConfig, MethodContext, MethodOutput, PairBatch
from .diffusion_dpo import DiffusionDPO, DiffusionDPOConfig
from .inpo import InPO, InPOConfig
from .inversion_dpo import InversionDPO, InversionDPOConfig
from .registry import available_methods, build_method, get_method_class, register_method, unregister_method
from .sft import SFT, SFTConfig
from .smpo import SmPO, SmPOConfig

__all__ = [
    "DiffusionDPO", "DiffusionDPOConfig", "InPO", "InPOConfig", "InversionDPO", "InversionDPOConfig", "Method",
    "MethodConfig", "MethodContext", "MethodOutput", "PairBatch", "SFT", "SFTConfig", "SmPO", "SmPOConfig",
    "available_methods", "build_method", "get_method_class", "register_method", "unregister_method",
]
