"""The world base recipe: world VAE -> latent cache -> SG layout -> stage 1 (text -> image) -> stage 2 (SG encoder).

    python scripts/pretrain_world.py --out runs/world-base --minutes 90        # CPU default; --device cuda on a GPU

Why these stages (measurements in docs/RESULTS.md, "World base model"):

* **VAE** from scratch with the latent-interpolation consistency term (``world.models.vae``): latent blends decode
  to RGB blends, so a blurry prediction decodes to a paler version of the right colour, not to another colour.
* **Cache**: the train graphs rendered and VAE-encoded once (posterior mean and std, an HF ``datasets`` Arrow table
  on disk); a step then samples its latents instead of rendering and encoding (step time halves on CPU).
* **SG layout** (off unless ``sg_layout_steps``): sg2im's box regression for the fresh SG encoder
  (``models.sg_layout``), and optionally the same loss beside stage 1's ε-MSE (``sg_layout_weight``), so the encoder
  carries where each object goes instead of flattening into a constant.
* **Stage 1** (LAION-SG's base model, and the world SD1.5 the t2i task starts from): UNet + text encoder trained
  jointly on the serialised-graph text, as the original LDM trained its text transformer with the UNet; a frozen
  text tower left the UNet nearly ignoring its text (conditioning gap 10 % of the loss). Min-SNR-5 weighting,
  10 % empty-text rows for classifier-free guidance, EMA of both. By default (``stage1_graph``) the SG encoder
  (variance-keeping init, gate open) trains with them, so the graph's relation channel exists while the UNet learns
  to draw; ``graph_drop_prob`` of the rows use the text alone, so the text path stays a model of its own (the t2i
  base). ``--no-stage1-graph`` is the text-only stage 1 of the base shipped before wave 3.
* **Stage 2** (LAION-SG's SDXL-SG training): the SG encoder alone, UNet and text encoder frozen, plain epsilon-MSE.

Every stage writes its output folder atomically and a ``done.json``; stages 1 and 2 also checkpoint (weights,
EMA, optimiser, step) every ``save_every`` steps, so a killed run resumes where it stopped with the same command.
``--minutes`` is the budget of the whole recipe: each stage stops at its step count or its time share, whichever
comes first, and the record says which. ``training_record.json`` in the final folder lists every stage.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..diffusion.loop import Loop, min_snr_weights, warmup_cosine
from ..diffusion.prediction import prediction_target
from ..errors import UserError
from ..hashing import replace_dir, write_json_atomic
from ..machine import machine_info
from ..models.attn_grounding import (box_canvas, capture_cross_attention, grounding_loss, object_token_weights,
                                     pool_masks)
from ..models.conditioning import build_conditioning
from ..models.graph_inputs import build_graph_inputs
from ..models.loading import load_model, load_sg_encoder
from ..models.sg_encoder import SGEncoder, input_sensitivity
from ..models.sg_layout import LayoutHead, layout_loss, node_boxes
from ..training.pretrain_sg import make_pipeline, param_groups
from ..world import rules
from ..world.models.clip import store_token_table_fp16
from ..world.models.data import to_tensor
from ..world.models.record import write_record
from ..world.models.vae import (VaeTrainArgs, blend_test, evaluate_world_vae, latent_channel_stats,
                                latent_scaling_factor, load_world_vae, normalise_latent_channels, train_world_vae)
from ..world.render import render_array
from ..world.sampler import (SPLIT_CODE, WorldObject, WorldScene, invert_predicates, sample_scene, sample_split,
                             split_of)

Stage = Literal["vae", "cache", "sg_layout", "stage1", "stage2"]
STAGES: tuple[Stage, ...] = ("vae", "cache", "sg_layout", "stage1", "stage2")
RECORD_NAME = "training_record.json"
# zero-terminal-SNR + v-prediction (Lin et al. 2024), the scheduler settings of the recipe's --zero-snr-v
ZERO_SNR_V = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
# stage 1's epsilon warm phase (stage1_eps_steps): ZERO_SNR_V's three settings back at DDIMScheduler's defaults (the
# recipe's default schedule) and min-SNR 5, the recipe's default weights (E's objective, docs/RESULTS.md)
EPS_WARM = {"rescale_betas_zero_snr": False, "prediction_type": "epsilon", "timestep_spacing": "leading"}
EPS_WARM_MIN_SNR_GAMMA = 5.0

REPO = Path(__file__).resolve().parents[2]
WORLD_CLIP = REPO / "sgalign" / "world" / "weights" / "world-clip"


def _warm_scheduler(config: dict):
    """The epsilon warm phase's scheduler, from the run's own scheduler config."""
    from diffusers import DDIMScheduler  # heavy: as load_pipeline
    return DDIMScheduler.from_config({**config, **EPS_WARM})


@dataclass
class StageBudget:
    steps: int
    share: float  # fraction of the recipe's minutes this stage may use at most (0: no time cap)


@dataclass
class WorldBaseRecipe:
    out: str = "runs/world-base"
    minutes: float = 90.0
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    # VAE
    # the VAE stage fine-tunes the plain L1 + KL world VAE (scripts/pretrain_vae.py --interp-weight 0, 1000 steps;
    # its recorded training time counts in the recipe's total) with the consistency term: measured better than the
    # same term from scratch at this CPU budget (docs/WORLD_MODELS.md). None: from scratch.
    vae_init: str | None = "sgalign/world/weights/world-vae"
    vae: StageBudget = field(default_factory=lambda: StageBudget(steps=577, share=0.125))
    vae_batch: int = 16
    vae_lr: float = 5e-4
    vae_interp_weight: float = 1.0
    vae_interp_paths: Literal["background", "background+pairs"] = "background"
    vae_eval_graphs: int = 500  # test renders for PSNR / oracle accuracy (and validation renders for the scale)
    # per-channel: latents made zero-mean, unit-std per channel inside the VAE's weights (world.models.vae:
    # normalise_latent_channels; without it samples are pulled to a wrong latent mean). scale: SD's scalar only.
    vae_latent_norm: Literal["per-channel", "scale"] = "per-channel"
    # cache
    cache_graphs: int = 24576
    # stage 1: UNet + text encoder
    stage1: StageBudget = field(default_factory=lambda: StageBudget(steps=4000, share=0.45))
    batch: int = 32
    unet_lr: float = 2e-3
    text_lr: float = 5e-4
    min_snr_gamma: float = 5.0
    # no min-SNR weight below this (diffusion.loop.min_snr_weights). With v-prediction the min-SNR weights are
    # epsilon-MSE's own (alpha_bar x v-MSE) capped at gamma, 0 at t = T; plain v-MSE instead gives the high-t rows
    # (loss ~ the whole image) most of the gradient. A floor keeps the layout rows in without that. 0: none.
    min_snr_floor: float = 0.0
    # v-prediction only: the first stage1_eps_steps steps of stage 1 train an epsilon target on the default schedule
    # (EPS_WARM, min-SNR 5, no grounding or relation contrast), the rest the configured v target; the model's output
    # changes meaning at the switch and re-learns it. Zero-terminal-SNR v from step 0 learns entities slowly (R1:
    # Entity-IoU 0.41 at 6,000 steps; E, epsilon: 0.79 at 4,000), while the Z line (4,800 epsilon steps, then v) kept
    # them (docs/RESULTS.md). 0: off.
    stage1_eps_steps: int = 0
    # with stage1_eps_steps: the v phase gets its own warmup and cosine (a warm restart) instead of the tail of one
    # cosine over the stage. Measured: W1's v phase, 3,000 steps at 0.39x to 0 of the peak lr, learnt no relations.
    stage1_v_restart: bool = False
    uncond_prob: float = 0.1
    # offset noise (a per-image, per-channel constant added to the noise, x its std): see run_diffusion_stage
    offset_noise: float = 0.0
    ema_decay: float = 0.999
    warmup_steps: int = 100
    # stage 1 with the graph: the SG encoder trains jointly with the UNet and text encoder, its gate open, so the
    # relation channel is there while the UNet learns to draw (a fine-tune from a text-only UNet turned a fresh SG
    # path down: docs/RESULTS.md). graph_drop_prob of the conditioned rows use the text alone, so the text path stays
    # a model of its own (the t2i base; LAION-SG's "SG path vs text alone" is then a comparison of two trained paths)
    stage1_graph: bool = True
    graph_drop_prob: float = 0.2
    # layout supervision of the SG encoder (models.sg_layout, sg2im's box regression): sg_layout_steps of box
    # regression before stage 1 (text encoder frozen), then sg_layout_weight x the box loss added to stage 1's loss so
    # the encoder keeps saying where each object goes (epsilon-MSE alone flattens it: docs/RESULTS.md). 0: off.
    sg_layout_steps: int = 0
    sg_layout_batch: int = 128
    sg_layout_lr: float = 1e-3
    sg_layout_weight: float = 0.0
    sg_layout_eval_graphs: int = 512  # validation graphs of the stage's box fit (R^2) and sensitivity probe
    # stage 1 timesteps: t_high_frac of the rows draw t from [t_high_min, T) instead of [0, T), more of the steps
    # where the layout is not yet in x_t and can only come from the conditioning. 0: uniform (as before).
    t_high_frac: float = 0.0
    t_high_min: int = 600
    # attn_ground_weight x the cross-attention grounding loss (models.attn_grounding, TokenCompose's token loss):
    # each object's phrase tokens should attend inside its box, so where an object goes has to come from its
    # conditioning (phrase, predicates, SG residual). 0: off.
    attn_ground_weight: float = 0.0
    # ... on the rows with t >= attn_ground_t_min only: below it x_t shows where each object is, and the loss is met
    # by reading the image instead of the conditioning (docs/RESULTS.md). 0: every row.
    attn_ground_t_min: int = 0
    # ... reaching the encoders through the keys ("all", TokenCompose's) or not ("unet": the captured maps' keys come
    # from detached conditioning states, so the term trains the UNet's attention). Measured (docs/RESULTS.md, section
    # 7): "unet" brought no entities back and weakened the relations; the key path carries part of them.
    attn_ground_grad: Literal["all", "unet"] = "all"
    # relation_contrast_weight x a contrastive denoising loss on the relations: on the rows with t >= its t_min and at
    # least one relation, the same x_t denoised under the graph with every predicate inverted (world.invert_predicates)
    # should miss the target by more than under the true graph, -log sigmoid(beta (mse_inverted - mse_true)). Every
    # predicate is as often the true one as the inverted one, so only a layout that follows it pays. 0: off.
    relation_contrast_weight: float = 0.0
    relation_contrast_beta: float = 200.0
    relation_contrast_t_min: int = 500
    # stage 2: SG encoder, UNet and text encoder frozen
    stage2: StageBudget = field(default_factory=lambda: StageBudget(steps=1500, share=0.07))
    sg_lr: float = 1e-3
    # sampling: the initial noise's spatial-mean scale (sgalign.diffusion.noise) calibrated on validation graphs so
    # samples have the renders' per-image latent-mean spread; 0 graphs: plain Gaussian noise (scale 1)
    calib_graphs: int = 64
    calib_steps: int = 20
    # the sampler the folder asks for (model_index.json; sgalign.pipelines.sg_pipeline), which the calibration
    # samples with too: its guidance scale (6 chosen for the epsilon base; a zero-terminal-SNR v model wants less)
    # and graph guidance, the graph's own term guided at graph_guidance_scale on the steps with t >=
    # graph_guidance_min_t (None: plain).
    guidance_scale: float = 6.0
    graph_guidance_scale: float | None = None
    graph_guidance_min_t: int = 0
    graph_guidance_negative: Literal["text", "swapped"] = "text"
    # guidance rescale (Lin et al. 2024; sg_pipeline): the guided prediction pulled back to the conditional one's
    # spread on every guided step. 0: off. Measured on Zd (docs/RESULTS.md): 0.7 keeps graph guidance's hold and
    # restores the entities it cost.
    guidance_rescale: float = 0.0
    save_every: int = 200
    log_every: int = 50
    unet: dict[str, Any] = field(default_factory=lambda: {
        "sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64, 64],
        "layers_per_block": 1, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": 64,
        "attention_head_dim": 8, "norm_num_groups": 32})
    sg_encoder: dict[str, Any] = field(default_factory=lambda: {
        "mode": "object", "embed_dim": 64, "hidden_dim": 64, "num_graph_layers": 5, "init": "variance-keeping",
        "gate_init": 1.0})
    scheduler: dict[str, Any] = field(default_factory=lambda: {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"})

    def stage_seconds(self, budget: StageBudget) -> float | None:
        return None if budget.share <= 0 else 60.0 * self.minutes * budget.share


# ---- helpers ---------------------------------------------------------------------------------------------------
def stage_done(out: Path, stage: Stage) -> dict | None:
    p = out / stage / "done.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def scene_to_json(scene: WorldScene) -> str:
    return json.dumps({"objects": [[o.shape, o.colour, o.size, list(o.box)] for o in scene.objects],
                       "relations": [list(r) for r in scene.relations]})


def scene_from_json(text: str) -> WorldScene:
    d = json.loads(text)
    return WorldScene(tuple(WorldObject(s, c, z, tuple(b)) for s, c, z, b in d["objects"]),
                      tuple((int(a), p, int(b)) for a, p, b in d["relations"]))


def train_scene(seed: int, index: int) -> WorldScene:
    """Train-split graph ``index`` of the recipe's stream (no validation / test graph is ever drawn)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODE["train"], int(index)]))
    return sample_scene(rng, None, lambda key: split_of(key) == "train")


