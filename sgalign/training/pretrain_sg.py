"""SG-encoder pretraining (optionally with the UNet) with the plain diffusion loss, as LAION-SG trains SDXL-SG.

Per step (reference anchor-laion-sg.md §2.7): images -> VAE latents x scaling factor; noise eps ~ N(0, I), t uniform
over the training timesteps; ``add_noise``; conditioning from the scene graphs (``build_conditioning``: serialised
graph text + gated SG-encoder residual); loss = MSE(unet(x_t, t, cond), eps) (or the v target for v-prediction
schedulers). AdamW with weight decay on >= 2-D weights only (biases, ``alpha_obj``, ``logit_scale`` get none), global
gradient-norm clipping, linear warmup then cosine decay; the steps run in the shared pre-training loop
(``diffusion.loop.Loop``, with accelerate's accumulation, autocast and multi-process gradient averaging).

LAION-SG bugs fixed here (each default is the corrected behaviour; the quirk is reproducible where it is a data
choice, marked ``faithful``):

* VAE input in [-1, 1] (LAION-SG fed [0, 1]); ``train.vae_input_range="[0,1]"`` reproduces it.
* SDXL time ids as (h, w) of the original image (LAION-SG wrote PIL's (w, h)); ``train.time_ids_order="wh"``
  reproduces it. The time ids stay fp32 (LAION-SG: fp16).
* Real gradient accumulation (``accelerate``'s ``accumulate``: one optimiser step per ``grad_accum`` batches;
  LAION-SG's ``accusteps`` only changed logging).
* The LR schedule is sized after ``accelerator.prepare`` shards the loader (LAION-SG sized it before, so with 8
  processes the cosine covered ~1/8 of its span). The schedule is stepped by us once per optimiser step, never by
  accelerate (whose prepared scheduler steps ``num_processes`` times per call).
* Bad records are skipped and reported: ``load_split`` rejects (schema) plus records whose image is missing or
  unreadable, written to ``rejects.jsonl`` next to the output (LAION-SG crashed on a missing image).

Conditioning dropout (``train.uncond_prob``, LAION-SG: 0, its UNet is frozen) trains the CFG branch of a UNet
trained here: a dropped row gets the pipeline's unconditional conditioning (SD1.5: empty text; SDXL: zeros).

Output: a complete pipeline folder (``save_pretrained``: model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/, sg_encoder/ [+ text_encoder_2/, tokenizer_2/]), ``pretrain_config.yaml`` and ``training_record.json``;
intermediate checkpoints are written to the same folder every ``train.save_every`` steps (``complete: false``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDIMScheduler
from PIL import Image
from pydantic import Field, model_validator
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigModel, dump_config
from ..diffusion.loop import Loop
from ..diffusion.prediction import prediction_target
from ..machine import machine_info
from ..models.conditioning import SGConditioning, build_conditioning, unconditional_conditioning
from ..models.loading import load_component, load_model
from ..models.sg_encoder import SGEncoder
from ..scene_graph import LaionSGRecord, Reject, SceneGraph, load_split, write_rejects

RECORD_NAME = "training_record.json"


# ---- configuration --------------------------------------------------------------------------------------------
class ModelConfig(ConfigModel):
    """Where the components come from. ``base`` (a local sd15/sdxl folder, ``sg_encoder/`` optional) or ``tiny``
    (RANDOM-INIT tiny components, tests/plumbing; made by the command layer, ``jobs.pretrain_sg``) gives a starting
    set; each later field replaces one part."""

    base: str | None = None
    tiny: Literal["sd15-sg", "sdxl-sg"] | None = None
    text_encoder: str | None = None  # CLIPTextModel folder (SD1.5 layout only)
    tokenizer: str | None = None  # CLIPTokenizer folder
    vae: str | None = None  # AutoencoderKL folder
    unet: dict[str, Any] | None = None  # UNet2DConditionModel config: a fresh random-init UNet
    unet_path: str | None = None  # UNet2DConditionModel folder
    sg_encoder: dict[str, Any] | None = None  # SGEncoder init args: a fresh encoder (text_dim from the encoders)
    sg_encoder_path: str | None = None  # sg_encoder/ folder or LAION-SG .pt
    scheduler: dict[str, Any] | None = None  # DDIMScheduler config (training uses its betas / prediction type)

    @model_validator(mode="after")
    def _one_start(self) -> "ModelConfig":
        if self.base and self.tiny:
            raise ValueError("model.base and model.tiny are exclusive")
        if self.unet is not None and self.unet_path:
            raise ValueError("model.unet (fresh) and model.unet_path are exclusive")
        if self.sg_encoder is not None and self.sg_encoder_path:
            raise ValueError("model.sg_encoder (fresh) and model.sg_encoder_path are exclusive")
        return self


class DataConfig(ConfigModel):
    """``laion``: a LAION-SG split file + an image folder (files named by ``name``); ``world``: renders drawn on
    the fly from the seeded shapes-world sampler (train-split graphs only; by the command layer,
    ``jobs.pretrain_sg``)."""

    source: Literal["laion", "world"] = "world"
    split_file: str | None = None
    image_dir: str | None = None
    resolution: int = 64  # square training size (LAION-SG: 512, bilinear squash without crop)
    require_relations: bool = True  # LAION-SG keeps only records with relations
    world_split: Literal["train", "validation", "test"] = "train"
    world_size: int = 1_000_000  # length of the world dataset (index i -> its own seeded draw)
    world_seed: int = 0
    holdout: list[str] = Field(default_factory=list)  # colour-shape pairs never drawn (world)

    @model_validator(mode="after")
    def _laion_paths(self) -> "DataConfig":
        if self.source == "laion" and not (self.split_file and self.image_dir):
            raise ValueError("data.source=laion needs data.split_file and data.image_dir")
        return self


class TrainConfig(ConfigModel):
    output_dir: str = "runs/pretrain_sg"
    seed: int = 0
    train_sg_encoder: bool = True
    train_unet: bool = False  # LAION-SG: False (UNet frozen)
    batch_size: int = 1  # per process
    grad_accum: int = 1
    max_steps: int | None = None  # optimiser steps; None -> epochs x steps per epoch (after sharding)
    epochs: int = 1
    max_wall_minutes: float | None = None  # stop (and save) after this much wall time
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.2
    max_grad_norm: float = 10.0
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    uncond_prob: float = Field(0.0, ge=0.0, le=1.0)
    ema_decay: float | None = None  # EMA of the trained weights, saved instead of the raw ones
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    vae_input_range: Literal["[-1,1]", "[0,1]"] = "[-1,1]"  # "[0,1]": LAION-SG's bug (faithful)
    time_ids_order: Literal["hw", "wh"] = "hw"  # "wh": LAION-SG's bug (faithful)
    save_every: int = 0  # optimiser steps between checkpoints (0: only at the end)
    log_every: int = 10
    num_workers: int = 0
    torch_threads: int | None = None
    machine_shared: bool | None = None  # recorded as given (whether other jobs shared the machine)

    @model_validator(mode="after")
    def _something_trains(self) -> "TrainConfig":
        if not (self.train_sg_encoder or self.train_unet):
            raise ValueError("nothing to train: set train.train_sg_encoder and/or train.train_unet")
        return self


class PretrainConfig(ConfigModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


# ---- data -----------------------------------------------------------------------------------------------------
class LaionSGImageDataset(Dataset):
    """LAION-SG records with their images: (image [3, S, S] in [0, 1], SceneGraph, original (h, w)).

    Images are squashed to S x S (bilinear, no crop) as LAION-SG does, converted to RGB (alpha composited on white,
    LAION-SG dropped it). Records that fail the schema (``load_split``) or whose image is missing/unreadable are
    skipped and kept in ``rejects``."""

    def __init__(self, split_file: str | os.PathLike, image_dir: str | os.PathLike, resolution: int,
                 require_relations: bool = True) -> None:
        self.image_dir, self.resolution = Path(image_dir), resolution
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"data.image_dir {self.image_dir} is not a folder (images named by each "
                                    "record's 'name')")
        load = load_split(split_file, require_relations=require_relations)
        self.rejects: list[Reject] = list(load.rejects)
        self.records: list[LaionSGRecord] = []
        for index, rec in zip(load.indices, load.records):
            reason = _image_problem(self.image_dir / rec.name)
            if reason is None:
                self.records.append(rec)
            else:
                self.rejects.append(Reject(index, rec.img_id, "name", f"{reason}: {self.image_dir / rec.name}", (
                    ("name", reason),), rec.model_dump(mode="json")))
        self.rejects.sort(key=lambda r: r.index)
        if not self.records:
            raise ValueError(f"{split_file}: no usable record ({len(self.rejects)} rejected; first: "
                             f"{self.rejects[0] if self.rejects else '-'})")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, SceneGraph, tuple[int, int]]:
        rec = self.records[i]
        with Image.open(self.image_dir / rec.name) as im:
            size_hw = (im.height, im.width)
            im = _to_rgb(im).resize((self.resolution, self.resolution), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return x, SceneGraph.from_record(rec), size_hw


def _to_rgb(im):
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def _image_problem(path: Path) -> str | None:
    if not path.is_file():
        return "image file missing"
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # PIL raises many types for corrupt files
        return f"image unreadable ({type(exc).__name__})"
    return None


def collate(batch: list) -> dict[str, Any]:
    images, graphs, sizes = zip(*batch)
    return {"images": torch.stack(images), "graphs": list(graphs), "original_sizes": list(sizes)}


def build_dataset(cfg: DataConfig) -> Dataset:
    """The LAION-SG dataset of ``cfg``. The world's renders are drawn by the command layer
    (``sgalign.jobs.pretrain_sg.pretrain_dataset``) and handed to ``train``: this layer does not import the world."""
    if cfg.source != "laion":
        raise ValueError(f"data.source={cfg.source}: its dataset is made by the command layer "
                         "(sgalign.jobs.pretrain_sg) and passed to train(..., dataset=...)")
    return LaionSGImageDataset(cfg.split_file, cfg.image_dir, cfg.resolution, cfg.require_relations)


# ---- model assembly -------------------------------------------------------------------------------------------
def build_components(cfg: ModelConfig, seed: int = 0, start: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pipeline components named by ``cfg`` (see ``ModelConfig``): a base folder through the one loader
    (``models.loading.load_model``, the named parts in place of its own), or ``start`` (``model.tiny``'s components,
    made by the command layer: ``sgalign.jobs.pretrain_sg.pretrain_components``) with the named parts loaded one by
    one (``load_component``); fresh parts seeded."""
    if cfg.tiny and start is None:
        raise ValueError(f"model.tiny={cfg.tiny}: the tiny components are made by the command layer "
                         "(sgalign.jobs.pretrain_sg.pretrain_components) and passed as start")
    parts = {"text_encoder": cfg.text_encoder, "tokenizer": cfg.tokenizer, "vae": cfg.vae, "unet": cfg.unet_path}
    parts = {k: v for k, v in parts.items() if v}
    comps: dict[str, Any] = {}
    if cfg.base:
        # the base's own sg_encoder/ unless the config names another one or a fresh one; a plain dict: the
        # pipeline saved at the end starts from default settings (initial_noise_mean_scale 1), not the base's
        comps = dict(load_model(cfg.base, parts=parts, sg_encoder=cfg.sg_encoder_path or None,
                                text_only=cfg.sg_encoder is not None))
    else:
        comps = dict(start or {})
        comps.update({k: load_component(k, v) for k, v in parts.items()})
        if cfg.sg_encoder_path:
            comps["sg_encoder"] = load_component("sg_encoder", cfg.sg_encoder_path)
    if cfg.scheduler is not None:
        comps["scheduler"] = DDIMScheduler.from_config(cfg.scheduler)
    if cfg.unet is not None:
        # heavy (the UNet class loads torchvision and peft, ~2 s): keeps pretrain_world.py --help light
        from diffusers import UNet2DConditionModel

        torch.manual_seed(seed)
        comps["unet"] = UNet2DConditionModel(**cfg.unet)
    text_dim = sum(comps[k].config.hidden_size for k in ("text_encoder", "text_encoder_2") if k in comps)
    if cfg.sg_encoder is not None:
        torch.manual_seed(seed + 1)
        comps["sg_encoder"] = SGEncoder(**{"text_dim": text_dim, **cfg.sg_encoder})
    need = ["vae", "text_encoder", "tokenizer", "unet", "scheduler", "sg_encoder"]
    missing = [k for k in need if k not in comps]
    if missing:
        raise ValueError(f"model config gives no {', '.join(missing)}: set model.base or model.tiny, or the "
                         "missing parts (model.text_encoder, model.tokenizer, model.vae, model.unet / unet_path, "
                         "model.scheduler, model.sg_encoder / sg_encoder_path)")
    if comps["unet"].config.cross_attention_dim != text_dim:
        raise ValueError(f"UNet cross_attention_dim={comps['unet'].config.cross_attention_dim} but the text "
                         f"encoder(s) give {text_dim}-d states")
    return comps


