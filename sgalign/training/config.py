"""Training config: one pydantic section per concern, validated from YAML + ``--set`` overrides.

``TrainConfig`` = task + model / data / method / optimizer / trainer / checkpointing / logging. Method options are
validated by the chosen method's own config class from the registry (``method.options.<method name>.<option>``),
so a mistyped option is an error naming it, and the trainer never names a method.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import ConfigModel
from ..methods import available_methods, build_method, get_method_class
from ..methods.base import validate_options


MAX_STEPS = 1_000_000  # optimizer steps (published preference-alignment runs use a few thousand)
MAX_ACCUMULATION = 1024  # micro-batches per optimizer step
MAX_BATCH = 4096  # pairs per process per micro-batch


class LoraConfig(ConfigModel):
    rank: int = Field(4, ge=1)
    alpha: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]


class ModelConfig(ConfigModel):
    # "auto": the world SD1.5-SG at sgalign/world/weights/world-sd15-sg/ when that folder exists, else a tiny
    # RANDOM-INIT model generated beside the run dir (labelled so in logs and resolved config); resolved by the
    # command layer (sgalign.jobs.commands.resolve_model_path): the trainer itself takes a folder
    path: str = "auto"
    tiny_arch: Literal["sd15", "sdxl", "sd15-sg", "sdxl-sg"] | None = None  # auto fallback; None: by task
    variant: str | None = None
    sg_encoder: str | None = None  # compositional: SG encoder folder / LAION-SG .pt; None: the folder's sg_encoder/
    unet_init: str | None = None  # a UNet folder (diffusers) initialising policy AND reference (official --unet_init)
    train_unet: Literal["full", "lora", "none"] = "full"
    train_sg_encoder: bool = True  # compositional only: the SG encoder is part of the policy
    lora: LoraConfig = LoraConfig()
    gradient_checkpointing: bool = False
    frozen_dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # VAE + text encoders; auto: the mixed precision
    random_init: bool = False  # set when the auto fallback is used (recorded in the resolved config)


class DataConfig(ConfigModel):
    # candidate dataset (compositional) or Pick-a-Pic-format pairs (t2i): a save_to_disk folder, a .parquet file
    # or a folder of .parquet/.arrow shards. None: build_pairs' default output of the task (runs/pairs/laion-sg,
    # runs/pairs/pickapic; refused when missing). "synthetic": a SYNTHETIC placeholder dataset in the run dir.
    path: str | None = None
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)  # pairs per process per micro-batch
    resolution: int | None = Field(None, ge=8)  # pixels; None: the UNet's sample_size x VAE factor
    center_crop: bool = True  # official default (random crop with --random_crop)
    random_flip: bool = False  # official default is an independent h-flip per image (unless --no_hflip)
    proportion_empty_prompts: float = Field(0.0, ge=0, le=1)  # official default 0.2 (empty caption / empty scene graph)
    vae_sample: bool = True  # official: latent_dist.sample(); False: the mean (required by cache_latents)
    cache_latents: bool = False  # in memory, per image; refused with random flips/crops or vae_sample
    cache_text: bool = True  # text states / graph inputs per row, in memory (frozen encoders: exact)
    margin: float = Field(0.0, ge=0)  # compositional: reward gap a pair needs
    pair_mode: Literal["one-per-annotation", "all-pairs"] = "one-per-annotation"
    score_columns: list[str] | None = None  # t2i: [score_0, score_1] columns (e.g. PickScore), else none
    synthetic_rows: int = Field(8, ge=1)  # size of the "synthetic" placeholder dataset

    @field_validator("path")
    @classmethod
    def _no_auto(cls, v: str | None) -> str | None:
        if v == "auto":  # it used to mean silent synthetic data
            raise ValueError("data.path=auto is gone: leave it unset (null) for build_pairs' default output, or set "
                             "data.path=synthetic for random placeholder data")
        return v

    @model_validator(mode="after")
    def _caching(self) -> "DataConfig":
        if self.cache_latents and (self.random_flip or not self.center_crop):
            raise ValueError("cache_latents: cached latents would freeze one random flip/crop; set random_flip=false "
                             "and center_crop=true, or cache_latents=false")
        if self.cache_latents and self.vae_sample:
            raise ValueError("cache_latents: a cached latent_dist.sample() would reuse one sample forever; set "
                             "vae_sample=false (use the mean) or cache_latents=false")
        return self


SETTINGS_SECTIONS = ("optimizer", "trainer")  # what a method's tuned settings may set (method.settings)


class MethodSection(ConfigModel):
    name: str = "diffusion-dpo"
    # per method name: {option: value}; every entry is validated by that method's config class
    options: dict[str, dict[str, Any]] = {}
    # per method name: optimizer / trainer values chosen for that method (e.g. on validation graphs), used when it is
    # the method trained; any --set or caller value of the same key wins (``TrainConfig.settings_layer``)
    settings: dict[str, dict[str, dict[str, Any]]] = {}

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in available_methods():
            raise ValueError(f"unknown method {v!r}; available: {', '.join(available_methods())}")
        return v

    @field_validator("options")
    @classmethod
    def _valid_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, opts in v.items():
            method_options(name, opts)
        return v

    @field_validator("settings")
    @classmethod
    def _valid_settings(cls, v: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
        for name, sections in v.items():
            if name not in available_methods():
                raise ValueError(f"settings given for unknown method {name!r}; available: "
                                 f"{', '.join(available_methods())}")
            bad = sorted(set(sections) - set(SETTINGS_SECTIONS))
            if bad:
                raise ValueError(f"{name}: settings may set {' / '.join(SETTINGS_SECTIONS)} only, not {', '.join(bad)}")
        return v

    def chosen(self) -> dict[str, Any]:
        return dict(self.options.get(self.name, {}))


def method_options(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Validate ``opts`` against method ``name``'s config dataclass (its bounds and ``Literal`` choices); errors
    name the option."""
    if name not in available_methods():
        raise ValueError(f"options given for unknown method {name!r}; available: {', '.join(available_methods())}")
    try:
        out = validate_options(get_method_class(name).config_class, opts)
    except ValueError as e:
        raise ValueError(f"{name}.{e}") from None
    return out


