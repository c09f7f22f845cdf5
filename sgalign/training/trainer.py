"""The accelerate training loop shared by every method and both tasks.

``train(cfg)`` builds models, data, optimizer; then per optimizer step runs ``gradient_accumulation_steps``
micro-batches under ``accelerator.accumulate``; each micro-batch: encode images (frozen VAE) and conditioning
once, build ``PairBatch`` + ``MethodContext``, call the method, back-propagate unless the method did, clip,
step. The method's randomness (t, ε, inversion jitter, flips, prompt dropout) comes from a generator seeded by
(seed, global micro-batch index), where global index = local index x processes + rank; hence N processes with
accumulation A see exactly the pairs and noise of 1 process with accumulation N x A, and a resumed run draws
what an uninterrupted one would. A non-finite loss or gradient norm stops the run (``TrainingDiverged``)
before the optimizer step, so the last checkpoint is the last good state.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.utils.torch_utils import randn_tensor

from ..config import ConfigError, dump_config
from ..errors import UserError
from ..diffusion import TrajectoryCache, check_prediction, model_fingerprint
from ..hashing import folder_sha256
from ..methods import MethodContext, PairBatch, build_method
from ..models.loading import load_model
from ..progress import progress
from .checkpoint import export_pipeline, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .config import TrainConfig, method_optimizer_notes
from .data import BatchStream, CandidatePairs, PickapicPairs, preprocess
from .modeling import (ConditionEncoder, Denoiser, add_lora, freeze, frozen_copy, sign_attention_processors,
                       weight_drift)
from ..outdir import RunMismatch, check_claim, empty, locked, refuse_inputs, write_record
from .runs import SYNTHETIC, dataset_id, default_output_dir, read_run, resolve_data_path, run_identity, write_run
from .synthetic import write_candidate_dataset, write_pickapic


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the message names the step and the last good checkpoint, ``next_command``
    is the command that retries with a lower lr (printed as the ``next:`` line)."""

    exit_code = 3  # sgalign.errors.EXIT_DIVERGED

    def __init__(self, message: str, next_command: str | None = None):
        super().__init__(message)
        self.next_command = next_command


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_checkpoint: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


