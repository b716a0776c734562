"""The encoder's and decoder's pointwise non-linearity, chosen by name in the model config.

Speed differs a lot on a CPU (one thread, 1M fp32 values): ELU ~6 ms (its expm1 is not
vectorised), SiLU ~2.5 ms, LeakyReLU ~1 ms. At 16 kHz the first blocks apply the
activation to ~5M values per second of audio, so for ELU that is half the encoder's time.
"""
from __future__ import annotations

from torch import nn

#: name -> constructor taking ``inplace``.
ACTIVATIONS = {
    "elu": lambda inplace: nn.ELU(inplace=inplace),
    "leaky_relu": lambda inplace: nn.LeakyReLU(0.1, inplace=inplace),
    # SiLU's backward needs its input, which an in-place call would overwrite.
    "silu": lambda inplace: nn.SiLU(),
}


def make_activation(name: str, inplace: bool = False) -> nn.Module:
    """The activation module called ``name`` (a key of ``ACTIVATIONS``).

    ``inplace`` may only be set where the input tensor is not needed afterwards (e.g. a conv
    output), never on a residual branch's input.
    """
    try:
        return ACTIVATIONS[name](inplace)
    except KeyError:
        raise ValueError(f"unknown activation {name!r} (choose one of {', '.join(ACTIVATIONS)})") from None
