"""The method interface a generic trainer calls (it never names a method)."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar, Literal, get_type_hints

import torch
from pydantic import Field, TypeAdapter, ValidationError
from torch import Tensor

from ..diffusion.cache import TrajectoryCache
from ..diffusion.counter import EpsFn, ForwardCounter, ForwardStats
from ..diffusion.guidance import Unconditional
from ..diffusion.prediction import Prediction, as_epsilon, prediction_target
from ..config import first_nonfinite


@dataclass
class PairBatch:
    """B preference pairs. ``cond`` is passed through opaquely (row-indexable, see diffusion.batching);
    ``score_*`` are optional reward scores (SmPO needs them); ``image_ids_*`` optional stable ids for the cache."""

    x0_w: Tensor
    x0_l: Tensor
    cond: Any = None
    score_w: Tensor | None = None
    score_l: Tensor | None = None
    image_ids_w: list[str] | None = None
    image_ids_l: list[str] | None = None

    def __post_init__(self):
        if self.x0_w.shape != self.x0_l.shape or self.x0_w.dim() != 4:
            raise ValueError(f"winner/loser latents must both be (B, C, H, W); got {tuple(self.x0_w.shape)} and "
                             f"{tuple(self.x0_l.shape)}")

    @property
    def size(self) -> int:
        return self.x0_w.shape[0]


@dataclass
class MethodContext:
    """Networks and state the trainer owns. ``policy``/``reference``: the model's functions ``(x_t, t, cond) ->
    output`` (policy carries grad), whose output is ``prediction`` (ε, or v for a v-prediction base).
    ``reference_hash``: fingerprint of the frozen reference, needed for the cache. ``unconditional``: ``cond`` -> its
    guidance branch without the prompt, for methods that guide.

    Methods regress in the model's own output space (``target``: diffusers' DPO script does so for v models) and
    invert on the ε contract (``eps_policy`` / ``eps_reference``); for an ε model both are the functions themselves."""

    policy: EpsFn
    reference: EpsFn
    alphas_cumprod: Tensor
    generator: torch.Generator | None = None
    cache: TrajectoryCache | None = None
    reference_hash: str | None = None
    backward: Callable[[Tensor], None] | None = None  # e.g. accelerator.backward; used by methods that back-propagate
    # the model's own classifier-free-guidance unconditional branch (SD1.5 empty text, SDXL zeros); guided methods
    unconditional: Unconditional | None = None
    prediction: Prediction = "epsilon"

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def eps_policy(self) -> EpsFn:
        return as_epsilon(self.policy, self.alphas_cumprod, self.prediction)

    @property
    def eps_reference(self) -> EpsFn:
        return as_epsilon(self.reference, self.alphas_cumprod, self.prediction)

    def target(self, eps: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """The regression target of x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε for a network told ``t``: ε itself, or v."""
        return prediction_target(eps, x0, t, self.alphas_cumprod, self.prediction)


@dataclass
class MethodOutput:
    """``loss``: scalar mean over pairs (with grad unless ``backward_done``: then the method already
    back-propagated, e.g. the constant-memory Inversion-DPO gradient, and the trainer must not call backward).
    ``forwards``: UNet forwards per pair. ``provenance``: resolved options, incl. ``faithful``."""

    loss: Tensor
    loss_per_pair: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    forwards: ForwardStats = field(default_factory=ForwardStats)
    backward_done: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """A latent/target provider (``provide``, no grad) plus a loss (``loss``); ``__call__`` runs both with
    counted networks. Subclasses set ``name`` and ``config_class`` (a dataclass with a ``faithful`` flag)."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any = None, **overrides: Any):
        cfg = config if config is not None else self.config_class()
        self.config = dataclasses.replace(cfg, **overrides) if overrides else cfg

    @abstractmethod
    def provide(self, batch: PairBatch, ctx: MethodContext) -> dict[str, Any]:
        """Noisy latents, timesteps and targets for the batch (no grad)."""

    @abstractmethod
    def loss(self, provided: dict[str, Any], batch: PairBatch, ctx: MethodContext) -> MethodOutput:
        """Evaluate the networks on the provided points and compute the loss."""

    def __call__(self, batch: PairBatch, ctx: MethodContext) -> MethodOutput:
        pol, ref = ForwardCounter(ctx.policy, "policy"), ForwardCounter(ctx.reference, "reference")
        cctx = dataclasses.replace(ctx, policy=pol, reference=ref)
        with torch.no_grad():
            provided = self.provide(batch, cctx)
        out = self.loss(provided, batch, cctx)
        out.forwards = ForwardStats.from_counters([pol, ref], batch.size)
        out.provenance = {"method": self.name, **self.resolved(), "prediction_type": ctx.prediction,
                          "loss_space": self.loss_space(ctx), **out.provenance}
        return out

    def loss_space(self, ctx: MethodContext) -> str:
        """Where the method's squared errors are taken: the model's own output (ε or v) unless it says otherwise."""
        return ctx.prediction

    def resolved(self) -> dict[str, Any]:
        cfg = self.config
        return dict(cfg.resolve()) if hasattr(cfg, "resolve") else dataclasses.asdict(cfg)

    def optimizer_overrides(self) -> dict[str, Any]:
        """Optimizer settings (``OptimizerConfig`` keys) the official run effectively used where they differ from
        the trainer's defaults; the training config merges them when it is resolved unless it sets the key
        itself (faithful only; ``sgalign.training.config.TrainConfig``)."""
        cfg = self.config
        return dict(getattr(cfg, "_official_optimizer", {})) if getattr(cfg, "faithful", False) else {}


