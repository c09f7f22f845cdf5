"""The world Pick-a-Pic file: preference pairs for the t2i task in the exact Pick-a-Pic v2 schema (a build_pairs
source: ``world-pickapic``, settings in the config's ``world_pickapic`` section).

    python scripts/build_pairs.py --source world-pickapic --n 2000 --out DIR [--model DIR] [--set torch_threads=1]
        [--set world_pickapic.seed=0] [--set world_pickapic.steps=20] [--set world_pickapic.guidance=3.0]

Per row: a world *train*-split graph serialised as the t2i prompt (``SceneGraph.serialize().strip()``, the prompt
form ``evaluate --task t2i`` uses), two images of the base model's **text path** (the SG model's UNet, VAE and
text encoder run as a plain ``StableDiffusionPipeline``, DDIM, the prompts called as ``evaluate --task t2i`` calls
them; ``train.py --task t2i`` conditions the same folder on text only), one seed each. Both images are stored as
JPEG and scored **as stored** (decoded bytes) by the world preference reward, the t2i ``world_reward`` scorer of
the evaluation: ``(DPG-Bench + 3-in-1) / 2`` on the world oracle with the prompt parsed back to its graph. The
higher reward wins (``label`` 1 / 0); ``|r0 - r1| <= tie_tolerance`` is a tie (0.5 / 0.5, ``best_image_uid`` =
``TIE_BEST_IMAGE_UID``).

Output folder (crash-safe and resumable as ``data_builders/shards.py``): ``shard-NNNNN.parquet`` (the 19 columns,
Pick-a-Pic v2 dtypes), ``index/shard-NNNNN.json`` per finished shard (seeds, rewards, counts), ``build.json``; once
every shard is done ``index.json`` and ``world_pickapic.json`` (provenance: model name + sha256, seeds, steps,
guidance, reward definition, tie tolerance, win/tie counts, machine). A folder without ``index.json`` is
unfinished: ``load_table`` (so ``build_pairs --source pickapic`` and the trainer) refuses it, and rerunning the same
command completes it.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from sgalign.hashing import folder_sha256, is_random_init, model_index
from sgalign.machine import machine_info
from sgalign.pair_schema import decode_image
from sgalign.rewards import world_reward
from sgalign.world.paths import world_model_path
from sgalign.world.prompts import parse_world_prompt
from sgalign.world.sampler import img_id_for, sample_split

from . import shards as sh
from .laion_sg import ModelNotFound

FORMAT, VERSION = "sgalign-world-pickapic", "1"
RECORD_FILE = "world_pickapic.json"
# Pick-a-Pic v2 columns (data_builders.pickapic.PICKAPIC_V2_COLUMNS) with the dtypes of the dataset card.
COLUMN_DTYPES = {"are_different": "bool", "best_image_uid": "string", "caption": "string",
                 "created_at": "timestamp[ns]", "has_label": "bool", "image_0_uid": "string",
                 "image_0_url": "string", "image_1_uid": "string", "image_1_url": "string", "jpg_0": "binary",
                 "jpg_1": "binary", "label_0": "float64", "label_1": "float64", "model_0": "string",
                 "model_1": "string", "ranking_id": "int64", "user_id": "int64", "num_example_per_prompt": "int64",
                 "__index_level_0__": "int64"}
# A tie's best_image_uid. DATA_AND_METRICS.md does not say; the Pick-a-Pic web app records a tie as "none" (as
# recalled, not checked against a downloaded row). Readers decide ties by label_0 == 0.5, never by this field.
TIE_BEST_IMAGE_UID = "none"
REWARD_DEFINITION = ("world_reward: (DPG-Bench + T2I-CompBench 3-in-1) / 2 on the world oracle (Inversion-DPO "
                     "Eq. 17), prompt parsed back to its world graph (sgalign.world.prompts.parse_world_prompt); "
                     "the t2i 'world_reward' scorer of sgalign.evaluation; images scored as stored (decoded JPEG)")
_UID_NAMESPACE = uuid.UUID("6f1c3c1e-6d0b-4a57-9a55-70c1d3b0a7e1")


@dataclass
class WorldPickapicConfig:
    n: int = 2000  # rows = world train-split graphs
    seed: int = 0  # graph sampling seed and the seed of every image seed
    steps: int = 20  # DDIM steps
    guidance: float = 3.0  # CFG scale (configs/evaluate/world_t2i.yaml and build_pairs world use 3.0)
    tie_tolerance: float = 0.0  # |r0 - r1| <= this: a tie (0.5 / 0.5)
    rows_per_shard: int = 250
    batch_prompts: int = 16  # prompts per pipeline call (x 2 images)
    jpeg_quality: int = 95
    split: str = "train"

    def __post_init__(self) -> None:
        for k in ("n", "steps", "rows_per_shard", "batch_prompts"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.tie_tolerance < 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {self.tie_tolerance}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


def image_seed(seed: int, img_id: str, side: int) -> int:
    """The noise seed of image ``side`` (0 / 1) of row ``img_id``: distinct per row and side, fixed by ``seed``."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{img_id}:{side}".encode(), digest_size=8).digest(), "little") \
        % (2 ** 63)