# ---- stage: VAE -----------------------------------------------------------------------------------------------
def run_vae_stage(r: WorldBaseRecipe, log: Callable[[str], None]) -> dict:
    out = Path(r.out)
    t0 = time.time()
    limit = r.stage_seconds(r.vae)
    init = None if r.vae_init is None else str(REPO / r.vae_init if not Path(r.vae_init).is_absolute() else r.vae_init)
    args = VaeTrainArgs(steps=r.vae.steps, batch=r.vae_batch, seed=r.seed, lr=r.vae_lr,
                        interp_weight=r.vae_interp_weight, interp_paths=r.vae_interp_paths,
                        warmup=20 if init else 50, init=init)

    def progress(step: int, stats: dict[str, float]) -> None:
        if step % r.log_every == 0:
            log(f"vae step {step}/{args.steps} l1 {stats['l1']:.4f} interp {stats.get('interp', 0):.4f} "
                f"{time.time() - t0:.0f}s")

    vae, history = train_world_vae(args, progress=progress,
                                   max_seconds=None if limit is None else limit - (time.time() - t0))
    train_s = time.time() - t0
    steps_done = len(history)
    vae = vae.eval()
    val = sample_split("validation", r.vae_eval_graphs, seed=0)
    norm = None
    if r.vae_latent_norm == "per-channel":
        mean, std = latent_channel_stats(vae, val, seed=r.seed)
        normalise_latent_channels(vae, mean, std)
        scale = 1.0
        norm = {"latent_mean": [round(float(v), 5) for v in mean], "latent_std": [round(float(v), 5) for v in std],
                "from": f"posterior samples of {r.vae_eval_graphs} validation renders"}
    else:
        scale = latent_scaling_factor(vae, val, seed=r.seed)
        vae.register_to_config(scaling_factor=scale)
    tmp = out / "vae.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    vae = load_world_vae(tmp)
    metrics = evaluate_world_vae(vae, sample_split("test", r.vae_eval_graphs, seed=0))
    blend = blend_test(vae)
    # the starting VAE as the recipe names it (repo-relative), not this machine's absolute path
    rec = {"model": "world VAE", "stage": "vae", **asdict(args), "init": r.vae_init, "steps_done": steps_done,
           "stopped_early": f"time share reached at step {steps_done}" if steps_done < args.steps else None,
           "final_train": {k: float(np.mean([h[k] for h in history[-50:]])) for k in history[-1]},
           "train_wall_s": round(train_s, 1), "wall_seconds": round(time.time() - t0, 1),
           "params": sum(p.numel() for p in vae.parameters()), "latent_shape": [4, 16, 16],
           "scaling_factor": scale, "latent_norm": r.vae_latent_norm, "latent_channel_norm": norm,
           "scaling_factor_from": "per-channel normalisation in the weights" if norm else
           f"1/std of posterior samples, {r.vae_eval_graphs} validation renders",
           "test_metrics": {"split": "test", "reconstruction": "posterior mode", **metrics},
           "blend_test": {"passes": blend["passes"], **{c: v["reads"] for c, v in blend["background"].items()},
                          "max_rgb_off_line": {c: v["max_rgb_off_line"] for c, v in blend["background"].items()},
                          "pairs_with_other_colours": {k: v["other_colours"] for k, v in blend["pairs"].items()
                                                       if v["other_colours"]}},
           "machine": machine_info()}
    if init is not None:  # the starting VAE's own recipe and cost belong to this model's history
        prev = json.loads((Path(init) / RECORD_NAME).read_text())
        rec["initialised_from"] = {k: prev.get(k) for k in ("model", "command", "steps", "batch", "lr",
                                                            "interp_weight", "train_wall_s", "total_wall_s")}
    write_record(tmp, rec)
    write_json_atomic(tmp / "done.json", {"wall_seconds": rec["wall_seconds"]})
    replace_dir(tmp, out / "vae")
    log(f"vae: PSNR {metrics['psnr_db']:.1f} dB, oracle objects exact {metrics['oracle_objects_exact']:.3f}, "
        f"blend test {'passes' if blend['passes'] else 'FAILS'} ({time.time() - t0:.0f}s)")
    return rec


