"""Shipped models: a registry of the model directories inside this package.

Each subdirectory of ``codec/pretrained/`` that holds a ``config.json`` is a shipped model,
named by its directory name: ``config.json`` and ``model.safetensors`` (what
``Codec.save_pretrained`` writes), optionally ``priors.json`` (``codec priors``, for range
coding) and ``MODEL_CARD.md``. ``DEFAULT_MODEL`` names the one that ``codec encode`` /
``codec decode`` / ``codec demo`` and ``Codec.default()`` use when no model is given.

``resolve(name_or_dir)`` turns what a user typed into a model directory: an existing
directory wins, then a shipped model's name; anything else is a ``ModelNotFoundError``
with a one-line message (an unknown name lists the shipped models).
"""

from __future__ import annotations

import re
from pathlib import Path

from codec.recipe import ConfigError

__all__ = ["DEFAULT_MODEL", "PRETRAINED_ROOT", "ModelNotFoundError", "is_name", "list_models", "resolve",
           "shipped_name"]

DEFAULT_MODEL = "speech16k"
"""Name of the default model: the subdirectory of ``PRETRAINED_ROOT`` used when none is given."""

PRETRAINED_ROOT = Path(__file__).resolve().parent
"""Where shipped models live (one subdirectory each)."""

CONFIG_NAME = "config.json"  # the same file name as codec.model.CONFIG_NAME (not imported: no torch here)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ModelNotFoundError(ConfigError):
    """Neither an existing model directory nor the name of a shipped model."""


def _root() -> Path:
    # Read at call time, so tests (or a packager) may point the registry elsewhere.
    return Path(PRETRAINED_ROOT)


def list_models() -> list[str]:
    """Names of the shipped models (subdirectories of ``PRETRAINED_ROOT`` with a config.json), sorted."""
    root = _root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())


def is_name(text: str | Path) -> bool:
    """Whether ``text`` could be a model name (one path component, no separators, not '.' or '..')."""
    return _NAME.fullmatch(str(text)) is not None and str(text) not in (".", "..")


def shipped_name(directory: str | Path) -> str | None:
    """The name under which ``directory`` is shipped, or None if it is not a shipped model's directory."""
    path = Path(directory).resolve()
    return path.name if path.parent == _root().resolve() and path.name in list_models() else None


def _shipped_text(models: list[str]) -> str:
    return f"shipped models: {', '.join(models)}" if models else "no models are shipped yet"


def resolve(name_or_dir: str | Path | None = None) -> Path:
    """The model directory for ``name_or_dir``.

    None means the default model (``DEFAULT_MODEL``). An existing directory is returned as
    it is (a directory wins over a shipped model of the same name); otherwise a shipped
    model's name gives ``PRETRAINED_ROOT / name``. Raises ModelNotFoundError (a ConfigError)
    with a one-line message when the default model is not shipped, the name is unknown (the
    message lists the shipped models) or the path does not exist. Whether the directory
    really holds a loadable model is left to ``Codec.from_pretrained``.
    """
    models = list_models()
    if name_or_dir is None:
        if DEFAULT_MODEL in models:
            return _root() / DEFAULT_MODEL
        raise ModelNotFoundError(
            f"no default model is shipped yet ({_root() / DEFAULT_MODEL} is missing; {_shipped_text(models)});"
            " pass --model NAME|DIR"
        )
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    text = str(name_or_dir)
    if is_name(text):
        if text in models:
            return _root() / text
        raise ModelNotFoundError(f"{text}: no such model directory or shipped model name ({_shipped_text(models)})")
    if path.exists():
        raise ModelNotFoundError(f"{text}: not a directory (a model is a directory with {CONFIG_NAME})")
    raise ModelNotFoundError(f"{text}: no such directory")