def image_uid(model_sha: str, seed: int, img_id: str, side: int) -> str:
    return str(uuid.uuid5(_UID_NAMESPACE, f"{model_sha}:{seed}:{img_id}:{side}"))


def preference_labels(r0: float, r1: float, tie_tolerance: float) -> tuple[float, float]:
    """(label_0, label_1): the higher reward wins; |r0 - r1| <= tie_tolerance is a tie."""
    if abs(r0 - r1) <= tie_tolerance:
        return 0.5, 0.5
    return (1.0, 0.0) if r0 > r1 else (0.0, 1.0)


def pickapic_features():
    from datasets import Features, Value  # heavy (~1 s): keeps world_job light for bench_world.py --help

    return Features({c: Value(t) for c, t in COLUMN_DTYPES.items()})


# ---- the base model's text path ------------------------------------------------------------------------------------
def model_identity(path: Path) -> dict[str, Any]:
    index = model_index(path)
    return {"name": index.get("_sgalign_t2i_view_of") or path.name, "folder": path.name,
            "class": index.get("_class_name"), "sha256": folder_sha256(path),
            "random_init": is_random_init(index)}


def text_pipeline(path: str | Path):
    """A ``StableDiffusionPipeline`` on an SD1.5-layout folder (an SD1.5-SG folder's sg_encoder is not used), DDIM
    from the folder's scheduler config, as ``evaluate --task t2i`` samples."""
    from diffusers import DDIMScheduler  # heavy (diffusers, pipelines: ~5 s): only when shards remain to generate

    from sgalign.models.loading import detect_arch  # heavy: as diffusers
    from sgalign.pipelines import load_pipeline  # heavy: as diffusers

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {path}: no model_index.json; pass an SD1.5(-SG) model folder (default: "
                                "the world SD1.5-SG, trained by scripts/pretrain_sg.py)")
    if detect_arch(path) != "sd15":
        raise ValueError(f"--model {path}: an SDXL folder; the world Pick-a-Pic file is made with an SD1.5-layout "
                         "model (the world SD1.5-SG)")
    pipe = load_pipeline(path, text_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def write_text_only_view(src: str | Path, dst: str | Path) -> Path:
    """``dst``: the SD1.5-SG folder ``src`` as a plain ``StableDiffusionPipeline`` folder (no sg_encoder/; the same
    unet, vae, text encoder, tokenizer, scheduler files), so ``train.py --task t2i`` exports and ``evaluate --task
    t2i`` loads it. Written to a temp folder and renamed: ``dst`` is absent or complete."""
    src, dst = Path(src), Path(dst)
    index = json.loads((src / "model_index.json").read_text(encoding="utf-8"))
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    keep = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    tmp.mkdir(parents=True)
    for name in keep:
        shutil.copytree(src / name, tmp / name)
    new = {k: v for k, v in index.items() if k in keep or k.startswith("_")}
    new.update({"_class_name": "StableDiffusionPipeline", "safety_checker": [None, None],
                "feature_extractor": [None, None], "requires_safety_checker": False,
                "_sgalign_t2i_view_of": index.get("_sgalign_t2i_view_of") or src.name})
    (tmp / "model_index.json").write_text(json.dumps(new, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in ("training_record.json", "snapshot.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


# ---- generation and labels -----------------------------------------------------------------------------------------
def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def generate_pairs(pipe, prompts: Sequence[str], seeds: Sequence[tuple[int, int]], steps: int, guidance: float,
                   batch_prompts: int) -> np.ndarray:
    """uint8 [len(prompts), 2, H, W, 3]: image j of prompt i from ``torch.Generator().manual_seed(seeds[i][j])``."""
    out = []
    for lo in range(0, len(prompts), batch_prompts):
        part, sd = list(prompts[lo:lo + batch_prompts]), seeds[lo:lo + batch_prompts]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for pair in sd for s in pair]
        with torch.no_grad():
            imgs = pipe(prompt=part, num_images_per_prompt=2, generator=gens, num_inference_steps=steps,
                        guidance_scale=guidance, eta=0.0, output_type="np").images
        out.append(np.clip(np.rint(np.asarray(imgs) * 255.0), 0, 255).astype(np.uint8))
    imgs = np.concatenate(out)
    return imgs.reshape(len(prompts), 2, *imgs.shape[1:])


def score_images(jpegs: Sequence[bytes], prompts: Sequence[str], reward=None) -> tuple[np.ndarray, list]:
    """The world reward of each (decoded JPEG, prompt), exactly as evaluation's ``world_reward`` scorer, and the
    reward's provenance (its members, backends and flags)."""
    reward = reward or world_reward()
    out = reward([decode_image(b) for b in jpegs], [parse_world_prompt(p) for p in prompts])
    return np.array([s["reward"] for s in out.scores], dtype=np.float64), [p.to_dict() for p in out.provenance]


def _rows(cfg: WorldPickapicConfig, lo: int, hi: int, prompts: list[str], ids: list[str], counts: dict[str, int],
          model: dict[str, Any], pipe, reward) -> tuple[dict[str, list], dict[str, Any]]:
    seeds = [(image_seed(cfg.seed, ids[i], 0), image_seed(cfg.seed, ids[i], 1)) for i in range(lo, hi)]
    imgs = generate_pairs(pipe, prompts[lo:hi], seeds, cfg.steps, cfg.guidance, cfg.batch_prompts)
    jpg = [[_jpeg(imgs[k, j], cfg.jpeg_quality) for j in (0, 1)] for k in range(hi - lo)]
    flat = [b for pair in jpg for b in pair]
    rewards, reward_prov = score_images(flat, [p for p in prompts[lo:hi] for _ in (0, 1)], reward)
    rewards = rewards.reshape(-1, 2)
    created = datetime.now(timezone.utc).replace(tzinfo=None)
    cols: dict[str, list] = {c: [] for c in COLUMN_DTYPES}
    for k, i in enumerate(range(lo, hi)):
        u0, u1 = (image_uid(model["sha256"], cfg.seed, ids[i], j) for j in (0, 1))
        l0, l1 = preference_labels(float(rewards[k, 0]), float(rewards[k, 1]), cfg.tie_tolerance)
        row = {"are_different": jpg[k][0] != jpg[k][1],
               "best_image_uid": TIE_BEST_IMAGE_UID if l0 == 0.5 else (u0 if l0 == 1.0 else u1),
               "caption": prompts[i], "created_at": created, "has_label": True, "image_0_uid": u0,
               "image_0_url": "", "image_1_uid": u1, "image_1_url": "", "jpg_0": jpg[k][0], "jpg_1": jpg[k][1],
               "label_0": l0, "label_1": l1, "model_0": model["name"], "model_1": model["name"], "ranking_id": i,
               "user_id": 0, "num_example_per_prompt": counts[prompts[i]], "__index_level_0__": i}
        for c in COLUMN_DTYPES:
            cols[c].append(row[c])
    wins0 = sum(x == 1.0 for x in cols["label_0"])
    ties = sum(x == 0.5 for x in cols["label_0"])
    manifest = {"rows": hi - lo, "input_rows": [lo, hi], "img_ids": ids[lo:hi], "seeds": [list(s) for s in seeds],
                "rewards": rewards.tolist(), "wins_image_0": wins0, "wins_image_1": hi - lo - wins0 - ties,
                "ties": ties, "reward_provenance": reward_prov}
    return cols, manifest


def build_world_pickapic(out: str | Path, cfg: WorldPickapicConfig | None = None, model: str | Path | None = None,
                         *, progress: bool = True, log=print, overwrite: bool = False) -> dict[str, Any]:
    """Build (or resume) the world Pick-a-Pic folder ``out``; return its provenance record (also written to
    ``out/world_pickapic.json``). ``model``: an SD1.5(-SG) folder, default the world SD1.5-SG. ``overwrite``: ``out``
    holds another build: empty it first."""
    cfg = cfg or WorldPickapicConfig()
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, ident = _base_model(model, log)
    num_shards = -(-cfg.n // cfg.rows_per_shard)
    settings = {k: v for k, v in asdict(cfg).items() if k != "batch_prompts"}  # batching does not change rows
    sh.check_or_write_build(out, {"format": FORMAT, "version": VERSION, "config": settings,
                                  "model_sha256": ident["sha256"], "num_shards": num_shards}, overwrite=overwrite)
    captions = _captions(cfg)
    _write_shards(out, cfg, sh.todo_shards(out, list(range(num_shards)), log), captions, path, ident, progress)
    ms = [sh.read_manifest(out, i) for i in range(num_shards)]
    sh.remove_stale_temps(out)
    record = _record(cfg, settings, model is not None, path, ident, ms, t0)
    sh.write_json_atomic(out / RECORD_FILE, record)
    sh.write_json_atomic(out / sh.INDEX_FILE, {"complete": True, "format": FORMAT, "num_shards": num_shards,
                                               "rows": cfg.n, "shards": sh.index_shards(out, ms)})
    lab = record["labels"]
    log(f"world pickapic: {cfg.n} pairs of {ident['name']} ({ident['sha256'][:12]}), {cfg.steps} DDIM steps, "
        f"CFG {cfg.guidance}: image 0 wins {lab['wins_image_0']}, image 1 wins {lab['wins_image_1']}, "
        f"ties {lab['ties']} (tolerance {cfg.tie_tolerance}); {record['wall_seconds_this_run']:.1f} s -> {out}")
    return record


def _base_model(model: str | Path | None, log) -> tuple[Path, dict[str, Any]]:
    """The model folder (default: the world SD1.5-SG) and its identity; refused without a model_index.json."""
    path = Path(model) if model is not None else world_model_path()
    if not (path / "model_index.json").is_file():
        raise ModelNotFound(f"model {path}: no model_index.json; train the world SD1.5-SG first "
                            "(scripts/pretrain_sg.py) or pass --model FOLDER")
    ident = model_identity(path)
    if ident["random_init"]:
        log(f"pickapic: RANDOM-INIT model {path.name}: plumbing only, the images and labels mean nothing")
    return path, ident


def _captions(cfg: WorldPickapicConfig) -> tuple[list[str], list[str], dict[str, int]]:
    """The rows' captions (the ``cfg.split`` graphs serialised), their image ids and each caption's row count."""
    scenes = sample_split(cfg.split, cfg.n, seed=cfg.seed)
    prompts = [sc.graph().serialize().strip() for sc in scenes]
    ids = [img_id_for(cfg.split, i) for i in range(len(scenes))]
    counts: dict[str, int] = {}
    for p in prompts:
        counts[p] = counts.get(p, 0) + 1
    return prompts, ids, counts


def _write_shards(out: Path, cfg: WorldPickapicConfig, todo: list[int],
                  captions: tuple[list[str], list[str], dict[str, int]], path: Path, ident: dict[str, Any],
                  progress: bool) -> None:
    """Generate, score and write the shards ``todo`` (each parquet file, then its manifest); ``captions``: what
    ``_captions`` returns."""
    prompts, ids, counts = captions
    pipe = reward = None
    if todo:
        pipe, reward = text_pipeline(path), world_reward()
    features = pickapic_features()
    bar = tqdm(total=sum(min(cfg.rows_per_shard, cfg.n - i * cfg.rows_per_shard) for i in todo), unit="pair",
               desc="world pickapic", disable=None if progress else True)
    for i in todo:
        t1 = time.perf_counter()
        lo, hi = i * cfg.rows_per_shard, min(cfg.n, (i + 1) * cfg.rows_per_shard)
        cols, manifest = _rows(cfg, lo, hi, prompts, ids, counts, ident, pipe, reward)
        p = out / sh.shard_name(i)
        sh.write_parquet_atomic(p, cols, features)
        sh.write_json_atomic(sh.manifest_path(out, i), {"shard": i, "file": p.name, **manifest,
                                                        "sha256": sh.file_sha256(p), "size": p.stat().st_size,
                                                        "seconds": round(time.perf_counter() - t1, 3)})
        bar.update(hi - lo)
    bar.close()


def _record(cfg: WorldPickapicConfig, settings: dict[str, Any], model_given: bool, path: Path,
            ident: dict[str, Any], ms: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """The provenance record (``world_pickapic.json``) of a finished build from its shard manifests ``ms``."""
    rewards = np.array([r for m in ms for r in m["rewards"]], dtype=np.float64).reshape(-1, 2)
    counts_out = {k: sum(m[k] for m in ms) for k in ("wins_image_0", "wins_image_1", "ties")}
    return {
        "format": FORMAT, "version": VERSION, "rows": cfg.n, "columns": COLUMN_DTYPES, "config": settings,
        "command": (f"python scripts/build_pairs.py --source world-pickapic --n {cfg.n} --out OUT "
                    f"--set world_pickapic.seed={cfg.seed} --set world_pickapic.steps={cfg.steps} "
                    f"--set world_pickapic.guidance={cfg.guidance} "
                    f"--set world_pickapic.tie_tolerance={cfg.tie_tolerance}"
                    + ("" if not model_given else f" --model {path.name}")),
        "model": ident, "model_0_1": ident["name"],
        "captions": f"sgalign.world.sample_split({cfg.split!r}, {cfg.n}, seed={cfg.seed}): "
                    "SceneGraph.serialize().strip() of each graph (evaluate --task t2i's prompt form)",
        "generation": {"pipeline": "diffusers StableDiffusionPipeline on the model's text path (no SG encoder)",
                       "scheduler": "DDIMScheduler (from the model's scheduler config)", "steps": cfg.steps,
                       "guidance_scale": cfg.guidance, "eta": 0.0, "images_per_caption": 2,
                       "seed_rule": "image j of row img_id: blake2b(f'{seed}:{img_id}:{j}') (image_seed)",
                       "jpeg_quality": cfg.jpeg_quality},
        "labels": {"reward": REWARD_DEFINITION, "reward_provenance": ms[0]["reward_provenance"],
                   "tie_tolerance": cfg.tie_tolerance,
                   "rule": "higher reward wins (label 1.0 / 0.0); |r0 - r1| <= tie_tolerance: 0.5 / 0.5",
                   "tie_best_image_uid": TIE_BEST_IMAGE_UID, **counts_out,
                   "reward_mean": float(rewards.mean()), "reward_median": float(np.median(rewards)),
                   "mean_abs_reward_gap": float(np.abs(rewards[:, 0] - rewards[:, 1]).mean())},
        "user_id": "0 for every row (one rater: the world reward)",
        "created_at": "UTC time each shard was written", "shards": len(ms),
        "machine": machine_info(), "wall_seconds_this_run": round(time.perf_counter() - t0, 2),
        "generation_seconds_total": round(sum(m["seconds"] for m in ms), 2),
    }
