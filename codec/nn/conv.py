"""Causal, streamable convolutions: a strided/dilated conv and a sub-pixel upsampler.

Every convolution sees only the past. A conv with effective kernel k_eff = (k - 1) d + 1 and
stride s is left-padded with k_eff - s zeros, so output t covers input samples up to and
including (t + 1) s - 1: no look-ahead, and an input of n*s samples gives exactly n outputs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from codec.nn.streaming import StreamingLayer


class CausalConv1d(StreamingLayer):
    """Conv1d with causal left padding and a streaming mode.

    Input float [B, C_in, T] -> output [B, C_out, T // stride] offline (T a multiple of stride).
    In streaming mode, chunks of any length go in; the outputs they complete come out, and the
    layer keeps between k_eff - s and k_eff - 1 past input samples.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        norm: str = "weight_norm",
    ) -> None:
        super().__init__()
        self.kernel_span = (kernel_size - 1) * dilation + 1
        if self.kernel_span < stride:
            raise ValueError(f"kernel span {self.kernel_span} is shorter than stride {stride}")
        self.stride = stride
        self.context = self.kernel_span - stride
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.conv = weight_norm(conv) if norm == "weight_norm" else conv
        self._cast: tuple[Tensor, Tensor] | None = None

    def reset_stream(self, streaming: bool) -> None:
        super().reset_stream(streaming)
        self._cast = None

    def _conv(self, x: Tensor) -> Tensor:
        # Runs in the input's dtype: fp64 input (the exact encode path) casts the weights.
        conv = self.conv
        if x.dtype == conv.weight.dtype:
            return conv(x)
        cached = self._cast
        if cached is None or cached[0].dtype != x.dtype:
            cached = (conv.weight.to(x.dtype), conv.bias.to(x.dtype))
            # While streaming (eval, weights fixed) cast once per stream, not once per chunk.
            self._cast = cached if self._streaming else None
        return nn.functional.conv1d(x, cached[0], cached[1], conv.stride, 0, conv.dilation)

    def forward(self, x: Tensor) -> Tensor:
        if not self._streaming:
            return self._conv(nn.functional.pad(x, (self.context, 0)))
        if self._buffer is None:
            self._buffer = x.new_zeros(x.shape[0], x.shape[1], self.context)
        x = torch.cat([self._buffer, x], dim=-1)
        n_out = (x.shape[-1] - self.kernel_span) // self.stride + 1
        if n_out <= 0:
            self._buffer = x
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        used = (n_out - 1) * self.stride + self.kernel_span
        y = self._conv(x[..., :used])
        self._buffer = x[..., n_out * self.stride :]
        return y


class CausalUpsample(nn.Module):
    """Causal transposed convolution as a sub-pixel conv: [B, C_in, F] -> [B, C_out, F * stride].

    A ConvTranspose1d with kernel 2*stride, trimmed causally, computes output block t from
    input frames t-1 and t. A causal conv of kernel 2 producing C_out * stride channels, then a
    reshape, is the same function family, and it streams with the same buffer as CausalConv1d
    (no overlap-add state, no bias counted twice).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        kernel_frames: int = 2,
        norm: str = "weight_norm",
    ) -> None:
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels
        self.conv = CausalConv1d(in_channels, out_channels * stride, kernel_frames, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        b, _, f = y.shape
        return y.view(b, self.out_channels, self.stride, f).transpose(2, 3).reshape(b, self.out_channels, f * self.stride)