def make_pipeline(comps: dict[str, Any]):
    """The SG pipeline object of ``comps`` (``sgalign.pipelines.build_pipeline``)."""
    from ..pipelines import build_pipeline  # heavy (torchvision, peft: ~2 s): keeps pretrain_world.py --help light

    return build_pipeline(comps)


# ---- the loss -------------------------------------------------------------------------------------------------
def vae_input(images: Tensor, input_range: str = "[-1,1]") -> Tensor:
    """[0, 1] images -> the VAE's input: [-1, 1] (what SD's VAE was trained on) or LAION-SG's buggy [0, 1]."""
    return images * 2.0 - 1.0 if input_range == "[-1,1]" else images


def time_ids(original_sizes: Sequence[tuple[int, int]], height: int, width: int, order: str = "hw",
             device: Any = None) -> Tensor:
    """SDXL add_time_ids per row: original (h, w) [LAION-SG: (w, h)], crop (0, 0), target (h, w); fp32."""
    rows = [[*(hw if order == "hw" else hw[::-1]), 0, 0, height, width] for hw in original_sizes]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def diffusion_loss(pipe, batch: dict[str, Any], generator: torch.Generator | None = None, *,
                   uncond_prob: float = 0.0, vae_input_range: str = "[-1,1]", time_ids_order: str = "hw",
                   timesteps: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
    """Plain epsilon-MSE (v-MSE for v-prediction schedulers) of ``pipe``'s UNet on one batch."""
    images = batch["images"].to(pipe.unet.device)
    b, _, h, w = images.shape
    sched = pipe.scheduler
    with torch.no_grad():
        latents = pipe.vae.encode(vae_input(images, vae_input_range).to(pipe.vae.dtype)).latent_dist.sample(generator)
        latents = latents * pipe.vae.config.scaling_factor
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    if timesteps is None:
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator)
    timesteps = timesteps.to(latents.device)
    noisy = sched.add_noise(latents, noise, timesteps)

    cond = build_conditioning(batch["graphs"], pipe.sg_encoder, pipe.tokenizers, pipe.text_encoders,
                              height=h, width=w)
    if cond.add_time_ids is not None:
        cond.add_time_ids = time_ids(batch["original_sizes"], h, w, time_ids_order, latents.device)
    if uncond_prob > 0:
        drop = torch.rand(b, generator=generator) < uncond_prob
        if drop.any():
            pad = pipe.sg_encoder.config.pad_with_eos_copies
            unc = unconditional_conditioning(cond, pipe.tokenizers, pipe.text_encoders, pad_with_eos_copies=pad)
            m = drop.to(latents.device)
            cond = SGConditioning(
                torch.where(m[:, None, None], unc.prompt_embeds, cond.prompt_embeds),
                None if cond.pooled_prompt_embeds is None else
                torch.where(m[:, None], unc.pooled_prompt_embeds, cond.pooled_prompt_embeds), cond.add_time_ids)
    cond = cond.to(dtype=pipe.unet.dtype)
    pred = pipe.unet(noisy, timesteps, **cond.unet_kwargs(), return_dict=False)[0]
    target = prediction_target(noise, latents, timesteps, sched.alphas_cumprod, sched.config.prediction_type)
    return F.mse_loss(pred.float(), target.float())


