"""The evaluation protocol: everything that fixes an evaluation's numbers, as one pydantic config.

A protocol is what ``scripts/evaluate.py`` reads (YAML + ``--set key=value``, ``sgalign.config.load_config``) and
what ``results.json`` records verbatim (``protocol``), together with the values resolved at run time (scheduler
class, guidance scale, resolution). Two models compared under one protocol see the same graphs/prompts and the
same seeds, so their per-image scores pair up.

Sections:
* ``sampling``: scheduler, steps, eta, CFG scale, resolution, seeds and the noise rule (``per-graph``: image ``k``
  of graph/prompt ``g`` has its own noise from the graph's content and ``seeds[k]``; ``shared``: seed ``k`` = the
  same noise for every graph; ``sgalign.diffusion.noise``); image ``g * K + k`` is graph/prompt ``g``, seed ``k``;
* ``inputs``: the graph set (compositional) or prompt set (t2i): the world's test split by default, or a file;
* ``compositional``: extractor (world oracle or an OpenAI-compatible chat endpoint), SG-IoU modes and
  granularities, failure policy, FID features and preprocessing;
* ``t2i``: preference scorers (world reward, world-CLIP similarity) and the win-rate tie tolerance;
* ``stats``: bootstrap resamples, level, seed; ``report``: how many graphs the image grids show.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import ConfigModel, load_config
from ..diffusion.noise import NoiseRule

Task = Literal["compositional", "t2i"]


class SamplingProtocol(ConfigModel):
    scheduler: Literal["ddim", "model"] = "ddim"  # ddim: DDIMScheduler from the model's scheduler config
    steps: int = Field(25, ge=1, le=1000)  # DDPM training has 1000 timesteps: no more exist
    eta: float = Field(0.0, ge=0.0)
    # None: the model folder's (model_index.json), else 7.5 SD1.5, 5.0 SDXL; <= 1 disables CFG
    guidance_scale: float | None = None
    resolution: int | None = Field(None, ge=8)  # None: the model's native size (unet sample_size x VAE factor)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1)
    # per-graph: image k of graph g gets its own noise, hashed from the graph's content and seeds[k]; shared: seeds[k]
    # for every graph (the rule of results before version 5; it correlates the layouts of all graphs at one seed)
    noise: NoiseRule = "per-graph"
    batch_graphs: int = Field(16, ge=1)  # graphs (prompts) per pipeline call; every seed of a graph in one call
    torch_threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _unique_seeds(self) -> "SamplingProtocol":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self


class InputSet(ConfigModel):
    """``world``: the first ``n`` graphs of ``sample_split(split, n, seed)`` (prompts: their serialised form, the
    text the world's t2i models are trained on). ``file``: LAION-SG JSON (compositional) or a text file with one
    prompt per line / JSON list of strings (t2i); ``n`` then takes the first ``n`` (null: all)."""

    source: Literal["world", "file"] = "world"
    split: Literal["train", "validation", "test"] = "test"
    n: int | None = Field(64, ge=2)
    seed: int = 0
    path: str | None = None
    # world only: colour:shape pairs held out of train/validation (sample_split's holdout); novel_only (test split):
    # every graph contains one of them -- the generalisation set
    holdout: list[str] = Field(default_factory=list)
    novel_only: bool = False

    @model_validator(mode="after")
    def _path_for_file(self) -> "InputSet":
        if self.source == "file" and not self.path:
            raise ValueError("inputs.source=file needs inputs.path")
        if self.source == "world" and self.n is None:
            raise ValueError("inputs.source=world needs inputs.n (how many graphs to draw)")
        if (self.holdout or self.novel_only) and self.source != "world":
            raise ValueError("inputs.holdout / inputs.novel_only apply to inputs.source=world only")
        if self.novel_only and (self.split != "test" or not self.holdout):
            raise ValueError("inputs.novel_only needs inputs.split=test and a non-empty inputs.holdout")
        if self.holdout:
            # heavy (sgalign.world loads scipy, ~0.6 s): keeps sgalign.evaluation light
            from ..world import parse_holdout
            parse_holdout(self.holdout)  # a bad pair is one clear line naming it
        return self


class ChatExtractorOptions(ConfigModel):
    """``ChatCompletionsExtractor`` settings (API key and base URL come from the named environment variables)."""

    model: str = "gpt-4o"
    temperature: float = 0.7
    seed: int | None = 1234
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    paper: bool = False
    api_key_env: str = "OPENAI_API_KEY"
    base_url_env: str = "OPENAI_BASE_URL"
    require_api_key: bool = True
    cache: bool = True  # extraction cache in the output folder (a re-run does not pay twice)


class CompositionalProtocol(ConfigModel):
    extractor: Literal["world-oracle", "chat"] = "world-oracle"
    chat: ChatExtractorOptions = Field(default_factory=ChatExtractorOptions)
    iou_modes: list[Literal["normalized", "paper"]] = Field(default_factory=lambda: ["normalized"], min_length=1)
    # phrase: entities "colour size shape" (the world's strict form); label: LAION-SG's item labels
    granularities: list[Literal["phrase", "label"]] = Field(default_factory=lambda: ["phrase", "label"],
                                                             min_length=1)
    failures: Literal["zero", "skip"] = "zero"
    # more failed extractions than this share of a role's images: evaluate stops, exits non-zero, no results.json
    max_failure_rate: float = Field(0.05, ge=0.0, le=1.0)
    fid: bool = True
    # auto: world-CLIP image tower when the shipped world-CLIP has a training_record.json, else random-init
    fid_features: Literal["auto", "world-clip", "inception", "random-init"] = "auto"
    fid_preprocess: Literal["standard", "paper"] = "standard"
    world_clip_path: str | None = None  # None: sgalign/world/weights/world-clip
    inception_path: str | None = None  # pytorch-fid pt_inception-2015-12-05-6726825d.pth (fid_features=inception)
    fid_resamples: int = Field(200, ge=1)  # bootstrap resamples (and permutations of the paired test)
    fid_floor: bool = True  # world inputs: FID of the renders vs renders of other graphs at the same N

    @model_validator(mode="after")
    def _chat_granularity(self) -> "CompositionalProtocol":
        if self.extractor == "chat" and self.granularities != ["label"]:
            raise ValueError("the chat extractor answers with item labels (LAION-SG's vocabulary): set "
                             "compositional.granularities=[label]")
        if self.extractor == "chat" and "paper" in self.iou_modes and not self.chat.paper:
            raise ValueError("compositional.iou_modes=[paper] with the chat extractor needs "
                             "compositional.chat.paper=true (LAION-SG offered only the GT triples' item names; "
                             "chat.paper=false also offers isolated items)")
        if self.fid and self.fid_features == "inception" and not self.inception_path:
            raise ValueError("compositional.fid_features=inception needs compositional.inception_path (a local "
                             "pytorch-fid weights file)")
        return self


class T2IProtocol(ConfigModel):
    # world_reward: (DPG + 3-in-1) / 2 on the world oracle, prompts parsed back to graphs;
    # world_clip: cosine of world-CLIP image and text embeddings
    scorers: list[Literal["world_reward", "world_clip"]] = Field(
        default_factory=lambda: ["world_reward", "world_clip"], min_length=1)
    world_clip_path: str | None = None
    tie_tolerance: float = Field(0.0, ge=0.0)
    group_by_prompt: bool = True  # cluster bootstrap: a prompt's seeds are resampled together


class StatsProtocol(ConfigModel):
    n_resamples: int = Field(1000, ge=1)
    level: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0


class ReportProtocol(ConfigModel):
    grid_graphs: int = Field(6, ge=0)  # graphs shown in the base-vs-aligned image grids
    thumb_px: int = Field(96, ge=16)  # displayed image size (nearest-neighbour upscaling of small images)


class EvalProtocol(ConfigModel):
    task: Task = "compositional"
    sampling: SamplingProtocol = Field(default_factory=SamplingProtocol)
    inputs: InputSet = Field(default_factory=InputSet)
    compositional: CompositionalProtocol = Field(default_factory=CompositionalProtocol)
    t2i: T2IProtocol = Field(default_factory=T2IProtocol)
    stats: StatsProtocol = Field(default_factory=StatsProtocol)
    report: ReportProtocol = Field(default_factory=ReportProtocol)


def load_protocol(path: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                  task: Task | None = None) -> EvalProtocol:
    """YAML ``path`` (optional) <- ``--set`` overrides <- ``task`` (the CLI's --task wins over the file)."""
    overrides = list(overrides) + ([f"task={task}"] if task is not None else [])
    return load_config(EvalProtocol, path, overrides)
