"""Train the world base from scratch in one command: world VAE -> latent cache -> stage 1 -> stage 2.

    python scripts/pretrain_world.py --out runs/world-base --minutes 90 [--device cuda] [--threads 1]
    python scripts/pretrain_world.py --out runs/world-base --minutes 90       # again: resumes where it stopped

Ends with ``OUT/world-sd15-sg`` (a complete SD1.5-SG pipeline folder + training_record.json listing every stage);
``OUT/stage1/pipeline`` is the text-only world SD1.5 (the t2i base). Recipe: ``sgalign.jobs.world_base``.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sgalign.errors import run_main  # noqa: E402
from sgalign.jobs.world_base import (STAGES, ZERO_SNR_V, StageBudget, WorldBaseRecipe, recipe_of,  # noqa: E402
                                     run_world_base, snapshot_stage)
from sgalign.pipelines.sg_pipeline import check_guidance_rescale  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    d = WorldBaseRecipe()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=d.out)
    ap.add_argument("--minutes", type=float, default=d.minutes, help="budget of the whole recipe (wall minutes)")
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--vae-init", default=d.vae_init,
                    help="VAE folder the VAE stage fine-tunes ('' trains one from scratch)")
    ap.add_argument("--vae-steps", type=int, default=d.vae.steps)
    ap.add_argument("--cache-graphs", type=int, default=d.cache_graphs)
    ap.add_argument("--stage1-steps", type=int, default=d.stage1.steps)
    ap.add_argument("--stage1-share", type=float, default=d.stage1.share,
                    help="stage 1 stops at this share of --minutes (0: no time limit, only --stage1-steps)")
    ap.add_argument("--stage2-steps", type=int, default=d.stage2.steps)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--offset-noise", type=float, default=d.offset_noise,
                    help="stage 1 offset noise (per-image, per-channel constant added to the noise, x this std)")
    ap.add_argument("--stage1-graph", action=argparse.BooleanOptionalAction, default=d.stage1_graph,
                    help="train the SG encoder jointly in stage 1, gate open (--no-stage1-graph: text only, as before)")
    ap.add_argument("--graph-drop-prob", type=float, default=d.graph_drop_prob,
                    help="stage 1 with the graph: share of rows conditioned on the text alone")
    ap.add_argument("--text-lr", type=float, default=d.text_lr, help="stage 1 text-encoder lr")
    ap.add_argument("--sg-layout-steps", type=int, default=d.sg_layout_steps,
                    help="box-regression pre-training steps of the SG encoder before stage 1 (0: none)")
    ap.add_argument("--sg-layout-weight", type=float, default=d.sg_layout_weight,
                    help="stage 1: weight of the SG encoder's box-regression loss added to epsilon-MSE (0: none)")
    ap.add_argument("--t-high-frac", type=float, default=d.t_high_frac,
                    help="stage 1: share of rows whose timestep is drawn from [--t-high-min, T)")
    ap.add_argument("--t-high-min", type=int, default=d.t_high_min)
    ap.add_argument("--attn-ground-weight", type=float, default=d.attn_ground_weight,
                    help="stage 1: weight of the cross-attention grounding loss (each object's tokens attend inside "
                         "its box; TokenCompose's token loss) added to epsilon-MSE (0: none)")
    ap.add_argument("--attn-ground-t-min", type=int, default=d.attn_ground_t_min,
                    help="stage 1: the grounding loss only on rows with t >= this (below it the image shows the layout)")
    ap.add_argument("--attn-ground-grad", choices=["all", "unet"], default=d.attn_ground_grad,
                    help="stage 1: the grounding loss reaches the text/SG encoders through the attention keys ('all') "
                         "or not ('unet': keys from detached conditioning)")
    ap.add_argument("--relation-contrast-weight", type=float, default=d.relation_contrast_weight,
                    help="stage 1: weight of the relation contrast: the same x_t under every predicate inverted should "
                         "denoise worse than under the true graph, -log sigmoid(beta (mse_inv - mse_true)) (0: none)")
    ap.add_argument("--relation-contrast-beta", type=float, default=d.relation_contrast_beta)
    ap.add_argument("--relation-contrast-t-min", type=int, default=d.relation_contrast_t_min,
                    help="stage 1: the relation contrast only on rows with t >= this")
    ap.add_argument("--guidance-scale", type=float, default=d.guidance_scale, metavar="S",
                    help="the folder's default classifier-free guidance scale (model_index.json; the noise-mean "
                         "calibration samples with it; 6 was chosen for the epsilon base, a zero-SNR v base wants "
                         "less)")
    ap.add_argument("--guidance-rescale", type=float, default=d.guidance_rescale, metavar="PHI",
                    help="the folder's default guidance rescale in [0, 1] (Lin et al. 2024; 0: off)")
    ap.add_argument("--graph-guidance", type=float, default=d.graph_guidance_scale, metavar="S_G",
                    help="the folder's default sampler: the graph's own term guided at S_G (sg_pipeline's graph "
                         "guidance; default: plain guidance)")
    ap.add_argument("--graph-guidance-min-t", type=int, default=d.graph_guidance_min_t, metavar="T",
                    help="... on the sampling steps with t >= T only")
    ap.add_argument("--graph-guidance-negative", choices=("text", "swapped"), default=d.graph_guidance_negative,
                    help="... against this negative branch (sg_pipeline's docstring)")
    ap.add_argument("--min-snr-gamma", type=float, default=d.min_snr_gamma,
                    help="stage 1 min-SNR-gamma loss weights (0: plain MSE; for v-prediction the weights vanish at "
                         "t = T, where the layout is decided)")
    ap.add_argument("--min-snr-floor", type=float, default=d.min_snr_floor,
                    help="stage 1: no min-SNR weight below this, in [0, 1] (keeps v-prediction's t = T rows in the "
                         "loss; 0: none)")
    ap.add_argument("--stage1-eps-steps", type=int, default=d.stage1_eps_steps,
                    help="with --zero-snr-v: stage 1's first N steps train an epsilon target on the default schedule "
                         "(no grounding or relation contrast), then the v target (0: none)")
    ap.add_argument("--stage1-v-restart", action="store_true",
                    help="with --stage1-eps-steps: the v phase gets its own lr warmup and cosine (a warm restart) "
                         "instead of the tail of one cosine over stage 1")
    ap.add_argument("--zero-snr-v", action="store_true",
                    help="zero-terminal-SNR schedule with v-prediction and trailing sampling steps (Lin et al. 2024): "
                         "at t = T the layout can only come from the conditioning")
    ap.add_argument("--snapshot", metavar="DST", default=None,
                    help="write the --out run's last stage-1 checkpoint (EMA weights) as a pipeline folder DST, "
                         "labelled a snapshot, and exit (the run's own settings are read from OUT/recipe.json)")
    ap.add_argument("--only", choices=STAGES, default=None, help="run just this stage (if its inputs are done)")
    a = ap.parse_args(argv)
    if a.graph_guidance is not None and not math.isfinite(a.graph_guidance):
        ap.error(f"--graph-guidance must be a finite number, got {a.graph_guidance}")
    try:
        check_guidance_rescale(a.guidance_rescale, "--guidance-rescale")
    except ValueError as e:
        ap.error(str(e))
    if not (math.isfinite(a.guidance_scale) and a.guidance_scale > 1):
        ap.error(f"--guidance-scale must be a finite number > 1 (1 turns classifier-free guidance off, and the "
                 f"folder's graph guidance with it), got {a.guidance_scale}")
    if not (math.isfinite(a.min_snr_floor) and 0 <= a.min_snr_floor <= 1):
        ap.error(f"--min-snr-floor must be in [0, 1], got {a.min_snr_floor}")
    if a.min_snr_floor > 0 and a.min_snr_gamma == 0:
        ap.error("--min-snr-floor applies to min-SNR weights: set --min-snr-gamma > 0 (0 is plain MSE)")
    if a.stage1_eps_steps and not (a.zero_snr_v and 0 < a.stage1_eps_steps < a.stage1_steps):
        ap.error(f"--stage1-eps-steps needs --zero-snr-v and must be in (0, --stage1-steps), got "
                 f"{a.stage1_eps_steps}")
    if a.stage1_v_restart and not a.stage1_eps_steps:
        ap.error("--stage1-v-restart restarts the lr schedule at the end of --stage1-eps-steps: set that too")
    if not (math.isfinite(a.stage1_share) and 0 <= a.stage1_share <= 1):
        ap.error(f"--stage1-share must be in [0, 1], got {a.stage1_share}")
    if not (math.isfinite(a.relation_contrast_weight) and a.relation_contrast_weight >= 0):
        ap.error(f"--relation-contrast-weight must be >= 0 (a negative weight rewards the inverted predicates), got "
                 f"{a.relation_contrast_weight}")
    if not (math.isfinite(a.relation_contrast_beta) and a.relation_contrast_beta > 0):
        ap.error(f"--relation-contrast-beta must be > 0, got {a.relation_contrast_beta}")
    if a.snapshot:
        r = recipe_of(a.out)
        r.threads = a.threads or r.threads
        dst = snapshot_stage(r, 1, a.snapshot, log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
        print(f"next: python scripts/bench_world_base.py --model {shlex.quote(str(dst))} --split validation")
        return 0
    r = WorldBaseRecipe(out=a.out, minutes=a.minutes, device=a.device, threads=a.threads, seed=a.seed,
                        vae_init=a.vae_init or None,
                        vae=StageBudget(a.vae_steps, d.vae.share), cache_graphs=a.cache_graphs,
                        stage1=StageBudget(a.stage1_steps, a.stage1_share),
                        stage2=StageBudget(a.stage2_steps, d.stage2.share), batch=a.batch,
                        offset_noise=a.offset_noise, stage1_graph=a.stage1_graph,
                        graph_drop_prob=a.graph_drop_prob, text_lr=a.text_lr,
                        sg_layout_steps=a.sg_layout_steps, sg_layout_weight=a.sg_layout_weight,
                        t_high_frac=a.t_high_frac, t_high_min=a.t_high_min,
                        attn_ground_weight=a.attn_ground_weight, attn_ground_t_min=a.attn_ground_t_min,
                        attn_ground_grad=a.attn_ground_grad,
                        relation_contrast_weight=a.relation_contrast_weight,
                        relation_contrast_beta=a.relation_contrast_beta,
                        relation_contrast_t_min=a.relation_contrast_t_min, min_snr_gamma=a.min_snr_gamma,
                        min_snr_floor=a.min_snr_floor, stage1_eps_steps=a.stage1_eps_steps,
                        stage1_v_restart=a.stage1_v_restart,
                        guidance_scale=a.guidance_scale, guidance_rescale=a.guidance_rescale,
                        graph_guidance_scale=a.graph_guidance, graph_guidance_min_t=a.graph_guidance_min_t,
                        graph_guidance_negative=a.graph_guidance_negative,
                        scheduler={**d.scheduler, **(ZERO_SNR_V if a.zero_snr_v else {})})
    command = "python scripts/pretrain_world.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    t0 = time.time()
    final = run_world_base(r, command=command, only=a.only,
                           log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    print(f"done in {time.time() - t0:.0f}s: {final}")
    print(f"next: python scripts/bench_world_base.py --model {shlex.quote(str(final))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, prog="pretrain_world.py"))
