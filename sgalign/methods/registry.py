"""Methods by name: ``build_method('inpo', beta=2000)``; the trainer only ever sees the name from config."""
from __future__ import annotations

from typing import Any

from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str):
    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def unregister_method(name: str) -> None:
    """Remove a registered method (for plug-in and test code that registers temporary methods)."""
    _REGISTRY.pop(name, None)


def get_method_class(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def build_method(name: str, config: Any = None, **overrides: Any) -> Method:
    cls = get_method_class(name)
    if isinstance(config, dict):
        overrides = {**config, **overrides}
        config = None
    if config is None:
        unknown = set(overrides) - set(cls.config_class.__dataclass_fields__)
        if unknown:
            raise TypeError(f"method {name!r} has no option(s) {sorted(unknown)}; options: "
                            f"{sorted(cls.config_class.__dataclass_fields__)}")
        return cls(cls.config_class(**overrides))
    return cls(config, **overrides)


def available_methods() -> list[str]:
    return sorted(_REGISTRY)
