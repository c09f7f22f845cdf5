"""SFT: the standard denoising loss (ε, or v for a v-prediction base) on the winner (or the best-scored candidate) of
each pair."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .base import Method, MethodConfig, MethodContext, MethodOutput, PairBatch, randn_like, sample_timesteps
from .diffusion_dpo import forward_noise
from .functional import per_sample_mse, sft_loss
from .registry import register_method


@dataclass
class SFTConfig(MethodConfig):
    pick: Literal["winner", "best-score"] = "winner"  # best-score needs scores: the higher-scored of the two


@register_method("sft")
class SFT(Method):
    config_class = SFTConfig

    def provide(self, batch: PairBatch, ctx: MethodContext) -> dict[str, Any]:
        x0 = batch.x0_w
        if self.config.pick == "best-score":
            if batch.score_w is None or batch.score_l is None:
                raise ValueError("sft with pick='best-score' needs score_w and score_l in the batch")
            best_w = (batch.score_w >= batch.score_l).view(-1, 1, 1, 1).to(x0.device)  # scores may be on the CPU
            x0 = batch.x0_w.where(best_w, batch.x0_l)
        elif self.config.pick != "winner":
            raise ValueError(f"sft pick must be 'winner' or 'best-score', got {self.config.pick!r}")
        t = sample_timesteps(batch.size, ctx.num_train_timesteps, ctx.generator, x0.device)
        eps = randn_like(x0, ctx.generator)
        return {"x_t": forward_noise(x0, eps, t, ctx.alphas_cumprod), "t": t, "target": ctx.target(eps, x0, t)}

    def loss(self, p: dict[str, Any], batch: PairBatch, ctx: MethodContext) -> MethodOutput:
        per = sft_loss(per_sample_mse(ctx.policy(p["x_t"], p["t"], batch.cond), p["target"]))
        return MethodOutput(per.mean(), per.detach(), {"model_mse": per.mean().item()})