# ---- stage: cache ----------------------------------------------------------------------------------------------
def run_cache_stage(r: WorldBaseRecipe, log: Callable[[str], None]) -> dict:
    """Render + encode ``cache_graphs`` train graphs once: an Arrow table (scene, text, latent mean, latent std)."""
    import datasets  # heavy: keeps world_base light for pretrain_world.py --help

    out = Path(r.out)
    t0 = time.time()
    vae = load_world_vae(out / "vae").to(r.device)
    n, chunk = r.cache_graphs, 512

    def rows():
        for start in range(0, n, chunk):
            scenes = [train_scene(r.seed, i) for i in range(start, min(n, start + chunk))]
            with torch.no_grad():
                x = to_tensor(render_array(scenes)).to(r.device) * 2 - 1
                dist = vae.encode(x).latent_dist
                mean, std = dist.mean.cpu().numpy(), dist.std.cpu().numpy()
            for k, sc in enumerate(scenes):
                yield {"index": start + k, "scene": scene_to_json(sc), "text": sc.graph().serialize(),
                       "latent_mean": mean[k].astype(np.float32), "latent_std": std[k].astype(np.float32)}
            log(f"cache {min(n, start + chunk)}/{n} graphs {time.time() - t0:.0f}s")

    features = datasets.Features({
        "index": datasets.Value("int64"), "scene": datasets.Value("string"), "text": datasets.Value("string"),
        "latent_mean": datasets.Array3D((4, 16, 16), "float32"), "latent_std": datasets.Array3D((4, 16, 16), "float32")})
    ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(out / "hf-cache"))
    tmp = out / "cache.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp / "data"))
    shutil.rmtree(out / "hf-cache", ignore_errors=True)
    rec = {"stage": "cache", "graphs": n, "split": "train", "seed": r.seed, "vae": str(out / "vae"),
           "wall_seconds": round(time.time() - t0, 1)}
    write_json_atomic(tmp / "done.json", rec)
    replace_dir(tmp, out / "cache")
    return rec


class LatentCache:
    """The cached latents as tensors in memory (32 k x 2 x 4 x 16 x 16 float32 = 256 MB)."""

    def __init__(self, folder: Path) -> None:
        import datasets  # heavy, as in run_cache_stage

        ds = datasets.load_from_disk(str(folder / "data")).with_format("numpy")
        self.mean = torch.from_numpy(np.asarray(ds["latent_mean"], dtype=np.float32))
        self.std = torch.from_numpy(np.asarray(ds["latent_std"], dtype=np.float32))
        self.scenes = list(ds["scene"])

    def __len__(self) -> int:
        return len(self.scenes)

    def batch_indices(self, seed: int, step: int, batch: int) -> np.ndarray:
        """Rows of optimiser step ``step``: epoch-wise permutations, a pure function of (seed, step)."""
        n = len(self)
        per_epoch = n // batch
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng(np.random.SeedSequence([seed, 77, epoch])).permutation(n)
        return perm[k * batch:(k + 1) * batch]

    def graphs(self, idx: np.ndarray):
        return [scene_from_json(self.scenes[i]).graph() for i in idx]

    def latents(self, idx: np.ndarray, gen: torch.Generator, scale: float) -> torch.Tensor:
        t = torch.from_numpy(idx)
        return (self.mean[t] + self.std[t] * torch.randn(self.mean[t].shape, generator=gen)) * scale


