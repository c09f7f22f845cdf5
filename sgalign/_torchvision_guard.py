"""Import guard for a CUDA-built torchvision next to a CPU-only torch (installed by scripts/setup.sh).

Why: on CPU machines the only torchvision matching torch 2.13.0 is a CUDA build. Its compiled ops fail to load,
yet ``torchvision._meta_registrations`` still registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms``; registering a fake kernel for an undefined operator raises, so ``import torchvision``
dies -- and with it transformers' models, diffusers and open_clip, which import torchvision.

What: a meta-path hook that runs only when ``torchvision._meta_registrations`` is about to execute. If
``torchvision.extension._has_ops()`` is false it defines the two operator schemas (no kernels) first, so the
fake registrations succeed. The ops themselves stay unavailable (calling them raises). When the compiled ops
load (a consistent install, e.g. any GPU machine) the hook does nothing.

This file is copied into the venv's site-packages by setup.sh and activated by a ``.pth`` line; it imports
nothing heavy until torchvision itself is imported.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

_TARGET = "torchvision._meta_registrations"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_libraries: list[Any] = []  # torch.library.Library objects must stay alive for their definitions to persist


def define_missing_schemas() -> bool:
    """Define the torchvision op schemas the meta registrations need; True when anything was defined."""
    import torch  # heavy: the guard loads at interpreter start (.pth); torch only with torchvision
    import torchvision.extension  # as torch

    if torchvision.extension._has_ops():
        return False
    missing = [name for name in _SCHEMAS if not _op_exists(torch, name)]
    if not missing:
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(_SCHEMAS[name])
    _libraries.append(lib)
    return True


def _op_exists(torch: Any, name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        define_missing_schemas()
        self._inner.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