def _peak_memory_gb() -> float:
    """Peak accelerator memory (CUDA), else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    import resource  # optional dependency: Unix-only stdlib module, needed only without CUDA
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _micro_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] & ((1 << 63) - 1))


def resolve_run_paths(cfg: TrainConfig) -> None:
    """In place: ``data.path`` null -> build_pairs' default output (refused when missing, before any folder or model
    exists: a missing dataset leaves no trace), ``trainer.output_dir`` null -> the default run folder."""
    if cfg.data.path != SYNTHETIC:
        cfg.data.path = resolve_data_path(cfg.task, cfg.data.path)
    if cfg.trainer.output_dir is None:
        cfg.trainer.output_dir = str(default_output_dir(cfg.task, cfg.method.name))


class Trainer:
    def __init__(self, cfg: TrainConfig, overwrite: bool = False):
        self.cfg = cfg
        if cfg.model.path == "auto":  # the trainer knows neither the world model nor the tiny factory
            raise ConfigError("model.path=auto reached the trainer: resolve it first (sgalign.jobs.commands."
                              "resolve_model_path, as scripts/train.py does) or pass a model folder")
        resolve_run_paths(cfg)
        self.run_dir = Path(cfg.trainer.output_dir)
        tb = cfg.logging.tensorboard
        if tb == "auto":
            tb = "on" if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX") else "off"
        self.acc = Accelerator(gradient_accumulation_steps=cfg.trainer.gradient_accumulation_steps,
                               mixed_precision=cfg.trainer.mixed_precision,
                               log_with="tensorboard" if tb == "on" else None,
                               project_config=ProjectConfiguration(project_dir=str(self.run_dir),
                                                                   logging_dir=str(self.run_dir / "logs")))
        self.notes: list[str] = []
        self.finished = self._claim_run(overwrite)  # before anything is written into the run folder
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.finished is not None:  # the same run already finished here: nothing to do
            return
        if cfg.model.random_init:
            self.notes.append(f"RANDOM-INIT base model {cfg.model.path} (plumbing only, meaningless weights)")
        self._resolve_data_path()
        self.record["dataset"]["path"] = str(cfg.data.path)
        if self.acc.is_main_process:
            write_run(self.run_dir, self.record)
        self.acc.wait_for_everyone()
        self._build_models()
        self._build_data()
        self.method = build_method(cfg.method.name, cfg.method.chosen())  # the method's config class validates
        self._note_method_optimizer_settings()
        self._build_optimizer()
        self.cache = TrajectoryCache(self.run_dir / "trajectory_cache", compute_dtype=self._reference_dtype()) \
            if cfg.trainer.trajectory_cache else None
        self.ref_hash = model_fingerprint(self.reference) if self.cache is not None else None
        self.step, self.micro, self.pairs = 0, 0, 0
        if self.acc.is_main_process:
            dump_config(cfg, self.run_dir / "resolved_config.yaml")
        if tb == "on":
            self.acc.init_trackers("sgalign", config={"method": cfg.method.name, "task": cfg.task})

    # ---- set-up ---------------------------------------------------------------------------------------------
    def _reference_dtype(self) -> str:
        """What the reference computes in (trajectory-cache key): the autocast dtype, else its weights' dtype."""
        mp = self.cfg.trainer.mixed_precision
        return {"fp16": "float16", "bf16": "bfloat16"}.get(mp) or \
            str(next(self.reference.parameters()).dtype).removeprefix("torch.")

    def _log(self, msg: str) -> None:
        if self.acc.is_main_process:
            print(msg, flush=True)

    def _claim_run(self, overwrite: bool) -> dict[str, Any] | None:
        """One folder, one run: identify this run (resolved config minus resume-neutral keys, base model and data
        by content); the stored summary when the same run already finished here, else None after claiming the
        folder (same unfinished run with checkpoints: resume from the latest; another run's folder: refused, or
        emptied with ``overwrite``)."""
        m, d = self.cfg.model, self.cfg.data
        base = m.path
        base_sha = folder_sha256(base)
        data_id = None if d.path == SYNTHETIC else dataset_id(d.path)
        run_id, _ = run_identity(self.cfg.model_dump(mode="json"), base_sha, data_id)
        refuse_inputs({"trainer.output_dir": self.run_dir}, train_inputs(self.cfg),
                      emptied=True)  # final/ is replaced and --overwrite empties the folder
        state = check_claim(self.run_dir, "train", run_id, "trainer.output_dir", overwrite)
        old = read_run(self.run_dir)
        if state == "same" and old.get("finished") and (self.run_dir / "summary.json").is_file():
            self._log(f"[sgalign] {self.run_dir}: this run already finished (run_id {run_id}); skipped")
            return json.loads((self.run_dir / "summary.json").read_text())
        if state == "same" and not self.cfg.checkpointing.resume and latest_checkpoint(self.run_dir) is not None:
            self.cfg.checkpointing.resume = "latest"  # a rerun continues where the killed one stopped
            self._log(f"[sgalign] {self.run_dir}: unfinished run {run_id}; resuming from its latest checkpoint")
        self.acc.wait_for_everyone()  # every process decided on the folder as it was
        if state == "overwrite" and self.acc.is_main_process:
            self._log(f"[sgalign] --overwrite: emptying {self.run_dir} (it held another run)")
            empty(self.run_dir)
        self.record = {"kind": "train", "run_id": run_id, "task": self.cfg.task, "method": self.cfg.method.name,
                       "base_model": {"path": str(base), "sha256": base_sha, "random_init": m.random_init},
                       "dataset": {"path": str(d.path), "dataset_id": data_id}, "finished": False}
        if self.acc.is_main_process:
            write_record(self.run_dir, self.record)
        self.acc.wait_for_everyone()
        return None

    def _resolve_data_path(self) -> None:
        d = self.cfg.data
        if d.path != SYNTHETIC:
            return
        res = d.resolution or 16
        if self.cfg.task == "compositional":
            out = self.run_dir / "data-synthetic-candidates"
            if self.acc.is_main_process and not out.exists():
                write_candidate_dataset(out, rows=d.synthetic_rows, size=res, seed=self.cfg.trainer.seed)
        else:
            out = self.run_dir / "data-synthetic-pickapic.parquet"
            if self.acc.is_main_process and not out.exists():
                write_pickapic(out, rows=d.synthetic_rows, size=res, seed=self.cfg.trainer.seed, scores=True)
        self.acc.wait_for_everyone()
        d.path = str(out)
        note = f"SYNTHETIC placeholder data (random images and rewards) written to {out}: data.path=synthetic"
        self.notes.append(note)
        self._log(f"[sgalign] {note}")

    def _build_models(self) -> None:
        m, dev = self.cfg.model, self.acc.device
        sg_task = self.cfg.task == "compositional"  # t2i trains the text path: an SG folder's encoder stays unloaded
        # model.unet_init: a UNet folder that initialises policy AND reference in place of the folder's own
        self.comps = comps = load_model(m.path, variant=m.variant, sg_encoder=m.sg_encoder or None,
                                        text_only=not sg_task, require_sg_encoder=sg_task, parts={"unet": m.unet_init})
        arch, sg, unet = comps.arch, comps.sg_encoder, comps["unet"]
        sign_attention_processors(unet)  # before the reference copy: both get them
        sign_attention_processors(comps["vae"])
        mp = self.cfg.trainer.mixed_precision
        fd = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
            m.frozen_dtype if m.frozen_dtype != "auto" else {"no": "fp32"}.get(mp, mp), torch.float32)
        cast = lambda mod: freeze(mod).to(dev) if fd == torch.float32 else freeze(mod).to(dev, fd)
        self.vae = cast(comps["vae"])
        # once: diffusers' ModelMixin.dtype walks every submodule per access (6 ms for the world VAE)
        self.vae_dtype = next(self.vae.parameters()).dtype
        tes = [cast(comps["text_encoder"])]
        toks = [comps["tokenizer"]]
        if arch == "sdxl":
            tes.append(cast(comps["text_encoder_2"]))
            toks.append(comps["tokenizer_2"])
        res = self.cfg.data.resolution or unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = res
        self.encoder = ConditionEncoder(toks, tes, sg_mode=sg.config.mode if sg is not None else None,
                                        self_loops=sg.config.self_loops if sg is not None else True,
                                        height=res, width=res, cache=self.cfg.data.cache_text)
        self.unconditional = self.encoder.unconditional_branch()  # guidance's uncond: SD1.5 empty text, SDXL zeros
        pad = bool(sg.config.pad_with_eos_copies) if sg is not None else False
        # reference: frozen copies (same dtype/kernels as the policy) or, under LoRA, the base with adapters off
        self.lora = m.train_unet == "lora"
        if m.train_unet == "full":
            ref_unet = frozen_copy(unet)
            unet.requires_grad_(True)
        elif self.lora:
            add_lora(unet, m.lora.rank, m.lora.alpha, m.lora.dropout, m.lora.target_modules)
            ref_unet = unet
        else:
            ref_unet = freeze(unet)
        if sg is not None:
            if m.train_sg_encoder:
                ref_sg = frozen_copy(sg)
                sg.requires_grad_(True)
            else:
                ref_sg = freeze(sg)
        else:
            ref_sg = None
        if m.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        if sg is not None:
            sg.train(m.train_sg_encoder)
        self.policy = Denoiser(unet, sg, pad).to(dev)
        self.reference = Denoiser(ref_unet, ref_sg, pad).to(dev)
        if not self.lora:
            self.reference.eval()
        sched = comps["scheduler"]
        kind = sched.config.get("prediction_type", "epsilon")
        try:
            self.prediction = check_prediction(kind)
        except ValueError:
            raise UserError(f"{m.path}: its scheduler predicts {kind!r}; the preference trainer supports epsilon and "
                            "v_prediction models") from None
        self.alphas_cumprod = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float32).to(dev)
        self.ema = None
        if self.cfg.trainer.ema:
            from diffusers.training_utils import EMAModel  # heavy (~3 s): keeps sgalign.training import light
            self.ema = EMAModel([p for p in self.policy.parameters() if p.requires_grad],
                                decay=self.cfg.trainer.ema_decay)

    def _build_data(self) -> None:
        d, acc = self.cfg.data, self.acc
        kw = dict(seed=self.cfg.trainer.seed, num_replicas=acc.num_processes, rank=acc.process_index)
        if self.cfg.task == "compositional":
            src = CandidatePairs(d.path, margin=d.margin, mode=d.pair_mode, **kw)
        else:
            src = PickapicPairs(d.path, score_columns=d.score_columns, **kw)
            if src.ties_dropped:
                self._log(f"[sgalign] {d.path}: dropped {src.ties_dropped} tied pairs (label_0 == 0.5)")
        self.source = src
        self.stream = BatchStream(src, d.batch_size)
        self.latent_cache: dict[str, torch.Tensor] | None = {} if d.cache_latents else None

    def _note_method_optimizer_settings(self) -> None:
        """The run notes on the optimizer settings the method's faithful reproduction needs: the config merged them
        when it was resolved (``TrainConfig._method_optimizer``); the trainer only reads the resolved config."""
        for note in method_optimizer_notes(self.cfg, self.method.optimizer_overrides()):
            self.notes.append(note)
            self._log(f"[sgalign] {note}")

    def _build_optimizer(self) -> None:
        o, t = self.cfg.optimizer, self.cfg.trainer
        eff = self.cfg.data.batch_size * t.gradient_accumulation_steps * self.acc.num_processes
        self.lr = o.lr * eff if o.scale_lr else o.lr
        sg = self.policy.sg_encoder
        sg_ids = {id(p) for p in sg.parameters()} if sg is not None and o.sg_encoder_lr is not None else set()
        params: list[Any] = [p for p in self.policy.parameters() if p.requires_grad and id(p) not in sg_ids]
        sg_params = [p for p in self.policy.parameters() if p.requires_grad and id(p) in sg_ids]
        if sg_params:  # its own group: the scheduler scales both lrs by the same factor
            params = [{"params": params}, {"params": sg_params,
                                           "lr": o.sg_encoder_lr * eff if o.scale_lr else o.sg_encoder_lr}]
        self.effective_batch = eff
        if o.name == "adamw":
            # foreach: one kernel per op over all tensors (the CPU default loops in Python); same values bit for bit
            opt = torch.optim.AdamW(params, lr=self.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps,
                                    foreach=True)
        elif o.name == "adamw8bit":
            try:
                import bitsandbytes as bnb  # optional dependency
            except ImportError:
                raise ImportError("optimizer.name=adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                                  "or use optimizer.name=adamw") from None
            opt = bnb.optim.AdamW8bit(params, lr=self.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
        else:  # official SDXL setting: fixed lr, no relative step, clip_threshold 1
            from transformers.optimization import Adafactor  # heavy (~3 s): keeps sgalign.training import light
            opt = Adafactor(params, lr=self.lr, scale_parameter=False, relative_step=False, warmup_init=False,
                            clip_threshold=1.0, weight_decay=o.weight_decay)
        # stepped by us once per optimizer step (not prepared: accelerate would step it once per process)
        self.scheduler = get_scheduler(o.lr_scheduler, opt, num_warmup_steps=o.warmup_steps,
                                       num_training_steps=t.max_steps)
        self.policy, self.optimizer = self.acc.prepare(self.policy, opt)

    # ---- one micro-batch ------------------------------------------------------------------------------------
    def _policy_out(self, x, t, c):
        return self.policy(x, t, c)  # the prepared (possibly DDP/FSDP/DeepSpeed-wrapped) module

    @torch.no_grad()
    def _reference_out(self, x, t, c):
        with self.acc.autocast():
            if not self.lora:
                return self.reference(x, t, c).float()
            unet = self.reference.unet
            unet.disable_adapters()
            try:
                return self.reference(x, t, c).float()
            finally:
                unet.enable_adapters()

    @torch.no_grad()
    def _latents(self, images, ids, gen: torch.Generator, batched: bool = True) -> torch.Tensor:
        """Scaled VAE latents of ``images``. Random draws (flip, crop, posterior noise) come from ``gen`` in the
        row-by-row order, image after image; ``batched`` then encodes every uncached image in one VAE call
        (``batched=False``: one call per image, the reference path of the tests). With the latent cache on, every
        image is encoded alone: a batched encode's floats depend on the batch's size and neighbours, i.e. on what
        happened to be cached already, so a resumed run (empty cache) would cache other values than an
        uninterrupted one (issue 29; measured after a kill -9 + resume: max |Δ| 3.1e-6 in the world UNet). One call per image makes a cached latent a
        pure function of its image; each image is encoded once per run, so the extra calls are few."""
        d, dev, vae, dtype = self.cfg.data, self.acc.device, self.vae, self.vae_dtype
        cache = self.latent_cache
        batched = batched and cache is None
        out: list[torch.Tensor | None] = [None] * len(images)
        todo: list[int] = []  # rows to encode, in draw order
        first: dict[str, int] = {}  # key -> the row that encodes it (a repeat reads the cache, as row by row)
        xs, noise = [], []
        for i, (img, key) in enumerate(zip(images, ids)):
            if cache is not None and key in cache:
                out[i] = cache[key].to(dev)
                continue
            if cache is not None and key in first:
                continue
            flip = d.random_flip and bool(torch.rand(1, generator=gen, device=gen.device) < 0.5)
            x = preprocess(img, self.resolution, d.center_crop, flip, gen)[None].to(dev, dtype)
            if not batched:
                out[i] = self._encode(x, gen)
                if cache is not None:
                    cache[key] = out[i].cpu()
                continue
            xs.append(x)
            todo.append(i)
            if cache is not None:
                first[key] = i
            if d.vae_sample:  # the draw latent_dist.sample(generator) makes, taken now to keep the row order
                f = 2 ** (len(vae.config.block_out_channels) - 1)
                shape = (1, vae.config.latent_channels, x.shape[2] // f, x.shape[3] // f)
                noise.append(randn_tensor(shape, generator=gen, device=dev, dtype=dtype))
        if todo:
            lat = self._encode(torch.cat(xs), None, torch.cat(noise) if noise else None)
            for j, i in enumerate(todo):
                out[i] = lat[j:j + 1]
                if cache is not None:
                    cache[ids[i]] = out[i].cpu()
        for i, key in enumerate(ids):  # repeats of an image encoded in this batch
            if out[i] is None:
                out[i] = cache[key].to(dev)
        # contiguous: cat of strided slices may pick channels-last, and the UNet's kernels then round differently
        # for the grad and no-grad passes (faithful Inversion-DPO's exact zero gradient at θ = θ_ref needs them equal)
        return torch.cat(out).contiguous()

    def _encode(self, x: torch.Tensor, gen: torch.Generator | None, noise: torch.Tensor | None = None) -> torch.Tensor:
        dist = self.vae.encode(x).latent_dist
        if not self.cfg.data.vae_sample:
            lat = dist.mean
        elif noise is not None:  # latent_dist.sample() with pre-drawn noise
            lat = dist.mean + dist.std * noise
        else:
            lat = dist.sample(generator=gen)
        return (lat.float() * self.vae.config.scaling_factor).contiguous()

    def make_batch(self, pairs, gen: torch.Generator, batched: bool = True) -> PairBatch:
        """Latents + the batch's one conditioning value (+ scores) of a list of ``RawPair``: winners and losers
        through the VAE together, each unique prompt through the text encoders once (``batched=False``: the
        row-by-row reference path; same draws, same values up to float reassociation)."""
        p = self.cfg.data.proportion_empty_prompts
        prompts, keys = [], []
        for r in pairs:
            empty = p > 0 and bool(torch.rand(1, generator=gen, device=gen.device) < p)
            prompts.append("" if empty and not hasattr(r.prompt, "items") else
                           (type(r.prompt)([]) if empty else r.prompt))
            keys.append("__empty__" if empty else r.row)
        enc = self.encoder.batch if batched else self.encoder.batch_rows
        cond = {k: v.to(self.acc.device) for k, v in enc(prompts, keys).items()}
        B = len(pairs)
        x = self._latents([r.image_w for r in pairs] + [r.image_l for r in pairs],
                          [r.id_w for r in pairs] + [r.id_l for r in pairs], gen, batched)
        x_w, x_l = x[:B], x[B:]
        dev = self.acc.device  # with the latents: methods mask latents by score comparisons
        sw = torch.tensor([r.score_w for r in pairs], device=dev) if pairs[0].score_w is not None else None
        sl = torch.tensor([r.score_l for r in pairs], device=dev) if pairs[0].score_l is not None else None
        return PairBatch(x_w, x_l, cond, sw, sl, [r.id_w for r in pairs], [r.id_l for r in pairs])

    def context(self, gen: torch.Generator) -> MethodContext:
        return MethodContext(policy=self._policy_out, reference=self._reference_out,
                             alphas_cumprod=self.alphas_cumprod, generator=gen, cache=self.cache,
                             reference_hash=self.ref_hash, backward=self.acc.backward,
                             unconditional=self.unconditional, prediction=self.prediction)

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator(device=self.acc.device).manual_seed(_micro_seed(self.cfg.trainer.seed, index))

    def _micro_step(self):
        acc = self.acc
        gen = self.generator(self.micro * acc.num_processes + acc.process_index)
        pairs = self.stream.next()
        self.micro += 1
        batch = self.make_batch(pairs, gen)
        with acc.accumulate(self.policy):
            out = self.method(batch, self.context(gen))
            if not torch.isfinite(out.loss.detach()).all():
                raise TrainingDiverged(*self._diverged("loss", out.loss.detach()))
            if not out.backward_done:
                acc.backward(out.loss)
            gnorm = None
            if acc.sync_gradients:
                mg = self.cfg.optimizer.max_grad_norm
                if mg is not None:
                    gnorm = acc.clip_grad_norm_(self.policy.parameters(), mg)
                else:
                    gnorm = torch.norm(torch.stack([p.grad.norm() for p in self.policy.parameters()
                                                    if p.grad is not None]))
                if gnorm is not None and not torch.isfinite(torch.as_tensor(gnorm)).all():
                    raise TrainingDiverged(*self._diverged("gradient norm", gnorm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        margin = (batch.score_w - batch.score_l).abs().mean().item() if batch.score_w is not None else None
        return out, gnorm, batch.size, margin

    def _diverged(self, what: str, value) -> tuple[str, str]:
        return diverged_message(self.cfg, self.run_dir, what, float(torch.as_tensor(value).float().mean()),
                                self.step + 1, self.micro)

    # ---- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "micro": self.micro, "pairs": self.pairs, "stream": self.stream.state_dict(),
                "scheduler": self.scheduler.state_dict(), "method": self.cfg.method.name,
                "run_id": self.record["run_id"]}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if s.get("run_id", self.record["run_id"]) != self.record["run_id"]:
            raise RunMismatch(f"checkpoint of run {s['run_id']}, not of this run ({self.record['run_id']}): resume "
                              "only with the settings it was saved with")
        self.step, self.micro, self.pairs = s["step"], s["micro"], s["pairs"]
        self.stream.load_state_dict(s["stream"])
        self.scheduler.load_state_dict(s["scheduler"])

    def save(self) -> Path:
        path = save_checkpoint(self, self.run_dir, self.step)
        if self.cfg.checkpointing.keep:
            prune_checkpoints(self.run_dir, self.cfg.checkpointing.keep, self.acc)
        return path

    def _metrics_up_to(self, step: int) -> list[dict[str, float]]:
        """Cut ``metrics.jsonl`` back to the rows of steps <= ``step`` (rows a killed process logged after its last
        checkpoint are redone by this one and would appear twice) and return them."""
        path = self.run_dir / "metrics.jsonl"
        rows = []
        if path.is_file():
            rows = [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip())
                    if r["step"] <= step]
        if self.acc.is_main_process and path.is_file():
            tmp = path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, path)
        self.acc.wait_for_everyone()
        return [{k: v for k, v in r.items() if k != "step"} for r in rows]

    def resume(self, spec: str) -> None:
        path = latest_checkpoint(self.run_dir) if spec == "latest" else Path(spec)
        if path is None:
            self._log(f"[sgalign] resume=latest: no checkpoint in {self.run_dir / 'checkpoints'}; starting fresh")
            return
        load_checkpoint(self, path)
        self._log(f"[sgalign] resumed from {path} at step {self.step}")

    # ---- loop -------------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg, acc = self.cfg, self.acc
        if cfg.checkpointing.resume:
            self.resume(cfg.checkpointing.resume)
        A = cfg.trainer.gradient_accumulation_steps
        bar = None
        if acc.is_main_process:
            bar = progress(cfg.trainer.max_steps, desc=f"{cfg.method.name}/{cfg.task}", unit="step",
                           initial=self.step, enabled=cfg.logging.tqdm)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0, pairs0, last = time.perf_counter(), self.pairs, None
        hist = self._metrics_up_to(self.step)  # the run so far: summaries cover it, not just this process
        prov: dict[str, Any] = {}
        while self.step < cfg.trainer.max_steps:
            logs: dict[str, float] = {}
            for _ in range(A):
                out, gnorm, n, margin = self._micro_step()
                self.pairs += n * acc.num_processes
                vals = {"loss": out.loss.item(), **out.metrics,
                        **({"reward_margin": margin} if margin is not None else {}),
                        **{f"fwd/{k}": v for k, v in out.forwards.as_dict().items()}}
                for k, v in vals.items():
                    logs[k] = logs.get(k, 0.0) + v / A
                prov = out.provenance
            if acc.num_processes > 1:  # every logged value is the mean over processes
                keys = sorted(logs)
                red = acc.reduce(torch.tensor([logs[k] for k in keys], device=acc.device, dtype=torch.float64), "mean")
                logs = dict(zip(keys, red.tolist()))
            self.scheduler.step()
            if self.ema is not None:
                self.ema.step([p for p in self.policy.parameters() if p.requires_grad])
            self.step += 1
            dt = time.perf_counter() - t0
            logs.update({"grad_norm": float(gnorm) if gnorm is not None else math.nan,
                         "lr": self.scheduler.get_last_lr()[0],
                         "pairs_per_s": (self.pairs - pairs0) / max(dt, 1e-9),
                         "peak_mem_gb": _peak_memory_gb()})
            hist.append(logs)
            if self.step % cfg.logging.every == 0:
                acc.log(logs, step=self.step)
                if acc.is_main_process:  # always on disk, TensorBoard or not
                    with open(self.run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps({"step": self.step, **logs}) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs.get('implicit_acc', float('nan')):.2f}")
            if bar is not None:
                bar.update(1)
            if cfg.checkpointing.every and self.step % cfg.checkpointing.every == 0 \
                    and self.step < cfg.trainer.max_steps:
                last = self.save()
        last = self.save()
        if cfg.checkpointing.final_pipeline:
            export_pipeline(self, self.run_dir / "final")
        if bar is not None:
            bar.close()
        summary = self._summary(hist, prov, time.perf_counter() - t0)
        if acc.is_main_process:
            self.record.update(finished=True, finished_at=time.time(), steps=self.step)
            write_run(self.run_dir, self.record)
            if cfg.checkpointing.final_pipeline:
                write_run(self.run_dir / "final", self.record)  # final/ chains to its run when moved alone
        acc.end_training()
        return TrainResult(self.run_dir, self.step, last, summary)

    def _summary(self, hist, prov, seconds) -> dict[str, Any]:
        tail = hist[-max(1, len(hist) // 5):] if hist else [{}]
        mean = lambda k: float(np.mean([h[k] for h in tail if k in h])) if any(k in h for h in tail) else math.nan
        s = {"task": self.cfg.task, "method": self.cfg.method.name, "steps": self.step, "pairs": self.pairs,
             "final_loss": mean("loss"), "implicit_acc": mean("implicit_acc"),
             "unet_forwards_per_pair": mean("fwd/grad") + mean("fwd/no_grad"),
             "pairs_per_s": hist[-1]["pairs_per_s"] if hist else 0.0,
             "peak_mem_gb": hist[-1]["peak_mem_gb"] if hist else 0.0,
             "seconds": seconds, "random_init_model": self.cfg.model.random_init,
             # the optimizer's lr: resolved_config.yaml's optimizer.lr, x effective_batch when scale_lr
             "lr": self.lr, "effective_batch": self.effective_batch,
             "skipped_pairs": len(self.source.skipped), "notes": self.notes, "method_provenance": prov,
             "weight_drift": weight_drift(self.acc.unwrap_model(self.policy), self.reference)}
        if self.acc.is_main_process:
            (self.run_dir / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
            self._log(f"[sgalign] done: {s['method']}/{s['task']} {s['steps']} steps, {s['pairs']} pairs, loss "
                      f"{s['final_loss']:.4f}, implicit acc {s['implicit_acc']:.3f}, {s['unet_forwards_per_pair']:.1f} "
                      f"UNet fwd/pair, {s['pairs_per_s']:.2f} pairs/s, peak {s['peak_mem_gb']:.2f} GB"
                      + (" [RANDOM-INIT model]" if s["random_init_model"] else "")
                      + (f", {s['skipped_pairs']} pairs skipped" if s["skipped_pairs"] else ""))
        return s


def diverged_message(cfg: TrainConfig, run_dir: Path, what: str, value: float, step: int,
                     micro: int) -> tuple[str, str]:
    """(why the run stopped, a command that works): a lower lr is another run (its id includes the lr), so the
    command starts one beside this one from this run's resolved config (the same settings, data and base model)."""
    last = latest_checkpoint(run_dir)
    lr = f"{cfg.optimizer.lr / 10:.2e}"  # "1.00e-06": a float to YAML (PyYAML reads "1e-06" as a string)
    cmd = shlex.join(["python", "scripts/train.py", "--task", cfg.task, "--config",
                      str(run_dir / "resolved_config.yaml"), "--set", f"optimizer.lr={lr}",
                      "--set", "checkpointing.resume=null", "--set", f"trainer.output_dir={run_dir}-lr{lr}"])
    return (f"non-finite {what} ({value}) at optimizer step {step} (micro-batch {micro}); stopped before the "
            f"optimizer step; last good checkpoint: {last if last else 'none'}; the next: line retries with a "
            "lower lr as a new run", cmd)


def train_inputs(cfg: TrainConfig, config_file: str | Path | None = None) -> dict[str, Any]:
    """What a run reads and must never write into: base model, data, UNet init, SG encoder, config file."""
    d = cfg.data
    return {"model.path": cfg.model.path, "data.path": None if d.path == SYNTHETIC else d.path,
            "model.unet_init": cfg.model.unet_init, "model.sg_encoder": cfg.model.sg_encoder,
            "--config": config_file}


def train(cfg: TrainConfig, overwrite: bool = False, config_file: str | Path | None = None) -> TrainResult:
    """Train ``cfg`` (``overwrite``: empty an output folder that holds another run; ``config_file``: the YAML it
    came from, an input too). The main process holds the run folder's lock throughout, so a second trainer into
    the same folder stops at once."""
    resolve_run_paths(cfg)  # a missing dataset is refused before the run folder exists
    # before the lock creates the folder: an output inside an input must not leave even an empty folder there
    refuse_inputs({"trainer.output_dir": cfg.trainer.output_dir}, train_inputs(cfg, config_file), emptied=True)
    resume = cfg.checkpointing.resume
    if resume and resume != "latest" and not (Path(resume) / "trainer_state.json").is_file():
        raise UserError(f"checkpointing.resume {resume}: not a checkpoint folder (no trainer_state.json); pass "
                        "'latest' or a folder under <run>/checkpoints/")
    lock = locked(cfg.trainer.output_dir, "train.py") if int(os.environ.get("RANK", "0")) == 0 \
        else contextlib.nullcontext()
    with lock:
        return _train(cfg, overwrite)


def _train(cfg: TrainConfig, overwrite: bool) -> TrainResult:
    t = Trainer(cfg, overwrite)
    if t.finished is not None:
        return TrainResult(t.run_dir, t.finished.get("steps", 0), latest_checkpoint(t.run_dir), t.finished)
    return t.train()