# ---- stage: SG-encoder layout pre-training ----------------------------------------------------------------------
def cache_scenes(folder: Path) -> list[str]:
    import datasets  # heavy, as in run_cache_stage

    return list(datasets.load_from_disk(str(folder / "data"))["scene"])


def scene_boxes(scenes: list[WorldScene]) -> Any:
    """``node_boxes`` targets of the scenes' graphs (item id = object index)."""
    return node_boxes([sc.graph() for sc in scenes], [{i: o.box for i, o in enumerate(sc.objects)} for sc in scenes],
                      float(rules.CANVAS))


@torch.no_grad()
def layout_fit(enc, head, scenes: list[WorldScene], tok, te) -> dict:
    """Box MSE of the head on ``scenes`` against predicting every box's mean (R^2 = 1 - mse / baseline)."""
    gi = build_graph_inputs([sc.graph() for sc in scenes], "object", [tok], [te], self_loops=enc.config.self_loops)
    y = scene_boxes(scenes)
    mse = float(layout_loss(enc, head, gi, y))
    base = float(((y - y.mean(0)) ** 2).mean())
    return {"box_mse": round(mse, 6), "baseline_mse": round(base, 6), "r2": round(1 - mse / base, 4)}


def run_sg_layout_stage(r: WorldBaseRecipe, log: Callable[[str], None]) -> dict:
    """``sg_layout_steps`` of box regression (``models.sg_layout``) for stage 1's fresh SG encoder, its inputs from
    the frozen world-CLIP text tower; writes ``OUT/sg_layout/{sg_encoder, layout_head.safetensors}``. 0 steps: a
    record only, and stage 1 starts from the fresh encoder."""
    out, t0 = Path(r.out), time.time()
    tmp = out / "sg_layout.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rec: dict[str, Any] = {"stage": "sg_layout", "steps": r.sg_layout_steps}
    if r.sg_layout_steps > 0:
        comps = _components(r, 1)
        enc, tok, te = comps["sg_encoder"], comps["tokenizer"], comps["text_encoder"].eval().requires_grad_(False)
        head = LayoutHead(enc.config.embed_dim)
        scenes = cache_scenes(out / "cache")
        val = sample_split("validation", r.sg_layout_eval_graphs, seed=0)
        probe = [sc.graph() for sc in val[:64] if sc.relations]
        sens0 = input_sensitivity(enc, probe, [invert_predicates(g) for g in probe], [tok], [te])
        opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=r.sg_layout_lr,
                                weight_decay=0.0)
        total = r.sg_layout_steps
        loop = Loop({"sg_encoder": enc, "layout_head": head}, opt,
                    torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(50, total)), max_grad_norm=1.0)

        def step_loss(step: int):
            rng = np.random.default_rng(np.random.SeedSequence([r.seed, 91, step]))
            batch = [scene_from_json(scenes[i]) for i in rng.choice(len(scenes), r.sg_layout_batch, replace=False)]
            gi = build_graph_inputs([sc.graph() for sc in batch], "object", [tok], [te],
                                    self_loops=enc.config.self_loops)
            loss = layout_loss(enc, head, gi, scene_boxes(batch))
            return loss, {"loss": float(loss.detach())}

        def progress(step: int, _: dict) -> None:
            if step % r.log_every == 0:
                log(f"sg_layout step {step}/{total} box-mse "
                    f"{np.mean([h['loss'] for h in loop.history[-r.log_every:]]):.5f} {time.time() - t0:.0f}s")

        enc.train()
        losses = [h["loss"] for h in loop.run(total, step_loss, on_step=progress)]
        enc.eval()
        rec.update({"batch": r.sg_layout_batch, "lr": r.sg_layout_lr, "validation": layout_fit(enc, head, val, tok, te),
                    "sensitivity_before": sens0,
                    "sensitivity_after": input_sensitivity(enc, probe, [invert_predicates(g) for g in probe],
                                                           [tok], [te]),
                    "train_box_mse_last_50": float(np.mean(losses[-50:]))})
        enc.save_pretrained(tmp / "sg_encoder", safe_serialization=True)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, tmp / "layout_head.safetensors")
        log(f"sg_layout: validation {rec['validation']}, sensitivity {sens0} -> {rec['sensitivity_after']}")
    rec["wall_seconds"] = round(time.time() - t0, 1)
    write_json_atomic(tmp / "done.json", rec)
    replace_dir(tmp, out / "sg_layout")
    return rec


# ---- stages 1 and 2 --------------------------------------------------------------------------------------------
def _components(r: WorldBaseRecipe, stage: int) -> dict[str, Any]:
    """Stage 1: world-CLIP text tower + tokenizer, recipe VAE, fresh UNet + fresh SG encoder (``r.sg_encoder``).
    Stage 2: the finished stage-1 pipeline."""
    # heavy (the model classes load torchvision and peft, ~2 s): keeps pretrain_world.py --help light
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out = Path(r.out)
    if stage == 2:
        return load_model(out / "stage1" / "pipeline", require_sg_encoder=True)
    torch.manual_seed(r.seed)
    unet = UNet2DConditionModel(**r.unet)
    torch.manual_seed(r.seed + 1)
    te = CLIPTextModel.from_pretrained(WORLD_CLIP / "text_encoder", local_files_only=True)
    return {"vae": AutoencoderKL.from_pretrained(out / "vae", local_files_only=True),
            "text_encoder": te, "tokenizer": CLIPTokenizer.from_pretrained(WORLD_CLIP / "tokenizer",
                                                                            local_files_only=True),
            "unet": unet, "scheduler": DDIMScheduler(**r.scheduler),
            "sg_encoder": (load_sg_encoder(out / "sg_layout" / "sg_encoder")
                           if (out / "sg_layout" / "sg_encoder").is_dir() and stage == 1
                           else SGEncoder(text_dim=te.config.hidden_size, **r.sg_encoder))}


def _stage_modules(r: WorldBaseRecipe, stage: int, pipe) -> dict[str, torch.nn.Module]:
    """The modules a stage trains (in training mode), everything else of ``pipe`` frozen: stage 1 the UNet and
    text encoder (+ the SG encoder with ``stage1_graph``, + a layout head with ``sg_layout_weight``), stage 2 the
    SG encoder."""
    for m in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.sg_encoder):
        m.requires_grad_(False).eval().to(r.device)
    trained = {"unet": pipe.unet, "text_encoder": pipe.text_encoder} if stage == 1 else {}
    if stage == 2 or r.stage1_graph:
        trained["sg_encoder"] = pipe.sg_encoder
    for m in trained.values():  # before param_groups, which keeps only parameters that require grad
        m.requires_grad_(True).train()
    if stage == 1 and "sg_encoder" in trained and r.sg_layout_weight > 0:
        head = LayoutHead(pipe.sg_encoder.config.embed_dim).to(r.device)
        if (Path(r.out) / "sg_layout" / "layout_head.safetensors").is_file():
            head.load_state_dict(load_file(Path(r.out) / "sg_layout" / "layout_head.safetensors"))
        trained["layout_head"] = head.requires_grad_(True).train()
    return trained


