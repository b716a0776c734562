"""A streaming neural speech codec with a residual stack of swappable quantizers."""
from __future__ import annotations

from typing import Any

__all__ = ["Codec", "CodecOutput"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: `codec info` and error paths should not pay torch's import time.
    if name in __all__:
        from codec import model

        return getattr(model, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
