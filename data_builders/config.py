"""The ``build_pairs`` config: pydantic sections filled from YAML (``configs/build_pairs/``) plus ``--set`` overrides.

Defaults are the shapes world's: K = 4 candidates from the world SD1.5-SG, DDIM 25 steps, guidance 3.0, scored by
the world reward (DPG-Bench + 3-in-1 on world backends -- oracle VQA and detector, world-CLIP's cosine as C --
Inversion-DPO Eq. 17).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sgalign.config import ConfigModel
from sgalign.world.paths import WORLD_SD15_SG as WORLD_MODEL  # noqa: F401 (build_pairs' default model)

# --source laion-sg without --annotations: the world's train split in LAION-SG JSON (data/README.md)
WORLD_ANNOTATIONS = Path(__file__).resolve().parent / "data" / "world_train_laion_sg.json"
# where each source writes without --out (relative to the working directory; train.py reads the same folders)
DEFAULT_OUT = {"laion-sg": "runs/pairs/laion-sg", "shapes": "runs/pairs/shapes", "pickapic": "runs/pairs/pickapic",
               "world-pickapic": "runs/world-pickapic"}


class ModelSection(ConfigModel):
    path: str | None = None  # None: the world SD1.5-SG (sgalign/world/weights/world-sd15-sg) if it exists
    arch: Literal["sd15-sg", "sdxl-sg"] = "sd15-sg"
    sg_encoder: str | None = None  # an sg_encoder/ folder or LAION-SG .pt, when the model folder has none
    torch_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"


class GenerationSection(ConfigModel):
    k: int = Field(4, ge=2)  # candidates per annotation
    seed: int = Field(0, ge=0)  # global seed; candidate seed = hash(seed, img_id, k)
    num_inference_steps: int = Field(25, ge=1, le=1000)  # DDPM training has 1000 timesteps: no more exist
    guidance_scale: float | None = Field(3.0, ge=0)  # None: the pipeline's default (SD1.5 7.5, SDXL 5.0)
    eta: float = Field(0.0, ge=0)
    height: int | None = Field(None, ge=8)  # None: the model's native size
    width: int | None = Field(None, ge=8)
    annotations_per_call: int = Field(4, ge=1)  # one pipeline call = annotations_per_call x k images


class BackendSpec(ConfigModel):
    name: str  # a registry name (sgalign.rewards.backends.available(role))
    path: str | None = None
    options: dict[str, Any] = {}


class RewardsSection(ConfigModel):
    """``preset: world``: ``sgalign.rewards.world_reward`` (one oracle parse per image shared by all backends);
    3-in-1's C is ``world_similarity``: ``world-clip`` (the trained world-CLIP's cosine, from ``world_clip_path`` or
    the shipped folder) or ``oracle`` (the oracle proposition score, not a cosine).
    ``preset: custom``: ``members`` built from ``backends`` (role -> registry backend) under ``policy``."""
    preset: Literal["world", "custom"] = "world"
    world_similarity: Literal["world-clip", "oracle"] = "world-clip"
    world_clip_path: str | None = None  # None: sgalign/world/weights/world-clip
    members: list[Literal["dpg", "compbench_3in1"]] = ["dpg", "compbench_3in1"]
    backends: dict[Literal["vqa", "detector", "similarity", "parser"], BackendSpec] = {}
    policy: Literal["strict", "allow-fallback"] = "strict"
    dpg: dict[str, Any] = {}  # DPGConfig flags (official quirks; default: corrected behaviour)
    compbench_3in1: dict[str, Any] = {}  # CompBenchConfig flags
    margin: float = Field(0.05, ge=0)  # for the summary only: share of candidate pairs whose reward gap exceeds it


class ShardSection(ConfigModel):
    annotations_per_shard: int = Field(32, ge=1)


class WorldSection(ConfigModel):
    """``--source shapes``: world annotations sampled here (``sgalign.world.sample_split``)."""
    split: Literal["train", "validation", "test"] = "train"
    n: int = Field(200, ge=1)
    seed: int = Field(0, ge=0)
    holdout: list[str] = []  # colour:shape pairs never drawn in train/validation


class AnnotationsSection(ConfigModel):
    """``--source laion-sg``: the split file (None: the embedded world train split, ``WORLD_ANNOTATIONS``) and how
    many of its valid annotations to build (None: all; the first ``limit`` in file order)."""
    path: str | None = None
    limit: int | None = Field(None, ge=1)


class PickapicSection(ConfigModel):
    """``--source pickapic``: relabel (SmPO) scores both images with an image-text similarity backend."""
    relabel: BackendSpec | None = None
    policy: Literal["strict", "allow-fallback"] = "strict"
    score_prefix: str = "ps"  # columns <prefix>_0 / <prefix>_1 (the trainer's data.score_columns)
    winner_by: Literal["label", "score"] = "label"  # score: the higher relabel score wins (equal scores: a tie)
    rows_per_shard: int = Field(1000, ge=1)


class WorldPickapicSection(ConfigModel):
    """``--source world-pickapic``: the world Pick-a-Pic file (``data_builders.world_pickapic``; ``--n`` sets n)."""
    n: int = Field(2000, ge=1)  # rows = world train-split graphs
    seed: int = Field(0, ge=0)  # graph sampling seed and the seed of every image seed
    steps: int = Field(20, ge=1)  # DDIM steps
    guidance: float = Field(3.0, ge=0)  # CFG scale
    tie_tolerance: float = Field(0.0, ge=0)  # |r0 - r1| <= this: a tie (0.5 / 0.5)
    rows_per_shard: int = Field(250, ge=1)
    batch_prompts: int = Field(16, ge=1)  # prompts per pipeline call (x 2 images); does not change the rows


class BuildPairsConfig(ConfigModel):
    source: Literal["laion-sg", "shapes", "pickapic", "world-pickapic"] = "shapes"
    model: ModelSection = ModelSection()
    generation: GenerationSection = GenerationSection()
    rewards: RewardsSection = RewardsSection()
    shards: ShardSection = ShardSection()
    world: WorldSection = WorldSection()
    annotations: AnnotationsSection = AnnotationsSection()
    pickapic: PickapicSection = PickapicSection()
    world_pickapic: WorldPickapicSection = WorldPickapicSection()
    torch_threads: int | None = Field(None, ge=1)  # None: leave torch's default
    # a build whose failed annotations exceed this share of the valid ones fails (exit 1; no index.json), as does
    # one that built nothing: a dataset missing a slice of its annotations is not silently trained on
    max_failed_share: float = Field(0.1, ge=0.0, le=1.0)

    def fingerprint(self) -> dict[str, Any]:
        """What decides a candidate dataset's content (a resumed build must match it; model by content hash)."""
        d = self.model_dump(mode="json")
        d["model"].pop("path")
        d.pop("torch_threads")
        d.pop("max_failed_share")  # decides whether a build is accepted, not its content
        d.pop("pickapic")
        d.pop("world_pickapic")  # its own build.json (data_builders.world_pickapic)
        d["rewards"].pop("margin")
        if self.source != "shapes":
            d.pop("world")
        d.pop("annotations")  # the input is identified by its content (plan.input: file sha256, limit)
        return d
