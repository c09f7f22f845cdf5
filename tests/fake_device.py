"""A fake accelerator for CPU-only machines (test helper, no tests here).

Tensors on the fake device are CPU tensors wrapped in ``OnFake``, a tensor subclass whose ``.device`` reports
``meta``; every aten op is run on the wrapped CPU data by ``FakeDevice`` (a dispatch mode), which first applies
PyTorch's cross-device rules as a real GPU would: an op may not mix fake-device tensors with CPU tensors (0-d CPU
tensors and CPU advanced-indexing indices excepted, ``copy_`` / ``_to_copy`` being the transfers), and a generator
may only draw tensors on its own device. So code that would fail on a GPU with "Expected all tensors to be on the
same device" fails here too, while computing real values (``.item()``, ``.tolist()`` and data-dependent branches
work, unlike on real ``meta`` tensors).

Use: ``with FakeDevice(): ...`` with the code under test told to put models and data on ``FAKE`` and to draw from
``FakeGenerator`` (a CPU generator that reports the fake device).
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("meta")
aten = torch.ops.aten
# ops whose job is to move data between devices
_TRANSFERS = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
# ops that accept CPU index tensors for a device tensor (as CUDA does)
_CPU_INDICES = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class DeviceMismatch(RuntimeError):
    pass


class OnFake(torch.Tensor):
    """A CPU tensor that claims to live on the fake device."""

    elem: torch.Tensor
    __slots__ = ("elem",)
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                layout=elem.layout, device=FAKE, requires_grad=False)
        r.elem = elem
        return r

    def data_ptr(self) -> int:  # identity of the storage (model fingerprints use it), as on a real device
        return self.elem.data_ptr()

    def tolist(self):  # a device tensor copies to the host for .tolist()
        return self.elem.tolist()

    def __repr__(self) -> str:
        return f"OnFake({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class FakeGenerator(torch.Generator):
    """A CPU generator that reports the fake device: drawing a CPU tensor from it is an error, as with a CUDA
    generator."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return FAKE


def _is_fake_device(d) -> bool:
    return d is not None and torch.device(d) == FAKE


def _run(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    fake = [t for t in tensors if isinstance(t, OnFake)]
    target = kwargs.get("device")
    to_fake = _is_fake_device(target) if "device" in kwargs and target is not None else bool(fake)
    if func not in _TRANSFERS and fake:
        exempt = set()
        if func in _CPU_INDICES:  # indices (args[1]) may stay on the CPU
            exempt = {id(t) for t in tree_flatten(args[1])[0] if isinstance(t, torch.Tensor)}
        cpu = [t for t in tensors if not isinstance(t, OnFake) and t.dim() > 0 and id(t) not in exempt]
        if cpu:
            raise DeviceMismatch(f"{func}: tensors on the fake device and on the CPU ({[tuple(t.shape) for t in cpu]})"
                                 "; a GPU raises 'Expected all tensors to be on the same device'")
    if "device" in kwargs and _is_fake_device(target):
        kwargs = {**kwargs, "device": torch.device("cpu")}
    unwrap = lambda x: x.elem if isinstance(x, OnFake) else x  # noqa: E731
    originals = {id(unwrap(t)): t for t in tensors}
    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))

    def wrap(x):
        if not isinstance(x, torch.Tensor):
            return x
        if id(x) in originals:  # in-place / out= ops return their argument, as it was
            return originals[id(x)]
        return OnFake(x) if to_fake else x
    return tree_map(wrap, out)


def _from_data(factory):
    def make(data, *args, device=None, **kwargs):
        if _is_fake_device(device):  # built on the CPU, then moved (torch.tensor skips the dispatch mode)
            return factory(data, *args, **kwargs).to(FAKE)
        return factory(data, *args, device=device, **kwargs)
    return make


class _GeneratorCheck(TorchFunctionMode):
    """A generator draws only on its own device (checked at the Python call, where ``FakeGenerator`` is still
    itself; the dispatcher sees a plain ``torch._C.Generator``). The drawn tensor's device: ``device=``, else the
    first tensor argument's (``randn_like``, ``x.normal_``), else the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        gen = kwargs.get("generator")
        if isinstance(gen, torch.Generator):
            dev = kwargs.get("device")
            if dev is None:
                dev = args[0].device if args and isinstance(args[0], torch.Tensor) else torch.device("cpu")
            if isinstance(gen, FakeGenerator) != _is_fake_device(dev):
                raise DeviceMismatch(f"{getattr(func, '__name__', func)}: a generator on "
                                     f"{'the fake device' if isinstance(gen, FakeGenerator) else 'the CPU'} draws a "
                                     f"tensor on {dev}; a GPU raises 'Expected a ... device type for generator'")
        return func(*args, **kwargs)


class FakeDevice(TorchDispatchMode):
    """While active, ``device=FAKE`` (factories, ``torch.tensor``, ``.to``) makes ``OnFake`` tensors and every op
    is checked."""

    def __enter__(self):
        self._saved = {n: getattr(torch, n) for n in ("tensor", "as_tensor")}
        for n, f in self._saved.items():
            setattr(torch, n, _from_data(f))
        self._gens = _GeneratorCheck()
        self._gens.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._gens.__exit__(*exc)
            for n, f in self._saved.items():
                setattr(torch, n, f)

    @contextlib.contextmanager
    def paused(self):
        """The plain CPU world for a while (e.g. model loading, which builds modules on the real meta device)."""
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})