def _stage_optimizer(r: WorldBaseRecipe, stage: int, trained: dict[str, torch.nn.Module], total: int):
    """AdamW with one learning rate per module (no weight decay), warmup then cosine; returns (opt, sched, lrs)."""
    lrs = {"unet": r.unet_lr, "text_encoder": r.text_lr, "sg_encoder": r.sg_lr, "layout_head": r.sg_lr}
    groups = [{**g, "lr": lrs[k]} for k, m in trained.items() for g in param_groups([m], 0.0)]
    assert sum(len(g["params"]) for g in groups) == sum(1 for m in trained.values() for _ in m.parameters())
    opt = torch.optim.AdamW(groups, lr=r.unet_lr if stage == 1 else r.sg_lr, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, stage_lr_factor(r, stage, total)), {k: lrs[k] for k in trained}


def stage_lr_factor(r: WorldBaseRecipe, stage: int, total: int) -> Callable[[int], float]:
    """The stage's lr factor by step: warmup then cosine over ``total`` steps; with ``stage1_v_restart``, stage 1's
    epsilon phase and its v phase each have their own (a warm restart at the switch)."""
    n = r.stage1_eps_steps
    if stage != 1 or not (n and r.stage1_v_restart):
        return warmup_cosine(r.warmup_steps, total)
    eps, v = warmup_cosine(r.warmup_steps, n), warmup_cosine(r.warmup_steps, total - n)
    return lambda step: eps(step) if step < n else v(step - n)


def _encode_rows(pipe, graphs: list, on_graph: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings of ``graphs``, the rows where ``on_graph`` is set with the SG residual, the others on the text
    alone."""
    return build_conditioning(graphs, pipe.sg_encoder, [pipe.tokenizer], [pipe.text_encoder],
                              use_graph=on_graph).prompt_embeds


def _stage_conditioning(r: WorldBaseRecipe, stage: int, pipe, graphs: list, gen: torch.Generator,
                        with_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt embeddings of a batch: with the graph (stage 1: ``graph_drop_prob`` of the rows on the text alone),
    and in stage 1 ``uncond_prob`` of the rows replaced by the empty text (classifier-free guidance). Returns them,
    the (B,) bool of the rows that kept their prompt, and the (B,) bool of the rows conditioned on the graph."""
    tok, te, n = [pipe.tokenizer], [pipe.text_encoder], len(graphs)
    on_graph = torch.full((n,), with_graph, dtype=torch.bool)
    if stage == 1 and with_graph and r.graph_drop_prob > 0:
        on_graph = ~(torch.rand(n, generator=gen) < r.graph_drop_prob)
    cond = _encode_rows(pipe, graphs, on_graph)
    drop = torch.zeros(n, dtype=torch.bool, device=r.device)
    if stage == 1 and r.uncond_prob > 0:
        drop = (torch.rand(n, generator=gen) < r.uncond_prob).to(r.device)
        if drop.any():
            empty = build_conditioning([graphs[0].__class__([])], None, tok, te, use_graph=False).prompt_embeds
            cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
    return cond, ~drop, on_graph.to(r.device)


def _stage_loss(r: WorldBaseRecipe, stage: int, pipe, cache: LatentCache, with_graph: bool,
                layout_head: LayoutHead | None) -> Callable[[int], tuple[torch.Tensor, dict[str, float]]]:
    """``loss_fn(step)`` of a diffusion stage: epsilon-MSE (v-MSE for a v-prediction scheduler) on cached latents (stage 1: min-SNR weighted, offset
    noise, high-timestep draws, + the layout head's box loss); every draw from the step's own generator. Stats:
    ``loss`` the plain epsilon-MSE, ``box`` the box loss."""
    scale, v_sched = pipe.vae.config.scaling_factor, pipe.scheduler
    n_t = v_sched.config.num_train_timesteps
    warm = None
    if stage == 1 and r.stage1_eps_steps > 0:
        if v_sched.config.prediction_type != "v_prediction":
            raise UserError(f"stage1_eps_steps {r.stage1_eps_steps}: an epsilon warm phase before a v target; this "
                            f"scheduler predicts {v_sched.config.prediction_type!r} (use --zero-snr-v)")
        warm = _warm_scheduler(v_sched.config)

    def loss_fn(step: int):
        gen = torch.Generator().manual_seed(r.seed * 1_000_003 + 7919 * stage + step)
        idx = cache.batch_indices(r.seed + stage, step, r.batch)
        graphs = cache.graphs(idx)
        lat = cache.latents(idx, gen, scale).to(r.device)
        noise = torch.randn(lat.shape, generator=gen)
        if stage == 1 and r.offset_noise > 0:
            noise = noise + r.offset_noise * torch.randn(lat.shape[:2] + (1, 1), generator=gen)
        noise = noise.to(r.device)
        t = torch.randint(0, n_t, (len(idx),), generator=gen)
        if stage == 1 and r.t_high_frac > 0:  # extra draws only when on: the default stream is unchanged
            high = torch.randint(r.t_high_min, n_t, (len(idx),), generator=gen)
            t = torch.where(torch.rand(len(idx), generator=gen) < r.t_high_frac, high, t)
        t = t.to(r.device)
        in_warm = warm is not None and step < r.stage1_eps_steps
        noise_sched = warm if in_warm else v_sched
        noisy = noise_sched.add_noise(lat, noise, t)
        cond, prompted, on_graph = _stage_conditioning(r, stage, pipe, graphs, gen, with_graph)
        ground = stage == 1 and r.attn_ground_weight > 0 and not in_warm
        capture = capture_cross_attention(pipe.unet, r.attn_ground_grad == "unet") if ground else None
        with capture if capture is not None else contextlib.nullcontext([]) as maps:
            pred = pipe.unet(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
        kind = noise_sched.config.prediction_type
        target = prediction_target(noise, lat, t, noise_sched.alphas_cumprod, kind)
        per = F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))
        if in_warm:
            w = min_snr_weights(noise_sched, t, EPS_WARM_MIN_SNR_GAMMA, kind)
        else:
            w = (min_snr_weights(noise_sched, t, r.min_snr_gamma, kind, r.min_snr_floor)
                 if stage == 1 and r.min_snr_gamma else 1.0)
        loss = (per * w).mean()
        stats = {"loss": round(float(per.mean().detach()), 5)}
        if layout_head is not None or ground:
            gi = build_graph_inputs(graphs, "object", [pipe.tokenizer], [pipe.text_encoder],
                                    self_loops=pipe.sg_encoder.config.self_loops)
            scenes = [scene_from_json(cache.scenes[i]) for i in idx]
        if layout_head is not None:
            box = layout_loss(pipe.sg_encoder, layout_head, gi, scene_boxes(scenes).to(r.device))
            loss = loss + r.sg_layout_weight * box
            stats["box"] = float(box.detach())
        if ground:
            g = _grounding(maps, gi, graphs, scenes, cond.shape[1], prompted & (t >= r.attn_ground_t_min))
            loss = loss + r.attn_ground_weight * g
            stats["ground"] = float(g.detach())
        if stage == 1 and r.relation_contrast_weight > 0 and not in_warm:
            rows = (prompted & (t >= r.relation_contrast_t_min)
                    & torch.tensor([bool(g.relations) for g in graphs], device=r.device)).nonzero()[:, 0]
            if len(rows):
                c = _relation_contrast(r, pipe, [graphs[i] for i in rows.tolist()], on_graph[rows], noisy[rows],
                                       t[rows], target[rows], per[rows])
                loss = loss + r.relation_contrast_weight * c
                stats["contrast"] = float(c.detach())
        return loss, stats

    return loss_fn


