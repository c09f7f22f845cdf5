"""On-disk trajectory cache for deterministic (η = 0, frozen-network) inversions.

One safetensors file per (image, conditioning) row, sharded into 256 sub-folders by key prefix. The key is a
SHA-256 of: the image (x₀ bytes, plus an optional caller id), the conditioning row, the model hash, the grid spec,
the guidance spec, the noise schedule (a hash of ``alphas_cumprod``: e.g. a zero-terminal-SNR rescale is another
schedule) and the compute dtype (the cache's ``compute_dtype``, what the reference computes in, and x₀'s dtype) —
so changing any of them addresses a different entry (old ones are simply never read
again; ``prune`` removes entries of other model hashes). The stored key parts are re-checked on load.
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .batching import _bytes, row_fingerprints, select_rows
from .counter import EpsFn
from .inversion import Trajectory, ddim_invert

_FIELDS = ("latents", "levels", "labels", "eps_point", "eps")


def model_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameter/buffer names, shapes, dtypes and values.

    Hashing reads every weight (GBs at full size), so the digest of a **frozen** module (no parameter requires
    grad: the reference) is remembered and returned again only while every state entry is still the same tensor
    object with the same storage (``data_ptr``), layout and in-place version counter (``_version``: any in-place
    write such as ``p.add_``, ``copy_`` or ``load_state_dict`` bumps it; ``.to()`` or re-assignment replaces the
    tensor). Trainable modules are re-hashed on every call: optimizers may write through kernels that bypass
    version counters. Writes through ``p.data`` bypass them too; after such a write to a frozen module call
    ``model_fingerprint.cache_clear(module)``."""
    state = module.state_dict(keep_vars=True)
    key = _state_key(module, state)
    hit = _FINGERPRINTS.get(module) if key is not None else None
    if hit is not None and _same(hit[0], key):
        return hit[1]
    digest = _hash_state(state)
    if key is not None:
        _FINGERPRINTS[module] = (key, digest)
    return digest


def _hash_state(state: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(_bytes(t.detach() if isinstance(t, Tensor) else t))
    return h.hexdigest()


def _state_key(module: torch.nn.Module, state: dict[str, Any]) -> list | None:
    """What identifies the current values of a frozen module's state without reading them; None: do not cache."""
    if any(p.requires_grad for p in module.parameters()):
        return None
    key = []
    for name, t in sorted(state.items()):
        if not isinstance(t, Tensor) or t.is_inference():  # inference tensors have no version counter
            return None
        key.append((name, weakref.ref(t), (t.data_ptr(), t._version, tuple(t.shape), t.stride(),
                                           t.storage_offset(), t.dtype, str(t.device))))
    return key


def _same(old: list, new: list) -> bool:
    return len(old) == len(new) and all(
        a[0] == b[0] and a[1]() is not None and a[1]() is b[1]() and a[2] == b[2] for a, b in zip(old, new))


_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _forget(module: torch.nn.Module) -> None:
    _FINGERPRINTS.pop(module, None)


model_fingerprint.cache_clear = _forget  # type: ignore[attr-defined]


def image_hash(x0_row: Tensor, image_id: str | None = None) -> str:
    return hashlib.sha256((image_id or "").encode() + b"|" + _bytes(x0_row)).hexdigest()


class TrajectoryCache:
    """``get``/``put`` trajectories of single rows; ``hits``/``misses`` count look-ups."""

    def __init__(self, root: str | os.PathLike, compute_dtype: str = "float32"):
        self.root = Path(root)
        self.compute_dtype = compute_dtype  # the reference's autocast or weight dtype: part of every key
        self.hits = 0
        self.misses = 0

    @staticmethod
    def make_key(image: str, cond: bytes, model_hash: str, grid: str, guidance: str, schedule: str = "",
                 dtype: str = "") -> tuple[str, dict[str, str]]:
        parts = {"image": image, "cond": hashlib.sha256(cond).hexdigest(), "model": model_hash, "grid": grid,
                 "guidance": guidance, "schedule": schedule, "dtype": dtype}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str, parts: dict[str, str]) -> dict[str, Tensor] | None:
        p = self.path(key)
        if not p.exists():
            self.misses += 1
            return None
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
        if json.loads(meta.get("key_parts", "{}")) != parts:  # hash collision or a foreign file: recompute
            self.misses += 1
            return None
        self.hits += 1
        return load_file(str(p))

    def put(self, key: str, parts: dict[str, str], tensors: dict[str, Tensor]) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        save_file({k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"key_parts": json.dumps(parts, sort_keys=True)})
        os.replace(tmp, p)  # atomic: concurrent readers never see half a file

    def prune(self, keep_model_hash: str) -> int:
        """Delete entries whose model hash differs from ``keep_model_hash``; returns how many."""
        n = 0
        for p in self.root.glob("*/*.safetensors"):
            with safe_open(str(p), "pt") as f:
                parts = json.loads((f.metadata() or {}).get("key_parts", "{}"))
            if parts.get("model") != keep_model_hash:
                p.unlink()
                n += 1
        return n


def cached_invert(cache: TrajectoryCache | None, x0: Tensor, eps_fn: EpsFn, levels: Tensor, alphas_cumprod: Tensor,
                  cond: Any = None, *, labels: Tensor | None = None, initial_alpha: float | Tensor = 1.0,
                  renoise_steps: int = 0, renoise_label: str = "source", model_hash: str, grid_spec: str,
                  guidance_spec: str, image_ids: list[str] | None = None) -> Trajectory:
    """Deterministic inversion of every row of ``x0`` along shared ``levels`` (K+1,), served from ``cache`` where
    possible; only the missing rows are inverted (and stored). ``cache=None`` just inverts."""
    def run(x, c):
        return ddim_invert(x, eps_fn, levels, alphas_cumprod, c, labels=labels, initial_alpha=initial_alpha,
                           renoise_steps=renoise_steps, renoise_label=renoise_label)
    if cache is None:
        return run(x0, cond)
    B = x0.shape[0]
    spec = f"{grid_spec}|renoise={renoise_steps}:{renoise_label}|init_alpha={float(initial_alpha):.10g}"
    conds = row_fingerprints(cond, B)
    schedule = hashlib.sha256(_bytes(alphas_cumprod)).hexdigest()
    dtype = f"compute={cache.compute_dtype}|x0={x0.dtype}"
    keys = [cache.make_key(image_hash(x0[i], image_ids[i] if image_ids else None), conds[i], model_hash, spec,
                           guidance_spec, schedule, dtype) for i in range(B)]
    rows: list[dict[str, Tensor] | None] = [cache.get(k, p) for k, p in keys]
    miss = [i for i, r in enumerate(rows) if r is None]
    if miss:
        idx = torch.tensor(miss, device=x0.device)
        tr = run(x0[idx], select_rows(cond, idx))
        for j, i in enumerate(miss):
            rows[i] = {f: getattr(tr, f)[j] for f in _FIELDS}
            cache.put(*keys[i], rows[i])
    dev, dt = x0.device, x0.dtype
    st = {f: torch.stack([r[f] for r in rows]).to(dev) for f in _FIELDS}  # type: ignore[index]
    K = st["labels"].shape[1]
    return Trajectory(st["latents"].to(dt), st["levels"].long(), st["labels"].long(), st["eps_point"].to(dt),
                      st["eps"].to(dt), torch.full((B,), K, device=dev), initial_alpha)