def param_groups(modules: Sequence[torch.nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """LAION-SG's AdamW groups: decay on >= 2-D weights; biases, 1-D params (``alpha_obj``), ``logit_scale`` none."""
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int, schedule: str = "cosine"):
    """Linear warmup over ``warmup`` steps, then cosine to 0 at ``total`` (or constant)."""
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


# ---- provenance -----------------------------------------------------------------------------------------------
def model_card(rec: dict[str, Any], pipeline_class: str) -> str:
    m = rec["machine"]
    state = "complete" if rec["complete"] else "INTERMEDIATE checkpoint (training still running or stopped)"
    if rec.get("stopped_early"):
        state += f" (stopped early: {rec['stopped_early']})"
    rnd = f" RANDOM-INIT parts (tests/plumbing only): {rec['random_init_parts']}." if rec["random_init_parts"] else ""
    return f"""# SG-conditioned diffusion pipeline ({pipeline_class}), made by sgalign's pretrain_sg

Load: `{pipeline_class}.from_pretrained(this_folder)` (sgalign.pipelines).{rnd}

* state: {state}; {rec['steps']} of {rec['planned_steps']} optimiser steps, effective batch {rec['effective_batch']}
  ({rec['num_processes']} process(es) x {rec['batch_size_per_process']} x accumulation {rec['grad_accum']}),
  lr {rec['lr']} ({rec['lr_schedule']}, warmup {rec['warmup_steps']}), EMA {rec['ema_decay']}, seed {rec['seed']}
* trained: {', '.join(rec['trained'])} (everything else frozen); data: {rec['data']}; SG-encoder mode: {rec['sg_mode']}
* loss: plain epsilon-MSE; VAE input {rec['vae_input_range']}; conditioning dropout {rec['uncond_prob']}
* wall time {rec['wall_seconds']:.0f} s on {m['cpu']} ({m['logical_cores']} logical cores, {m['torch_threads']} torch
  threads, torch {m['torch']}, {m['device']}; shared with other jobs: {m.get('shared_with_other_jobs', 'not recorded')})
* recipe: `{rec['recipe']}`; the resolved config is `pretrain_config.yaml`, the full record `{RECORD_NAME}`
""" + ("" if "initialised_from" not in rec else f"""\
* continued from a previous pretrain_sg run (`{rec['initialised_from'].get('recipe')}`,
  {rec['initialised_from'].get('steps')} steps); all stages: {rec['all_stages']['steps']} steps,
  {rec['all_stages']['wall_seconds']:.0f} s
""")


# ---- the trainer ----------------------------------------------------------------------------------------------
def _previous_record(cfg: ModelConfig) -> dict[str, Any] | None:
    """The training record of the pretrain_sg folder the UNet / SG encoder are loaded from, if any."""
    for part in (cfg.unet_path, cfg.sg_encoder_path, cfg.base):
        if part:
            folder = Path(part) if (Path(part) / RECORD_NAME).is_file() else Path(part).parent
            if (folder / RECORD_NAME).is_file():
                prev = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
                keep = ("recipe", "steps", "planned_steps", "complete", "wall_seconds", "effective_batch", "lr",
                        "ema_decay", "stopped_early", "all_stages", "initialised_from")
                return {"folder": str(folder), **{k: prev[k] for k in keep if k in prev}}
    return None


def _quiet(*_: Any) -> None:
    pass


def _trainable_pipeline(cfg: PretrainConfig, components: dict[str, Any]):
    """The pipeline of ``components``, everything frozen but the trained modules (in training mode); returns
    (pipe, trained)."""
    pipe = make_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    for name in ("vae", "text_encoder", "text_encoder_2", "unet", "sg_encoder"):
        m = getattr(pipe, name, None)
        if m is not None:
            m.requires_grad_(False).eval()
    trained = {n: getattr(pipe, n) for n, on in (("sg_encoder", cfg.train.train_sg_encoder),
                                                   ("unet", cfg.train.train_unet)) if on}
    for m in trained.values():
        m.requires_grad_(True).train()
    return pipe, trained


def _run_record(cfg: PretrainConfig, acc, pipe, dataset, total: int, command: str | None) -> dict[str, Any]:
    tc = cfg.train
    record: dict[str, Any] = {
        "recipe": command, "seed": tc.seed, "planned_steps": total, "batch_size_per_process": tc.batch_size,
        "grad_accum": tc.grad_accum, "num_processes": acc.num_processes,
        "effective_batch": tc.batch_size * tc.grad_accum * acc.num_processes, "lr": tc.lr,
        "warmup_steps": tc.warmup_steps, "lr_schedule": tc.lr_schedule, "ema_decay": tc.ema_decay,
        "trained": [n for n, f in (("sg_encoder", tc.train_sg_encoder), ("unet", tc.train_unet)) if f],
        "data": cfg.data.source, "dataset_size": len(dataset), "rejects": len(dataset.rejects),
        "vae_input_range": tc.vae_input_range, "time_ids_order": tc.time_ids_order, "uncond_prob": tc.uncond_prob,
        "sg_mode": pipe.sg_encoder.config.mode, "machine": machine_info(tc.machine_shared),
        "random_init_parts": [k for k in ("text_encoder", "vae") if cfg.model.tiny and not getattr(cfg.model, k)],
    }
    prev = _previous_record(cfg.model)
    if prev is not None:  # continuing a pretrain_sg run: keep its recipe and cost in this record
        record["initialised_from"] = prev
    return record


def _save(acc, pipe, loop: Loop, out: Path, record: dict[str, Any], complete: bool, t0: float) -> None:
    """The pipeline (EMA weights, if any) into ``out``, with its training record and model card (main process)."""
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    tmp = out.with_name(out.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    with loop.ema_weights():
        pipe.save_pretrained(tmp, safe_serialization=True)
    for f in sorted(tmp.iterdir()):  # replace the pipeline's entries, keep logs / rejects / config
        dst = out / f.name
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        shutil.move(str(f), str(dst))
    tmp.rmdir()
    losses = [h["loss"] for h in loop.history]
    rec = dict(record, steps=loop.step, complete=complete, wall_seconds=round(time.time() - t0, 1),
               final_loss_mean_last_50=float(np.mean(losses[-50:])) if losses else None,
               alpha_obj=float(pipe.sg_encoder.alpha_obj.detach().float().item()))
    prev = record.get("initialised_from")
    if prev is not None:
        before = prev.get("all_stages") or {"steps": prev.get("steps", 0), "wall_seconds": prev.get("wall_seconds", 0)}
        rec["all_stages"] = {"steps": before["steps"] + loop.step,
                             "wall_seconds": round(before["wall_seconds"] + rec["wall_seconds"], 1)}
    (out / RECORD_NAME).write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(rec, type(pipe).__name__), encoding="utf-8")


def _forever(loader) -> Iterator[Any]:
    while True:
        yield from loader


def train(cfg: PretrainConfig, *, dataset: Dataset | None = None, components: dict[str, Any] | None = None,
          command: str | None = None, log=print) -> Path:
    """Run pretraining; returns the output folder (a complete pipeline folder + training_record.json).

    ``dataset``: the rows to train on (default: ``build_dataset(cfg.data)``, LAION-SG); ``components``: the
    pipeline's components (default: ``build_components(cfg.model, train.seed)``; fresh parts are seeded there, not by
    the global seed). The world's renders and ``model.tiny``'s components come from the command layer,
    ``sgalign.jobs.pretrain_sg.run_pretrain_sg``."""
    tc = cfg.train
    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)
    # cpu=True without CUDA: lets accelerate pick its multi-CPU (gloo) mode under torchrun / accelerate launch
    acc = Accelerator(gradient_accumulation_steps=tc.grad_accum, mixed_precision=tc.mixed_precision,
                      cpu=not torch.cuda.is_available())
    set_seed(tc.seed, device_specific=True)
    if not acc.is_main_process:
        log = _quiet  # noqa: F811 -- one process logs
    out = Path(tc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        dataset = build_dataset(cfg.data)
    if acc.is_main_process and (cfg.data.source == "laion" or dataset.rejects):
        write_rejects(dataset.rejects, out / "rejects.jsonl")
        if dataset.rejects:
            log(f"skipped {len(dataset.rejects)} bad records (see rejects.jsonl); first: {dataset.rejects[0]}")
    if components is None:
        components = build_components(cfg.model, tc.seed)
    pipe, trained = _trainable_pipeline(cfg, components)
    gen = torch.Generator().manual_seed(tc.seed)
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=True, collate_fn=collate,
                        num_workers=tc.num_workers, generator=gen, drop_last=len(dataset) >= tc.batch_size)
    optimizer = torch.optim.AdamW(param_groups(list(trained.values()), tc.weight_decay), lr=tc.lr, betas=tc.betas,
                                  eps=tc.adam_eps)
    # The models are not DDP-wrapped: the pipeline calls them directly (build_conditioning needs the SGEncoder's
    # config), so the loop averages gradients across processes before each optimiser step (a no-op alone).
    optimizer, loader = acc.prepare(optimizer, loader)
    # after prepare: the loader is this process's shard, so the schedule covers the steps this run really takes
    total = tc.max_steps if tc.max_steps is not None else max(1, len(loader) // tc.grad_accum) * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.warmup_steps, total, tc.lr_schedule))
    loop = Loop(trained, optimizer, scheduler, max_grad_norm=tc.max_grad_norm, ema_decay=tc.ema_decay,
                max_seconds=None if tc.max_wall_minutes is None else 60 * tc.max_wall_minutes,
                save_every=tc.save_every, accelerator=acc)
    step_gen = torch.Generator().manual_seed(tc.seed * 1000 + acc.process_index)
    record = _run_record(cfg, acc, pipe, dataset, total, command)
    if acc.is_main_process:
        dump_config(cfg, out / "pretrain_config.yaml")
    batches = _forever(loader)

    def loss_fn(_: int):
        loss = diffusion_loss(pipe, next(batches), step_gen, uncond_prob=tc.uncond_prob,
                              vae_input_range=tc.vae_input_range, time_ids_order=tc.time_ids_order)
        return loss, {"loss": float(loss.detach())}

    def on_step(step: int, _: dict) -> None:
        if tc.log_every and step % tc.log_every == 0:
            log(f"step {step}/{total} loss {np.mean([h['loss'] for h in loop.history[-tc.log_every:]]):.4f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} alpha {pipe.sg_encoder.alpha_obj.item():+.4f} "
                f"{time.time() - t0:.0f}s")

    def on_save(final: bool) -> None:
        if final:
            for m in trained.values():
                m.eval()
            if loop.timed_out:
                record["stopped_early"] = f"max_wall_minutes={tc.max_wall_minutes} reached at step {loop.step}"
        _save(acc, pipe, loop, out, record, final, t0)

    t0 = time.time()
    log(f"pretrain_sg: {len(dataset)} samples, {total} optimiser steps x effective batch "
        f"{record['effective_batch']}, training {record['trained']}")
    loop.run(total, loss_fn, on_step=on_step, on_save=on_save)
    return out
