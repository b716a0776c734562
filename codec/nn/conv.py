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
    """Conv1d with causal left padding and a streaming mode (``groups`` as in nn.Conv1d: a
    depthwise conv has groups = in_channels and runs on PyTorch's grouped kernel).

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
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.kernel_span = (kernel_size - 1) * dilation + 1
        if self.kernel_span < stride:
            raise ValueError(f"kernel span {self.kernel_span} is shorter than stride {stride}")
        self.stride = stride
        self.context = self.kernel_span - stride
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, groups=groups)
        self.conv = weight_norm(conv) if norm == "weight_norm" else conv
        #: (dtype, taps, bias) computed once by ``prepare_taps`` (a streamer's snapshot), else None
        self._prepared: tuple[torch.dtype, list[Tensor], Tensor] | None = None

    def reset_stream(self, streaming: bool) -> None:
        super().reset_stream(streaming)
        self.__dict__["_fast_decision"] = None

    # ----- inference fast path --------------------------------------------------------------
    def _taps(self, dtype: torch.dtype) -> tuple[list[Tensor], Tensor]:
        """Weights prepared for the matmul convolution, in ``dtype``: a list of [C_out, C_in]
        per tap (stride 1) or [C_out, C_in * stride] per block of ``stride`` taps (kernel a
        multiple of the stride, dilation 1), and the bias [C_out, 1]. The ones ``prepare_taps``
        kept when it ran for this dtype, else computed from the current weights."""
        prepared = self._prepared
        if prepared is not None and prepared[0] == dtype:
            return prepared[1], prepared[2]
        w = self.conv.weight.detach().to(dtype)  # [C_out, C_in, k] (weight-norm applied)
        c_out, c_in, k = w.shape
        s = self.stride
        if s == 1:
            taps = [w[:, :, j].contiguous() for j in range(k)]
        else:  # block j covers taps j*s .. j*s+s-1, laid out (channel, offset) like _blocks
            taps = [w[:, :, j * s : (j + 1) * s].reshape(c_out, c_in * s).contiguous() for j in range(k // s)]
        return taps, self.conv.bias.detach().to(dtype).reshape(c_out, 1).contiguous()

    def prepare_taps(self, dtype: torch.dtype) -> None:
        """Compute the matmul taps in ``dtype`` once and keep them, for a layer whose weights no
        longer change (a streamer's snapshot: the weight-norm product and the per-tap copies
        then cost nothing per streamed chunk). Later weight changes are not seen."""
        self._prepared = None
        self._prepared = (dtype, *self._taps(dtype))

    def _fast_ok(self, x: Tensor) -> bool:
        """The matmul path serves inference (no autograd) on dense float inputs whose layout
        it handles: stride 1, or a kernel that is a whole number of strides without dilation."""
        if torch.is_grad_enabled() and (x.requires_grad or self.conv.bias.requires_grad):
            return False
        if x.dtype not in (torch.float32, torch.float64) or self.conv.groups != 1:
            return False
        s, k = self.stride, self.conv.kernel_size[0]
        if s != 1 and (k % s or self.conv.dilation[0] != 1):
            return False
        # fp64 (the exact encode path): always, PyTorch's fp64 conv is a slow im2col loop.
        # fp32: oneDNN is faster on long inputs, the matmuls on the short chunks of a stream.
        return x.dtype == torch.float64 or x.shape[-1] <= 4096

    def _mm_conv(self, x: Tensor) -> Tensor:
        """Convolution of already-padded x [B, C_in, L] as a sum of matmuls over shifted views
        (no im2col copy): y = b + sum_j W_j x[..., j*d : j*d + n]. Same values as conv1d up to
        the summation order (float rounding)."""
        taps, bias = self._taps(x.dtype)
        s, d = self.stride, self.conv.dilation[0]
        n = (x.shape[-1] - self.kernel_span) // s + 1
        b = x.shape[0]
        if s != 1:
            # [B, C, (n + m - 1) s] -> [B, C * s, n + m - 1]: row c*s + r holds x[c, t*s + r].
            m = len(taps)
            x = x[..., : (n + m - 1) * s].reshape(b, x.shape[1], n + m - 1, s).transpose(2, 3)
            x = x.reshape(b, -1, n + m - 1)
            offsets = range(m)
        else:
            offsets = range(0, len(taps) * d, d)
        if b == 1:
            x2 = x[0]
            y = None
            for w, o in zip(taps, offsets):
                xs = x2[:, o : o + n]
                y = torch.addmm(bias, w, xs) if y is None else y.addmm_(w, xs)
            return y.unsqueeze(0)
        y = None
        for w, o in zip(taps, offsets):
            t = torch.matmul(w, x[:, :, o : o + n])
            y = t.add_(bias) if y is None else y.add_(t)
        return y

    def _depthwise(self, x: Tensor) -> Tensor:
        """Depthwise conv (groups = channels) of already-padded x [B, C, L] without autograd, as
        one multiply-and-sum over windows: a streamed frame costs 3 small ops instead of
        PyTorch's grouped-conv set-up (~25 us for one frame of 384 channels)."""
        conv = self.conv
        w = conv.weight.detach().to(x.dtype)[:, 0]  # [C, k]
        windows = x.unfold(x.dim() - 1, self.kernel_span, self.stride)  # [B, C, n, span] (positive dim: see CausalSTFT)
        if conv.dilation[0] != 1:
            windows = windows[..., :: conv.dilation[0]]
        # A multiply and a sum: for the few windows of a streamed chunk, ~3x faster than einsum's bmm set-up.
        return (windows * w[:, None, :]).sum(dim=-1).add_(conv.bias.detach().to(x.dtype)[:, None])

    def _conv(self, x: Tensor) -> Tensor:
        if self._fast_ok(x):
            return self._mm_conv(x)
        conv = self.conv
        if (conv.groups == conv.in_channels == conv.out_channels and x.shape[-1] <= 64
                and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))):
            return self._depthwise(x)
        conv = self.conv
        if x.dtype == conv.weight.dtype:
            return conv(x)
        return nn.functional.conv1d(x, conv.weight.to(x.dtype), conv.bias.to(x.dtype), conv.stride, 0,
                                    conv.dilation, conv.groups)

    def forward(self, x: Tensor) -> Tensor:
        if not self._streaming:
            if self.context == 0:
                return self._conv(x)
            return self._conv(nn.functional.pad(x, (self.context, 0)))
        return self._stream(x)

    def _stream(self, x: Tensor) -> Tensor:
        """One streaming chunk [B, C_in, L] -> the [B, C_out, n] outputs it completes.

        Per chunk this is one concatenation with the kept context, the matmul convolution
        (streams are inference-only and their chunks are short, so the fast path always
        applies when the layout allows it) and a view of the tail as the next context. The
        buffer is stored in the instance dict directly: ``nn.Module.__setattr__`` costs
        more than the small matmuls of a one-frame chunk.
        """
        state = self.__dict__
        buf = state["_buffer"]
        if self.context == 0 and self.stride == 1:
            if buf is None:  # nothing to remember (a 1x1 conv); mark the stream as started
                state["_buffer"] = x.new_zeros(x.shape[0], x.shape[1], 0)
            return self._mm_conv(x) if self._stream_fast(x) else self._conv(x)
        if buf is None:
            buf = x.new_zeros(x.shape[0], x.shape[1], self.context)
        x = torch.cat([buf, x], dim=-1)
        n_out = (x.shape[-1] - self.kernel_span) // self.stride + 1
        if n_out <= 0:
            state["_buffer"] = x
            return x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        state["_buffer"] = x[..., n_out * self.stride :]
        used = x[..., : (n_out - 1) * self.stride + self.kernel_span]
        return self._mm_conv(used) if self._stream_fast(used) else self._conv(used)

    def _stream_fast(self, x: Tensor) -> bool:
        """``_fast_ok`` decided once per stream and dtype (it only depends on the layout)."""
        cached = self.__dict__.get("_fast_decision")
        if cached is not None and cached[0] == x.dtype:
            return cached[1]
        ok = self._fast_ok(x[..., :1])  # the length test is for offline inputs only
        self.__dict__["_fast_decision"] = (x.dtype, ok)
        return ok


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
