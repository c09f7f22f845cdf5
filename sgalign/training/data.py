"""Training data: the candidate dataset (compositional) and Pick-a-Pic-format fixed pairs (t2i).

Candidate dataset (written by ``build_pairs``; Hugging Face ``datasets`` Arrow, ``save_to_disk`` folder, a
``.parquet`` file, or a folder of ``.parquet``/``.arrow`` shards read in sorted order). One row per annotation:

==============  ==========================================  ===================================================
column          Arrow type                                  meaning
==============  ==========================================  ===================================================
``annotation``  string                                      the LAION-SG record, JSON (validated on read)
``candidates``  list<binary>                                K candidate images, PNG bytes
``seeds``       list<int64>                                 the generation seed of each candidate
``scores``      struct<{component}: list<float64>>          per reward component (e.g. ``dpg``,
                                                            ``compbench_3in1``, its parts), K values each
``reward``      list<float64>                               combined reward r = (1/N) sum_i r_i per candidate
``provenance``  string                                      JSON: base model hash, generation settings,
                                                            reward backends, whether any was a fallback
==============  ==========================================  ===================================================

Every list of a row has the same length K. Pairs are drawn dynamically per annotation by
``DynamicPairSampler`` (reward margin; winner = higher combined reward; SmPO scores = the combined rewards).

Pick-a-Pic v2 (DATA_AND_METRICS.md): columns ``jpg_0``, ``jpg_1`` (bytes), ``label_0``, ``label_1``, ``caption``
(others are carried but unused). Ties (``label_0 == 0.5``) are dropped; winner = the image with label 1. A pair
with an undecodable image is skipped as a pair (never one side) and reported in ``skipped``. Optional score
columns (``data.score_columns``, e.g. PickScore relabels) give ``score_w``/``score_l``.
"""
from __future__ import annotations

import abc
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..hashing import verified_sha256
from ..pair_schema import CANDIDATE_COLUMNS, PICKAPIC_COLUMNS, decode_image
from ..scene_graph import LaionSGRecord, SceneGraph
from .pair_sampler import DynamicPairSampler

class DatasetNotFound(UserError, FileNotFoundError):
    pass


class DatasetNotFinished(UserError, ValueError):
    pass


class DatasetEmpty(UserError, ValueError):
    pass


class DatasetMismatch(UserError, ValueError):
    """A dataset folder is not what its index.json lists (a missing, extra, changed or truncated shard)."""


INDEX_FILE = "index.json"
DATA_SUFFIXES = (".parquet", ".arrow")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def data_files(folder: Path) -> list[Path]:
    """The shard files a reader of ``folder`` would read: every top-level .parquet / .arrow file."""
    return sorted(f for f in folder.iterdir() if f.suffix in DATA_SUFFIXES and f.is_file())