def _mean_or_none(values: list) -> float | None:
    return float(np.mean(values)) if values else None  # JSON has no NaN


def _relation_contrast(r: WorldBaseRecipe, pipe, graphs: list, on_graph: torch.Tensor, noisy: torch.Tensor,
                       t: torch.Tensor, target: torch.Tensor, mse_true: torch.Tensor) -> torch.Tensor:
    """The recipe's relation contrast (``relation_contrast_weight``) of rows whose true-graph errors are ``mse_true``:
    the same x_t under the inverted graphs, each row on the path it was trained on (graph or text alone)."""
    cond = _encode_rows(pipe, [invert_predicates(g) for g in graphs], on_graph)
    pred = pipe.unet(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
    mse_inv = F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))
    return -F.logsigmoid(r.relation_contrast_beta * (mse_inv - mse_true)).mean()


def _grounding(maps: list[torch.Tensor], gi, graphs: list, scenes: list[WorldScene], seq_len: int,
               prompted: torch.Tensor) -> torch.Tensor:
    """``models.attn_grounding``'s token loss of a batch's captured cross-attention maps (object boxes from the
    scenes, ``graphs`` theirs; the rows on the empty prompt left out)."""
    dev = maps[0].device
    token_w = object_token_weights(gi, seq_len).to(dev)
    full = box_canvas(graphs, [{i: o.box for i, o in enumerate(sc.objects)} for sc in scenes], rules.CANVAS,
                      token_w.shape[1])
    masks = {res: pool_masks(full, res).to(dev) for res in {math.isqrt(m.shape[1]) for m in maps}}
    return grounding_loss(maps, token_w, masks, prompted)


def run_diffusion_stage(r: WorldBaseRecipe, stage: int, log: Callable[[str], None]) -> dict:
    """Stage 1 (UNet + text encoder [+ SG encoder]) or stage 2 (SG encoder alone) on the cached latents: the shared
    ``Loop`` (EMA, clipping, time share, checkpoint/resume in ``OUT/stageN/checkpoint``) with this stage's loss."""
    name, budget = f"stage{stage}", r.stage1 if stage == 1 else r.stage2
    work, total, limit = Path(r.out) / name, budget.steps, r.stage_seconds(budget)
    work.mkdir(parents=True, exist_ok=True)
    pipe = make_pipeline(_components(r, stage))
    pipe.set_progress_bar_config(disable=True)
    trained = _stage_modules(r, stage, pipe)
    with_graph = "sg_encoder" in trained
    opt, sched, lrs = _stage_optimizer(r, stage, trained, total)
    loop = Loop(trained, opt, sched, max_grad_norm=1.0, ema_decay=r.ema_decay, max_seconds=limit,
                checkpoint_dir=work / "checkpoint", save_every=r.save_every)
    cache = LatentCache(Path(r.out) / "cache")
    if loop.resume():
        log(f"{name}: resumed at step {loop.step} ({loop.elapsed:.0f}s done)")

    def progress(step: int, _: dict) -> None:
        if step % r.log_every == 0:
            recent = loop.history[-r.log_every:]
            box = [h["box"] for h in recent if "box" in h]
            ground = [h["ground"] for h in recent if "ground" in h]
            contrast = [h["contrast"] for h in recent if "contrast" in h]
            log(f"{name} step {step}/{total} eps-mse {np.mean([h['loss'] for h in recent]):.4f} "
                + (f"box-mse {np.mean(box):.5f} " if box else "")
                + (f"ground {np.mean(ground):.4f} " if ground else "")
                + (f"contrast {np.mean(contrast):.4f} " if contrast else "") +
                f"alpha {float(pipe.sg_encoder.alpha_obj.detach()):+.3f} {loop.elapsed:.0f}s")

    log(f"{name}: {len(cache)} cached graphs, up to {total} steps x batch {r.batch}"
        + (f", at most {limit / 60:.1f} min" if limit else "") + f", training {list(trained)}")
    loop.run(total, _stage_loss(r, stage, pipe, cache, with_graph, trained.get("layout_head")), on_step=progress)
    if stage == 1 and loop.step <= r.stage1_eps_steps:  # its weights predict epsilon; the folder would say v
        raise UserError(f"stage 1 stopped at step {loop.step}, inside its epsilon warm phase (--stage1-eps-steps "
                        f"{r.stage1_eps_steps}); give it more time (--minutes, --stage1-share) and rerun to resume")
    tmp = work / "pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with loop.ema_weights():  # the stage's pipeline: EMA weights
        pipe.to("cpu").save_pretrained(tmp, safe_serialization=True)
        alpha_obj = float(pipe.sg_encoder.alpha_obj.detach())
    # the token table in float16 (loads back as float32): what makes the world models small enough to ship
    store_token_table_fp16(tmp / "text_encoder" / "model.safetensors")
    losses = [h["loss"] for h in loop.history]
    rec = {"stage": name, "trained": list(trained), "steps": loop.step, "planned_steps": total,
           "stopped_early": f"time share ({limit / 60:.1f} min) reached at step {loop.step}" if loop.timed_out
           else None, "batch": r.batch, "wall_seconds": round(loop.elapsed, 1), "lr": lrs, "graph": with_graph,
           "graph_drop_prob": r.graph_drop_prob if stage == 1 and with_graph else None,
           "warmup_steps": r.warmup_steps,
           "lr_schedule": "cosine, restarted at the v phase" if stage == 1 and r.stage1_eps_steps and r.stage1_v_restart
           else "cosine", "ema_decay": r.ema_decay,
           "min_snr_gamma": r.min_snr_gamma if stage == 1 else None,
           "min_snr_floor": r.min_snr_floor if stage == 1 and r.min_snr_gamma else None,
           "stage1_eps": ({"steps": r.stage1_eps_steps, "scheduler": EPS_WARM, "min_snr_gamma": EPS_WARM_MIN_SNR_GAMMA,
                           "v_restart": r.stage1_v_restart}
                          if stage == 1 and r.stage1_eps_steps else None),
           "uncond_prob": r.uncond_prob if stage == 1 else 0.0,
           "eps_mse_last_200": float(np.mean(losses[-200:])) if losses else None,
           "attn_ground_weight": r.attn_ground_weight if stage == 1 else 0.0,
           "attn_ground_t_min": r.attn_ground_t_min if stage == 1 else None,
           "attn_ground_grad": r.attn_ground_grad if stage == 1 and r.attn_ground_weight > 0 else None,
           "ground_loss_last_200": (float(np.mean([h["ground"] for h in loop.history[-200:] if "ground" in h]))
                                    if any("ground" in h for h in loop.history[-200:]) else None),
           "relation_contrast": ({"weight": r.relation_contrast_weight, "beta": r.relation_contrast_beta,
                                  "t_min": r.relation_contrast_t_min,
                                  "loss_last_200": _mean_or_none([h["contrast"] for h in loop.history[-200:]
                                                                  if "contrast" in h])}
                                 if stage == 1 and r.relation_contrast_weight > 0 else None),
           "alpha_obj": alpha_obj, "cached_graphs": len(cache)}
    write_json_atomic(tmp / "stage_record.json", rec)
    replace_dir(tmp, work / "pipeline")
    write_json_atomic(work / "done.json", rec)
    return rec