class OptimizerConfig(ConfigModel):
    name: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    lr: float = Field(1e-8, gt=0)  # per pair when scale_lr (official convention: lr = 1e-8 x effective pairs per step)
    # the SG encoder's own lr (same convention as lr; None: lr). Its gate is one scalar among millions of UNet
    # weights: at the UNet's lr it moves ~0.006 in a run, so relation information it carries cannot be turned up
    sg_encoder_lr: float | None = Field(None, gt=0)
    scale_lr: bool = True  # lr x batch_size x gradient_accumulation_steps x num_processes
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    weight_decay: float = Field(1e-2, ge=0)
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = Field(500, ge=0, le=MAX_STEPS)


class TrainerConfig(ConfigModel):
    output_dir: str | None = None  # None: runs/train/<task>-<method> (sgalign.training.runs.default_output_dir)
    seed: int = Field(0, ge=0)
    # bounds: a typo (1e9 steps, 1e6 accumulation) would run for weeks, or compute for hours before its first
    # optimizer step and its first line of output
    max_steps: int = Field(2000, ge=1, le=MAX_STEPS)  # optimizer steps
    gradient_accumulation_steps: int = Field(1, ge=1, le=MAX_ACCUMULATION)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    ema: bool = False
    ema_decay: float = Field(0.9999, ge=0, le=1)
    # on-disk cache of deterministic reference inversions (methods that use one); refused with stochastic latents
    trajectory_cache: bool = False

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML 1.1 reads a bare `no` as false


class CheckpointConfig(ConfigModel):
    every: int = Field(500, ge=0, le=MAX_STEPS)  # optimizer steps; 0: only at the end
    keep: int | None = Field(None, ge=1)  # most recent checkpoints kept; None: all
    resume: str | None = None  # "latest" or a checkpoint folder
    final_pipeline: bool = True  # export the whole pipeline (policy weights merged) at the end