def _gen_device(generator: torch.Generator | None):
    return generator.device if generator is not None else "cpu"


def sample_timesteps(batch_size: int, T: int, generator: torch.Generator | None, device) -> Tensor:
    """t ~ U{0..T−1} per row, drawn on the generator's device (CPU or CUDA generators both work)."""
    return torch.randint(0, T, (batch_size,), generator=generator, device=_gen_device(generator)).to(device)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=_gen_device(generator)).to(x.device)


# Option types of the method configs: bounds and closed choices, so a bad value or a typo fails when the config is
# built (and at config load, via ``training.config.method_options``), not at step 1 or silently in a branch.
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=1)]
Offset = Annotated[int, Field(ge=0)]
Label = Literal["target", "source"]
Inverter = Literal["policy", "reference"]
Grid = Literal["exact", "diffusers-0.20"]
InitialAlpha = Literal["one", "alpha0"]


@dataclass
class MethodConfig:
    """Options left ``None`` resolve to the official value when ``faithful`` is set and to our corrected default
    otherwise (class-level ``_corrected`` / ``_official`` maps); explicitly set options always win. Every option is
    validated against its annotation on construction (``ValueError`` naming the option)."""

    faithful: bool = False
    _corrected: ClassVar[dict[str, Any]] = {}
    _official: ClassVar[dict[str, Any]] = {}
    _official_optimizer: ClassVar[dict[str, Any]] = {}  # see Method.optimizer_overrides

    def __post_init__(self) -> None:
        for name, value in validate_options(type(self), {f.name: getattr(self, f.name)
                                                         for f in dataclasses.fields(self)}).items():
            object.__setattr__(self, name, value)

    def resolve(self) -> "Resolved":
        vals = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in self._corrected:
                v = (self._official if self.faithful else self._corrected)[f.name]
            vals[f.name] = v
        return Resolved(vals)


def validate_options(cls: type, opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` validated against ``cls``'s field annotations; errors name the option and the allowed values."""
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for k, v in opts.items():
        if k not in fields:
            raise ValueError(f"{k}: unknown option (options: {', '.join(sorted(fields))})")
        try:
            out[k] = TypeAdapter(hints[k]).validate_python(v)
        except ValidationError as e:
            raise ValueError(f"{k}: {e.errors()[0]['msg']} (got {v!r})") from None
        if first_nonfinite(out[k]) is not None:
            raise ValueError(f"{k}: must be a finite number, not nan or inf (got {v!r})")
    return out


class Resolved(dict):
    __getattr__ = dict.__getitem__