# ---- sampling calibration --------------------------------------------------------------------------------------
@torch.no_grad()
def calibrate_noise_mean(pipe, r: WorldBaseRecipe) -> dict:
    """``initial_noise_mean_scale`` for ``pipe``: the median over channels of (spread of the per-image latent mean
    of validation renders) / (the same spread of samples drawn from plain noise), clipped to [0, 1].

    Why a ratio: the UNet passes the noise's spatial mean into the sample's latent mean nearly linearly (measured:
    scale 1 -> spread 0.6, 0.4 -> 0.25 per channel), so this scale gives samples the data's spread. It is chosen
    by that statistic alone, never by a quality metric, and on validation graphs only."""
    scenes = sample_split("validation", r.calib_graphs, seed=0)
    gen = torch.Generator().manual_seed(r.seed)
    z = pipe.vae.encode(to_tensor(render_array(scenes)).to(pipe.device) * 2 - 1).latent_dist.sample(generator=gen)
    data = (z * pipe.vae.config.scaling_factor).mean((2, 3)).std(0)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    # plain Gaussian noise, one draw per image, passed as latents (the pipeline uses given latents unchanged)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(10_000 + i))
                         for i in range(len(scenes))]).to(pipe.device)
    g = r.guidance_scale
    lat = torch.cat([pipe([s.graph() for s in scenes[i:i + 16]], latents=noise[i:i + 16],
                          num_inference_steps=r.calib_steps, guidance_scale=g,
                          output_type="latent").images for i in range(0, len(scenes), 16)])
    sampled = lat.mean((2, 3)).std(0)
    ratio = (data / sampled).cpu()
    scale = float(ratio.median().clamp(0.0, 1.0))
    return {"initial_noise_mean_scale": round(scale, 4), "validation_graphs": len(scenes),
            "renders_latent_mean_spread": [round(float(v), 4) for v in data],
            "samples_latent_mean_spread_at_scale_1": [round(float(v), 4) for v in sampled],
            "sampling": {"steps": r.calib_steps, "guidance_scale": g, "eta": 0.0, **pipe.guidance_record(g)}}



# ---- the job ---------------------------------------------------------------------------------------------------
def calibrate_folder(folder: Path, r: WorldBaseRecipe, log: Callable[[str], None]) -> dict:
    """``calibrate_noise_mean`` on the pipeline in ``folder``; writes the scale into its ``model_index.json``."""
    from ..pipelines import load_pipeline  # heavy: keeps world_base light for pretrain_world.py --help

    t_cal = time.time()
    pipe = load_pipeline(folder, arch="sd15").to(r.device)
    pipe.set_progress_bar_config(disable=True)
    calibration = calibrate_noise_mean(pipe, r)
    index = json.loads((folder / "model_index.json").read_text())
    index["initial_noise_mean_scale"] = calibration["initial_noise_mean_scale"]
    write_json_atomic(folder / "model_index.json", index)
    calibration["wall_seconds"] = round(time.time() - t_cal, 1)
    log(f"sampling: initial noise mean scale {calibration['initial_noise_mean_scale']:.3f} (validation spread "
        f"of latent means, renders {calibration['renders_latent_mean_spread']} vs samples at scale 1 "
        f"{calibration['samples_latent_mean_spread_at_scale_1']})")
    return calibration


def _guidance_line(record: dict) -> str:
    settings = record.get("settings") or {}
    scale = f"guidance scale {settings['guidance_scale']:g}"
    if settings.get("guidance_rescale"):
        scale += f", guidance rescale {settings['guidance_rescale']:g}"
    s = settings.get("graph_guidance_scale")
    if s is None:
        return f"plain classifier-free guidance, {scale} (`model_index.json`; sgalign.pipelines.sg_pipeline)"
    t = settings.get("graph_guidance_min_t", 0)
    neg = settings.get("graph_guidance_negative", "text")
    return (f"{scale}, graph guidance {s:g} on the steps with t >= {t}, negative branch {neg!r} "
            "(`model_index.json`; sgalign.pipelines.sg_pipeline)")


def sampler_defaults(r: WorldBaseRecipe) -> dict:
    """The ``model_index.json`` entries that make the recipe's guidance the folder's default sampler."""
    on = r.graph_guidance_scale is not None
    return {"guidance_scale": float(r.guidance_scale), "guidance_rescale": float(r.guidance_rescale),
            "graph_guidance_scale": r.graph_guidance_scale, "graph_guidance_min_t": r.graph_guidance_min_t if on else 0,
            "graph_guidance_negative": r.graph_guidance_negative if on else "text"}


def recipe_of(out: str | Path) -> WorldBaseRecipe:
    """The recipe a run folder was started with (``OUT/recipe.json``)."""
    spec = Path(out) / "recipe.json"
    if not spec.is_file():
        raise UserError(f"{spec}: not found; --out must be a folder that pretrain_world.py started")
    d = json.loads(spec.read_text())
    known = {f.name for f in fields(WorldBaseRecipe)}
    d = {k: v for k, v in d.items() if k in known}
    for k in ("vae", "stage1", "stage2"):
        if k in d:
            d[k] = StageBudget(**d[k])
    return WorldBaseRecipe(**{**d, "out": str(out)})


