"""Configs are data: pydantic models (one per section) filled from YAML plus ``--set key=value`` overrides.

Every config model derives from ``ConfigModel`` (unknown keys are errors). ``load_config`` turns any validation
failure into a ``ConfigError`` that names each offending dotted key and where it came from (file or --set).

A YAML file may start from others: ``include: [a.yaml, ...]`` (paths relative to the including file) are merged in
order, then the file's own keys on top (``read_config_file``). A generated file (e.g. a tuning choice) can thus
extend a tracked config without editing it.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import UserError


def first_nonfinite(value: Any, path: str = "") -> str | None:
    """The dotted path of the first nan / inf float inside ``value`` (mappings, lists, tuples); None if none."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "<value>"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        hit = first_nonfinite(v, f"{path}.{k}" if path else str(k))
        if hit is not None:
            return hit
    return None


class ConfigModel(BaseModel):
    """Base of every config section: unknown or misspelt keys are rejected, values validated on assignment, and no
    setting is nan or inf (typed floats by ``allow_inf_nan``; free-form values, e.g. method options, by the check
    below): a nan guidance scale or an infinite lr would only fail after the expensive work, or silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _finite(self) -> "ConfigModel":
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, BaseModel):
                continue  # validated itself
            hit = first_nonfinite(value)
            if hit is not None:
                where = name if hit == "<value>" else f"{name}.{hit}"
                raise ValueError(f"{where}: must be a finite number, not nan or inf")
        return self


class ConfigError(UserError, ValueError):
    """A config that does not validate (exit code 2 in every command)."""


C = TypeVar("C", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """"trainer.lr=1e-6" -> (["trainer", "lr"], 1e-6). The value is read as YAML (numbers, bools, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. trainer.lr=1e-6")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {item!r}: empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``key.path=value`` set (intermediate sections are created when missing;
    whether the key exists is decided by validation, which names it)."""
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value ({nxt!r}), not a section")
            node = nxt
        node[path[-1]] = value
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{p}: not valid YAML ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    if data is None:  # an empty file would silently train on library defaults
        raise ConfigError(f"{p}: the config file is empty; pass a config with the settings to run (e.g. "
                          "configs/world/compositional.yaml), or leave --config out for the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


INCLUDE_KEY = "include"


def read_config_file(path: str | os.PathLike[str], _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``read_yaml`` with ``include:`` resolved: each listed file (relative to ``path``'s folder, itself resolved
    recursively) deep-merged in order, then ``path``'s own keys. A file that includes itself, directly or through
    others, is refused (the same file included twice along separate branches is fine)."""
    p = Path(path).resolve()
    if p in _chain:
        raise ConfigError("config include cycle: " + " -> ".join(str(c) for c in (*_chain, p)))
    data = read_yaml(p)
    includes = data.pop(INCLUDE_KEY, None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{p}: '{INCLUDE_KEY}' must be a file path or a list of file paths, got {includes!r}")
    merged: dict[str, Any] = {}
    for inc in includes:
        target = p.parent / inc
        if not target.is_file():
            raise ConfigError(f"{p}: included config file {inc} ({target}) does not exist")
        merged = _deep_merge(merged, read_config_file(target, (*_chain, p)))
    return _deep_merge(merged, data)


def load_config(cls: type[C], path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = (),
                base: dict[str, Any] | None = None, updates: Iterable[dict[str, Any]] = ()) -> C:
    """Validate ``base`` <- YAML file (its includes resolved) <- ``updates`` <- overrides into ``cls``; errors name
    every bad key and its source. ``updates``: nested dicts of typed values (a caller's settings, e.g. a job's
    budget), merged in order."""
    overrides = list(overrides)
    updates = list(updates)
    data = copy.deepcopy(base or {})
    if path is not None:
        data = _deep_merge(data, read_config_file(path))
    layer = getattr(cls, "settings_layer", None)
    if layer is not None:
        # a layer the merged values select (TrainConfig: the chosen method's tuned settings); it goes above the
        # file and under the caller's updates and overrides, so an explicit value always wins
        merged = data
        for u in updates:
            merged = _deep_merge(merged, copy.deepcopy(u))
        try:
            extra = layer(apply_overrides(merged, overrides))
        except ValueError as exc:
            raise ConfigError(f"invalid {cls.__name__} config: {exc}") from None
        data = _deep_merge(data, extra)
    for u in updates:
        data = _deep_merge(data, copy.deepcopy(u))
    data = apply_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        set_keys = [".".join(parse_override(o)[0]) for o in overrides]
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            # a nested key (method.options.smpo.beta) is reported at its section's loc (method.options)
            hit = any(k == key or k.startswith(key + ".") or key.startswith(k + ".") for k in set_keys)
            src = "--set" if hit else (str(path) if path else "defaults")
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{key}: {what} (from {src})")
        # one line (the command's error line): every bad key, each naming where its value came from
        raise ConfigError(f"invalid {cls.__name__} config: " + "; ".join(lines)) from None


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_config(cfg: BaseModel, path: str | os.PathLike[str]) -> None:
    """Write the fully resolved config next to a run's outputs (what actually ran, defaults included)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