class LoggingConfig(ConfigModel):
    every: int = Field(1, ge=1)
    tqdm: bool = True
    tensorboard: Literal["auto", "on", "off"] = "auto"  # auto: when tensorboard is installed


class TrainConfig(ConfigModel):
    task: Literal["compositional", "t2i"] = "compositional"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodSection = MethodSection()
    optimizer: OptimizerConfig = OptimizerConfig()
    trainer: TrainerConfig = TrainerConfig()
    checkpointing: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()

    @classmethod
    def settings_layer(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The tuned ``method.settings`` of the method ``data`` trains, as a layer for ``load_config`` (above the
        file, under updates and overrides). The sections are checked again by validation of the result."""
        method = data.get("method") or {}
        name = method.get("name", MethodSection.model_fields["name"].default)
        chosen = (method.get("settings") or {}).get(name) or {}
        if not isinstance(chosen, dict):
            raise ValueError(f"method.settings.{name}: expected a mapping of sections, got {chosen!r}")
        return {k: v for k, v in chosen.items() if k in SETTINGS_SECTIONS}

    @model_validator(mode="after")
    def _method_optimizer(self) -> "TrainConfig":
        """The method's faithful optimizer settings (``Method.optimizer_overrides``, e.g. Inversion-DPO's
        weight_decay 0) merged here, once, where the config is resolved: each one the config does not set itself
        (file, include, method.settings, caller updates or --set), so the resolved config -- what the trainer
        reads and the run records -- holds the values the optimizer gets."""
        for key, value in method_optimizer_settings(self).items():
            if key not in self.optimizer.model_fields_set:
                setattr(self.optimizer, key, value)
        return self

    @model_validator(mode="after")
    def _trainable(self) -> "TrainConfig":
        sg = self.task == "compositional" and self.model.train_sg_encoder
        if self.model.train_unet == "none" and not sg:
            raise ValueError("model: nothing to train (train_unet='none' and no trainable SG encoder)")
        return self

    @model_validator(mode="after")
    def _cacheable(self) -> "TrainConfig":
        # the trajectory cache is keyed by the exact latent: a stochastic one never hits and writes a new entry
        # every step (~60 MB per image at 1024 px, Inversion-DPO N = 80)
        d = self.data
        bad = [k for k, on in (("data.vae_sample=true", d.vae_sample), ("data.random_flip=true", d.random_flip),
                               ("data.center_crop=false", not d.center_crop)) if on]
        if self.trainer.trajectory_cache and bad:
            raise ValueError(f"trainer.trajectory_cache needs deterministic latents, but {', '.join(bad)} makes each "
                             "step's latent new (every look-up would miss and store another entry); set "
                             "data.vae_sample=false (the posterior mean), data.random_flip=false and "
                             "data.center_crop=true, or trainer.trajectory_cache=false")
        return self


def method_optimizer_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The optimizer settings the trained method's faithful reproduction needs (``Method.optimizer_overrides``);
    ``TrainConfig`` merges them at validation (``_method_optimizer``)."""
    return build_method(cfg.method.name, cfg.method.chosen()).optimizer_overrides()


def method_optimizer_notes(cfg: TrainConfig, settings: dict[str, Any]) -> list[str]:
    """The run notes on ``settings`` (the trained method's ``optimizer_overrides()``, which ``_method_optimizer``
    merged): each value the method set, or the configured value kept."""
    o, name, notes = cfg.optimizer, cfg.method.name, []
    for key, value in settings.items():
        if getattr(o, key) == value:
            notes.append(f"optimizer.{key}={value}: the official run's effective value, set by method {name} "
                         "(faithful) unless configured")
        else:
            notes.append(f"method {name} (faithful) reproduces the official run with optimizer.{key}={value}; "
                         f"keeping the configured optimizer.{key}={getattr(o, key)}")
    return notes
