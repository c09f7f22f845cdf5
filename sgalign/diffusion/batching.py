"""Row selection / concatenation of an opaque conditioning object.

The conditioning is passed through untouched except when a subset of the batch must be evaluated (per-sample
grids of different lengths, cache misses) or winners and losers are stacked into one call. Supported: tensors
(batch on dim 0), dicts, lists/tuples, None, and any object with ``select_rows(idx)`` / ``cat_rows(others)``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def select_rows(cond: Any, idx: Tensor) -> Any:
    if cond is None or isinstance(cond, (int, float, str, bool)):
        return cond
    if isinstance(cond, Tensor):
        return cond.index_select(0, idx.to(cond.device)) if cond.dim() > 0 else cond
    if isinstance(cond, dict):
        return {k: select_rows(v, idx) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(select_rows(v, idx) for v in cond)
    if hasattr(cond, "select_rows"):
        return cond.select_rows(idx)
    raise TypeError(f"cannot select batch rows of a conditioning of type {type(cond).__name__}: "
                    "use tensors/dicts/lists, or give the class a select_rows(idx) method")


def cat_rows(conds: list[Any]) -> Any:
    first = conds[0]
    if first is None or isinstance(first, (int, float, str, bool)):
        return first
    if isinstance(first, Tensor):
        return torch.cat(conds, 0) if first.dim() > 0 else first
    if isinstance(first, dict):
        return {k: cat_rows([c[k] for c in conds]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(cat_rows([c[i] for c in conds]) for i in range(len(first)))
    if hasattr(first, "cat_rows"):
        return first.cat_rows(conds[1:])
    raise TypeError(f"cannot concatenate conditionings of type {type(first).__name__}: "
                    "use tensors/dicts/lists, or give the class a cat_rows(others) method")


def row_fingerprints(cond: Any, batch_size: int) -> list[bytes]:
    """Bytes identifying each row's conditioning (for cache keys)."""
    out = []
    for i in range(batch_size):
        row = select_rows(cond, torch.tensor([i]))
        out.append(_bytes(row))
    return out


def _bytes(obj: Any) -> bytes:
    if obj is None:
        return b"none"
    if isinstance(obj, Tensor):
        t = obj.detach().to("cpu")
        # reshape(-1): a 0-d tensor (e.g. BatchNorm's num_batches_tracked) cannot be viewed as bytes; same bytes
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return str((tuple(t.shape), str(t.dtype))).encode() + raw
    if isinstance(obj, dict):
        return b"{" + b";".join(str(k).encode() + b":" + _bytes(obj[k]) for k in sorted(obj)) + b"}"
    if isinstance(obj, (list, tuple)):
        return b"[" + b";".join(_bytes(v) for v in obj) + b"]"
    if hasattr(obj, "fingerprint"):
        return obj.fingerprint().encode()
    return repr(obj).encode()