def snapshot_stage(r: WorldBaseRecipe, stage: int, dst: str | Path, log: Callable[[str], None] = print) -> Path:
    """A running or stopped diffusion stage's last checkpoint as a pipeline folder ``dst`` (EMA weights, sampling
    calibrated like the final folder), to look at a long run midway. Its ``model_index.json`` says
    ``"snapshot": {"stage", "step", "target"}``: an intermediate model, never the recipe's result. Inside stage 1's
    epsilon warm phase it is saved with the warm phase's schedule and target."""
    if r.threads:
        torch.set_num_threads(r.threads)
    ck, dst = Path(r.out) / f"stage{stage}" / "checkpoint", Path(dst)
    if not (ck / "state.json").is_file():
        raise UserError(f"{ck}: no checkpoint yet (a stage checkpoints every {r.save_every} steps); try again later")
    pipe = make_pipeline(_components(r, stage))
    pipe.set_progress_bar_config(disable=True)
    trained = _stage_modules(r, stage, pipe)
    opt, sched, _ = _stage_optimizer(r, stage, trained, (r.stage1 if stage == 1 else r.stage2).steps)
    loop = Loop(trained, opt, sched, ema_decay=r.ema_decay, checkpoint_dir=ck)
    loop.resume()
    warm = stage == 1 and loop.step <= r.stage1_eps_steps
    if warm:  # inside the epsilon warm phase: the weights predict epsilon on the default schedule, saved as such
        pipe.scheduler = _warm_scheduler(pipe.scheduler.config)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with loop.ema_weights():
        pipe.to("cpu").save_pretrained(tmp, safe_serialization=True)
    store_token_table_fp16(tmp / "text_encoder" / "model.safetensors")  # as the stage's own pipeline
    index = json.loads((tmp / "model_index.json").read_text())
    index.update(sampler_defaults(r))  # before calibrating: as the final folder
    # EMA (decay r.ema_decay) still holds the warm phase's weights for a few thousand steps after the switch
    index["snapshot"] = {"stage": f"stage{stage}", "step": loop.step,
                         "target": "epsilon (warm phase)" if warm else pipe.scheduler.config.prediction_type}
    write_json_atomic(tmp / "model_index.json", index)
    if r.calib_graphs:
        calibrate_folder(tmp, r, log)
    replace_dir(tmp, dst)
    log(f"snapshot of stage {stage} at step {loop.step}: {dst}")
    return dst


def run_world_base(r: WorldBaseRecipe, *, command: str = "", log: Callable[[str], None] = print,
                   only: Stage | None = None) -> Path:
    """Run (or resume) every stage not yet done; returns the final pipeline folder (``OUT/world-sd15-sg``)."""
    if r.threads:
        torch.set_num_threads(r.threads)
    out = Path(r.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "recipe.json"
    mine = asdict(r)
    if spec.is_file():
        prev = json.loads(spec.read_text())
        # settings that change results must match; run-time placement (threads, device) may differ. A setting the
        # folder's recipe.json predates counts as its default (the folder ran without it)
        default = asdict(WorldBaseRecipe())
        diff = sorted(k for k in mine if k not in ("threads", "device", "out") and prev.get(k, default[k]) != mine[k])
        if diff:
            raise ValueError(f"{spec}: this folder was started with other settings ({', '.join(diff)}); "
                             "resume with the same settings or use a new --out")
    else:
        write_json_atomic(spec, mine)
    records = {}
    for stage in STAGES:
        done = stage_done(out, stage)
        if done is None and (only is None or only == stage):
            log(f"== {stage}")
            if stage == "vae":
                done = run_vae_stage(r, log)
            elif stage == "cache":
                done = run_cache_stage(r, log)
            elif stage == "sg_layout":
                done = run_sg_layout_stage(r, log)
            else:
                done = run_diffusion_stage(r, int(stage[-1]), log)
        if done is None:
            break
        records[stage] = done
    if len(records) < len(STAGES):
        return out
    final = out / "world-sd15-sg"
    tmp = out / "world-sd15-sg.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out / "stage2" / "pipeline", tmp)
    (tmp / "stage_record.json").unlink(missing_ok=True)
    # the folder's sampler first: the calibration samples as every default call will (graph guidance included)
    index = json.loads((tmp / "model_index.json").read_text())
    write_json_atomic(tmp / "model_index.json", {**index, **sampler_defaults(r)})
    calibration = calibrate_folder(tmp, r, log) if r.calib_graphs else None
    vae_rec = json.loads((out / "vae" / RECORD_NAME).read_text())
    init_s = float((vae_rec.get("initialised_from") or {}).get("total_wall_s") or 0.0)
    total_s = sum(float(records[s]["wall_seconds"]) for s in STAGES) + init_s \
        + (calibration["wall_seconds"] if calibration else 0.0)
    record = {"recipe": command, "seed": r.seed, "settings": mine, "complete": True,
              "steps": records["stage1"]["steps"] + records["stage2"]["steps"],
              "wall_seconds": round(total_s, 1), "cpu_minutes_from_scratch": round(total_s / 60, 1),
              "initial_vae_wall_seconds": init_s,
              "stages": {"vae": vae_rec, **{s: records[s] for s in STAGES[1:]}},
              "sampling_calibration": calibration, "machine": machine_info()}
    write_json_atomic(tmp / RECORD_NAME, record)
    (tmp / "README.md").write_text(model_card(record), encoding="utf-8")
    replace_dir(tmp, final)
    log(f"world base: {final} ({total_s / 60:.1f} min in all stages)")
    return final


def model_card(record: dict) -> str:
    st = record["stages"]
    vae = st["vae"]
    m = record["machine"]
    return f"""# World SD1.5-SG (StableDiffusionSGPipeline), made by `scripts/pretrain_world.py`

Load: `StableDiffusionSGPipeline.from_pretrained(this_folder)` (sgalign.pipelines). The t2i task uses its text path
(UNet + text encoder + VAE, no SG encoder), which is stage 1's model exactly.

* recipe: `{record['recipe']}`; {record['cpu_minutes_from_scratch']} min in all stages from scratch (the starting
  plain VAE's {record.get('initial_vae_wall_seconds', 0):.0f} s included), seed {record['seed']}
* VAE: plain world VAE fine-tuned {vae['steps_done']} steps with the latent-interpolation consistency term; PSNR
  {vae['test_metrics']['psnr_db']:.1f} dB, oracle reads {100 * vae['test_metrics']['oracle_graph_exact']:.1f} % of
  test reconstructions exactly, blend test {'passes' if vae['blend_test']['passes'] else 'FAILS'}
* cache: {st['cache']['graphs']} train graphs (Arrow, latent mean + std)
* stage 1: UNet + text encoder{' + SG encoder (gate open, ' + str(st['stage1'].get('graph_drop_prob')) + ' of rows on text alone)' if st['stage1'].get('graph') else ''} jointly, {st['stage1']['steps']} steps x batch {st['stage1']['batch']}
  ({st['stage1']['wall_seconds']:.0f} s{'; ' + st['stage1']['stopped_early'] if st['stage1'].get('stopped_early') else ''})
* stage 2: SG encoder alone (UNet, text encoder frozen), {st['stage2']['steps']} steps
  ({st['stage2']['wall_seconds']:.0f} s), gate alpha_obj {st['stage2']['alpha_obj']:+.4f}
* sampling: initial noise mean scale {(record.get('sampling_calibration') or {}).get('initial_noise_mean_scale', 1.0)}
  (`model_index.json`; calibrated on validation graphs, `sgalign.diffusion.noise`); {_guidance_line(record)}
* machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['torch_threads']} torch thread(s), torch {m['torch']}
  ({m['device']}); the full record is `training_record.json`
"""
