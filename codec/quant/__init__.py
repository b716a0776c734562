"""Quantizer kinds (``QUANTIZER_KINDS``: every module of ``codec/quant/kinds/``) and a builder
that makes one from a config entry.

    build_quantizer("ema", dim=8, codebook_size=1024, decay=0.99)
"""
from __future__ import annotations

import inspect
from typing import Any

import codec.quant.kinds  # noqa: F401 - registers every kind
from codec.quant.base import QUANTIZER_KINDS, Quantizer, QuantizerOutput


def quantizer_options(kind: str) -> list[str]:
    """The keyword options a kind accepts besides dim and codebook_size."""
    params = inspect.signature(QUANTIZER_KINDS[kind].__init__).parameters
    return [name for name in params if name not in ("self", "dim", "codebook_size")]


def build_quantizer(kind: str, dim: int, codebook_size: int, **options: Any) -> Quantizer:
    """Make one quantizer stage: kind name, vector dim d, codebook size K, kind options.

    Raises ValueError naming the valid choices for an unknown kind or option.
    """
    key = kind.strip().lower().replace("-", "_")
    if key not in QUANTIZER_KINDS:
        raise ValueError(f"unknown quantizer kind {kind!r}; "
                         f"choose one of {', '.join(QUANTIZER_KINDS)}")
    valid = quantizer_options(key)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for quantizer kind {key!r}; "
                         f"valid options: {', '.join(valid)}")
    return QUANTIZER_KINDS[key](dim, codebook_size, **options)


__all__ = ["QUANTIZER_KINDS", "Quantizer", "QuantizerOutput", "build_quantizer", "quantizer_options"]
