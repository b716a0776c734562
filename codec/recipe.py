"""Recipes: YAML files (or dicts) read and merged, and the one converter from their dicts to
the typed configuration dataclasses of every layer (quantizer, model, training).

A recipe may say ``extends: base.yaml`` (a path relative to the recipe); the two are merged
key by key, the recipe winning. This module sits below every layer and imports none of them.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe that cannot be read or does not describe a valid model or training run."""


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: ``base`` with ``override`` merged in recursively (override wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe(path: str | Path) -> dict:
    """Read a YAML recipe, resolving ``extends`` chains. Returns a plain dict."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} is not a mapping")
    parent = data.pop("extends", None)
    if parent is not None:
        data = deep_merge(load_recipe(path.parent / parent), data)
    return data


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """The dataclass ``cls`` from the dict ``data`` (``where`` names it in errors, e.g.
    "model.quantizer").

    Unknown keys are a ConfigError (a typo must not silently take the default); fields whose
    type is itself a dataclass are built recursively; a field with a numeric default takes
    numbers given as strings (YAML 1.1 reads ``1e-3`` as one) and must hold an integer when
    its default is one (``_coerce``). Every other value is taken as it is.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kind = hints.get(name)
        if dataclasses.is_dataclass(kind):
            kwargs[name] = build_dataclass(kind, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(fields[name], value, where)
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    """A number for a numeric field: a string is parsed, an integral float becomes an int for an
    int field; an int given for a float field stays an int (a saved config.json, and so a
    model's fingerprint, must read back exactly as it was written)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool) or not isinstance(default, (int, float)) or value is None:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(value, int) or isinstance(default, float)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.{f.name} must be a number, got {value!r}") from None
    if isinstance(default, int):
        if number != int(number):
            raise ConfigError(f"{where}.{f.name} must be an integer, got {value!r}")
        return int(number)
    return number
