"""Streaming state: how causal layers keep just the left context they need between chunks.

A layer derived from ``StreamingLayer`` runs offline (whole signal, zero left padding) unless
``set_streaming(module, True)`` switched it on; then every call consumes a chunk, keeps its own
bounded buffer of past input, and returns only the outputs the chunk completed. The cost of a
chunk therefore never depends on how much was streamed before it.
"""
from __future__ import annotations

from torch import Tensor, nn


class StreamingLayer(nn.Module):
    """Mixin for layers with a streaming buffer; ``_buffer`` is None when offline or fresh."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming = False
        self._buffer: Tensor | None = None

    def reset_stream(self, streaming: bool) -> None:
        """Drop any buffered context and switch streaming mode on or off."""
        self._streaming = streaming
        self._buffer = None

    def stream_state(self) -> Tensor | None:
        """The stream's kept context in the layer's own layout (None: nothing streamed yet)."""
        return self.__dict__["_buffer"]

    def load_stream_state(self, state: Tensor | None) -> None:
        """Continue a stream from ``state`` (what ``stream_state`` returned, or a tensor in
        its layout written by another runtime; None: start afresh)."""
        self.__dict__["_buffer"] = state


def set_streaming(module: nn.Module, streaming: bool) -> None:
    """Switch every streaming layer inside ``module`` on or off, starting from empty history."""
    for m in module.modules():
        if isinstance(m, StreamingLayer):
            m.reset_stream(streaming)