def verify_dataset(path: str | Path) -> dict[str, Any] | None:
    """A build_pairs folder is exactly its ``index.json``: the index says complete and lists every shard with its
    sha256 (and size); the folder holds exactly those data files with those contents. Returns the index (None for
    a dataset that is not a build_pairs folder: a save_to_disk folder, a file, a folder without build.json /
    index.json). Raises ``DatasetNotFinished`` / ``DatasetMismatch`` (exit 2) naming the file. Hashes come from
    ``verified_sha256`` (a stamp skips the rehash of an unchanged file, never of a changed one)."""
    p = Path(path)
    if not p.is_dir():
        return None
    idx_path = p / INDEX_FILE
    if not idx_path.is_file():
        if (p / "build.json").exists():
            # a build_pairs folder whose build has not finished: training on it would silently use part of the data
            raise DatasetNotFinished(f"{p}: build_pairs has not finished this dataset (no index.json); rerun the "
                                     "same build_pairs command to complete it")
        return None
    try:
        index = json.loads(idx_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DatasetMismatch(f"{idx_path}: not valid JSON ({type(e).__name__}); rebuild the dataset with the "
                              "build_pairs command that made it") from None
    shards = index.get("shards") if isinstance(index, dict) else None
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and Path(s["file"]).name == s["file"]
            and s["file"].endswith(DATA_SUFFIXES) and isinstance(s.get("sha256"), str)
            and _SHA256.fullmatch(s["sha256"]) and isinstance(s.get("rows"), int)
            and (s.get("size") is None or isinstance(s["size"], int)) for s in shards):
        raise DatasetMismatch(f"{idx_path}: field shards must list every shard as {{file, rows, sha256, size}}; "
                              "rebuild the dataset with the build_pairs command that made it")
    if len({s["file"] for s in shards}) != len(shards):
        raise DatasetMismatch(f"{idx_path}: field shards lists a file twice; rebuild the dataset")
    if index.get("complete") is not True:
        raise DatasetNotFinished(f"{idx_path}: field complete is {index.get('complete')!r}, not true: the build "
                                 "has not finished; rerun the build_pairs command that made it")
    if not isinstance(index.get("rows"), int) or index["rows"] != sum(s["rows"] for s in shards):
        raise DatasetMismatch(f"{idx_path}: field rows ({index.get('rows')!r}) is not the sum of its shards' rows "
                              f"({sum(s['rows'] for s in shards)}); rebuild the dataset")
    listed = {s["file"] for s in shards}
    for f in data_files(p):
        if f.name not in listed:
            raise DatasetMismatch(f"{f}: a data file that {idx_path} does not list (stray or copied in?); remove "
                                  "it, or rebuild the dataset")
    for s in shards:
        f = p / s["file"]
        if not f.is_file():
            raise DatasetMismatch(f"{f}: listed in {idx_path} but missing; rebuild the dataset")
        if s.get("size") is not None and f.stat().st_size != s["size"]:
            raise DatasetMismatch(f"{f}: {f.stat().st_size} bytes, but {idx_path} lists {s['size']} (truncated or "
                                  "replaced); rebuild the dataset")
        if verified_sha256(f) != s["sha256"]:
            raise DatasetMismatch(f"{f}: its sha256 is not the one {idx_path} lists (changed or swapped for "
                                  "another build's shard); rebuild the dataset")
    for s in shards:
        _check_rewards(p / s["file"])
    return index


def check_rewards(rewards: list, where: str | Path) -> None:
    """Every combined reward (one list per row) is a finite number: a NaN would win or lose every comparison
    silently. Raises ``DatasetMismatch`` naming ``where``, the row and the field."""
    for i, r in enumerate(rewards):
        bad = [j for j, v in enumerate(r or []) if v is None or not math.isfinite(v)]
        if bad:
            raise DatasetMismatch(f"{where}: row {i}: field reward[{bad[0]}] is {r[bad[0]]}, not a finite number; "
                                  "rebuild the dataset (check the reward backend)")


def _check_rewards(f: Path) -> None:
    """``check_rewards`` on a candidate shard, reading only its ``reward`` column."""
    if f.suffix != ".parquet":
        return
    import pyarrow.parquet as pq  # heavy (~0.2 s): only where a dataset is verified; sgalign.training loads this module

    if "reward" in pq.read_schema(f).names:
        check_rewards(pq.read_table(f, columns=["reward"]).column("reward").to_pylist(), f)


def load_table(path: str | Path):
    """A ``datasets.Dataset`` from a save_to_disk folder, a parquet/arrow file, or a folder of shards (a
    build_pairs folder: exactly the shards its index lists, verified by ``verify_dataset``)."""
    import datasets  # heavy (~1 s): only where a dataset is read
    p = Path(path)
    if not p.exists():
        raise DatasetNotFound(f"dataset not found: {p} (a save_to_disk folder, a .parquet file or a folder of "
                              ".parquet/.arrow shards)")
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()):
        return datasets.load_from_disk(str(p))
    index = verify_dataset(p)
    if index is not None and index["rows"] == 0:
        raise DatasetEmpty(f"{p}: the dataset has no rows (see its summary.json / rejects.jsonl); rebuild it")
    files = [p] if p.is_file() else [p / s["file"] for s in index["shards"]] if index is not None \
        else data_files(p)
    if not files:
        raise DatasetNotFound(f"{p}: no dataset_info.json (save_to_disk), .parquet or .arrow files")
    kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
    ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    if len(ds) == 0:
        raise DatasetEmpty(f"{p}: the dataset has no rows; nothing to train on")
    return ds


def _require(ds, cols, path, what) -> None:
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise ValueError(f"{path}: not a {what}: missing column(s) {missing} (has {ds.column_names})")


def preprocess(img, resolution: int, center_crop: bool, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Resize the short side to ``resolution``, crop (center or random), optional h-flip, to [-1, 1] (3, H, W)."""
    w, h = img.size
    s = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
    w, h = img.size
    if center_crop:
        top, left = (h - resolution) // 2, (w - resolution) // 2
    else:
        dev = generator.device if generator is not None else "cpu"  # an accelerator's generator draws there
        top = int(torch.randint(0, h - resolution + 1, (1,), generator=generator, device=dev))
        left = int(torch.randint(0, w - resolution + 1, (1,), generator=generator, device=dev))
    x = torch.from_numpy(np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.float32))
    x = x.permute(2, 0, 1) / 127.5 - 1.0
    return x.flip(-1) if flip else x


@dataclass
class RawPair:
    """One pair before encoding. ``prompt``: a SceneGraph (compositional) or a caption (t2i)."""
    row: int
    prompt: Any
    image_w: Any
    image_l: Any
    id_w: str
    id_l: str
    score_w: float | None = None
    score_l: float | None = None


class PairSource(abc.ABC):
    """Rows + a stateful ``DynamicPairSampler``; ``stream()`` yields decodable ``RawPair`` items forever, skipping
    (and reporting in ``skipped``) pairs with an undecodable image. Its state is the sampler's."""

    def __init__(self, sampler: DynamicPairSampler):
        self.sampler = sampler
        self.skipped: list[dict[str, Any]] = []

    @abc.abstractmethod
    def pair(self, item) -> RawPair:
        """Decode the images of one sampled pair (raise on an undecodable image: ``stream`` reports and skips)."""

    def stream(self) -> Iterator[RawPair]:
        for item in self.sampler:
            try:
                yield self.pair(item)
            except _Undecodable as e:
                self.skipped.append({"row": e.row, "reason": str(e)})

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "skipped": list(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.skipped = list(state.get("skipped", []))


class _Undecodable(ValueError):
    def __init__(self, msg: str, row: int):
        super().__init__(msg)
        self.row = row


def _decode(data: bytes, where: str, row: int):
    try:
        return decode_image(data)
    except Exception as e:  # PIL raises several types for corrupt data
        raise _Undecodable(f"{where}: undecodable image ({type(e).__name__}), pair skipped", row) from None


class CandidatePairs(PairSource):
    """Compositional pairs: dynamic win/lose draws from each annotation's K scored candidates."""

    def __init__(self, path: str | Path, margin: float = 0.0, seed: int = 0, mode: str = "one-per-annotation",
                 num_replicas: int = 1, rank: int = 0):
        self.path = Path(path)
        self.ds = load_table(path)
        _require(self.ds, CANDIDATE_COLUMNS, path, "candidate dataset")
        rewards = self.ds["reward"]
        meta = self.ds.select_columns(["seeds", "scores", "annotation"])
        for i, (r, row) in enumerate(zip(rewards, meta)):
            k = len(r)
            bad = [n for n, v in [("seeds", row["seeds"])] + [(f"scores.{c}", s) for c, s in row["scores"].items()]
                   if len(v) != k]
            if bad:
                raise ValueError(f"{path}: row {i}: {bad} do not have one value per candidate (reward has {k})")
        check_rewards(rewards, path)  # any dataset format (a build_pairs folder was checked by load_table too)
        super().__init__(DynamicPairSampler(rewards, margin=margin, seed=seed, mode=mode,
                                            num_replicas=num_replicas, rank=rank))
        self._graphs: dict[int, SceneGraph] = {}

    def graph(self, row: int) -> SceneGraph:
        if row not in self._graphs:
            raw = self.ds[row]["annotation"]
            try:
                self._graphs[row] = SceneGraph.from_record(LaionSGRecord.model_validate_json(raw))
            except Exception as e:
                raise ValueError(f"{self.path}: row {row}: annotation is not a valid LAION-SG record: {e}") from None
        return self._graphs[row]

    def pair(self, item) -> RawPair:
        row = self.ds[item.annotation]
        where = f"{self.path}: row {item.annotation}"
        img_w = _decode(row["candidates"][item.win], f"{where} candidate {item.win}", item.annotation)
        img_l = _decode(row["candidates"][item.lose], f"{where} candidate {item.lose}", item.annotation)
        g = self.graph(item.annotation)
        base = f"{item.annotation}"
        return RawPair(item.annotation, g, img_w, img_l, f"{base}/{row['seeds'][item.win]}",
                       f"{base}/{row['seeds'][item.lose]}", item.reward_win, item.reward_lose)


class PickapicPairs(PairSource):
    """t2i fixed pairs in the Pick-a-Pic v2 format; ties dropped; winner = label 1."""

    def __init__(self, path: str | Path, seed: int = 0, score_columns: list[str] | None = None,
                 num_replicas: int = 1, rank: int = 0):
        self.path = Path(path)
        self.ds = load_table(path)
        _require(self.ds, PICKAPIC_COLUMNS + tuple(score_columns or ()), path, "Pick-a-Pic-format pair dataset")
        if score_columns is not None and len(score_columns) != 2:
            raise ValueError(f"data.score_columns: need two columns (image 0, image 1), got {score_columns}")
        self.score_columns = score_columns
        label0 = np.asarray(self.ds["label_0"], dtype=np.float64)
        self.rows = np.flatnonzero(label0 != 0.5)  # ties dropped (Diffusion-DPO convention)
        self.ties_dropped = int(len(label0) - len(self.rows))
        self.winner0 = label0[self.rows] > 0.5
        for c in score_columns or ():
            v = np.asarray(self.ds[c], dtype=np.float64)
            if not np.isfinite(v).all():
                i = int(np.flatnonzero(~np.isfinite(v))[0])
                raise DatasetMismatch(f"{path}: row {i}: field {c} is {v[i]}, not a finite number; rebuild the "
                                      "dataset or choose other data.score_columns")
        super().__init__(DynamicPairSampler([[1.0, 0.0]] * len(self.rows), seed=seed, num_replicas=num_replicas,
                                            rank=rank))

    def pair(self, item) -> RawPair:
        idx = int(self.rows[item.annotation])
        row = self.ds[idx]
        w0 = bool(self.winner0[item.annotation])
        # both decoded before either is used: a bad image drops the pair, never one side
        im0 = _decode(row["jpg_0"], f"{self.path}: row {idx} jpg_0", idx)
        im1 = _decode(row["jpg_1"], f"{self.path}: row {idx} jpg_1", idx)
        sw = sl = None
        if self.score_columns:
            s0, s1 = (float(row[c]) for c in self.score_columns)
            sw, sl = (s0, s1) if w0 else (s1, s0)
        ids = (f"{idx}/0", f"{idx}/1")
        return RawPair(idx, row["caption"] or "", im0 if w0 else im1, im1 if w0 else im0,
                       ids[0] if w0 else ids[1], ids[1] if w0 else ids[0], sw, sl)


@dataclass
class BatchStream:
    """Groups a ``PairSource`` stream into lists of ``batch_size`` pairs (the source's state is the stream's)."""
    source: PairSource
    batch_size: int
    _it: Iterator[RawPair] | None = field(default=None, init=False)

    def next(self) -> list[RawPair]:
        if self._it is None:
            self._it = self.source.stream()
        return [next(self._it) for _ in range(self.batch_size)]

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
        self._it = None
