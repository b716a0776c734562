"""Linear layers at the frame rate: matrix-vector products that read as few bytes as possible.

A streamed 20 ms chunk is one frame, so every linear layer is a matrix-vector product whose
cost is reading its weight matrix: the default model reads ~32 MB of fp32 weights per frame,
more than a shared CPU's cache keeps, so a streamed frame runs at memory bandwidth, not at
arithmetic speed. A streamer's snapshot (``codec.runtime``) replaces each ``nn.Linear`` of its
copy of the network by one of two prepared layers (``prepare_linears``), whose inference
weights are computed once, when it is made:

- ``FrameLinear`` (float32): for a few rows the weight is read from a transposed copy
  [in, out], the layout BLAS's matrix-vector kernel streams fastest (~1.5x faster than
  ``F.linear`` on a 384 x 768 layer here). Same values up to the summation order.
- ``Int8Linear``: weight-only int8 with one fp32-derived scale per output channel,
  activations and outputs rounded to bfloat16: ``y = bias + bf16(bf16(x) @ q^T * scale)`` with a
  float32 accumulation, for any number of rows. Here it is computed with public float32
  operators (the int8 weights are widened per call), so it gives the int8 numbers, not int8
  speed: its speed is the native frame engine's, which reads the int8 bytes (4x fewer per
  frame) and rounds the same way. PyTorch's private ``torch._weight_int8pack_mm`` is
  deliberately not used: its kernels crash for more than one row unless the inner size is a
  multiple of their vector width (16 on AVX-512, where 8 sufficed on AVX2), a contract no
  public document states.

The live model's layers (training, the offline float32 encode) are plain ``nn.Linear``s, run by
``linear`` as ``F.linear`` in the input's dtype (float64 for the exact encode).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: At most this many rows (frames x batch) take the transposed matrix-vector layout; above it
#: the product is a matrix-matrix one and ``F.linear``'s GEMM is faster.
FRAME_ROWS = 4


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8: weight float [out, in] -> (int8 [out, in],
    scale float32 [out]) with weight ~ q * scale (error at most scale / 2 per entry)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


class FrameLinear(nn.Linear):
    """``layer``'s weights (shared, not copied) and its float32 inference weights, prepared
    once: a transposed copy Wt [in, out] and the bias [out]. x [..., in] -> [..., out]."""

    def __init__(self, layer: nn.Linear) -> None:
        nn.Module.__init__(self)  # nn.Linear's own __init__ would make new parameters
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.register_parameter("weight", layer.weight)
        self.register_parameter("bias", layer.bias)
        w = layer.weight.detach()
        # a copy even when the bias is float32 already: the prepared weights are a snapshot
        bias = layer.bias.detach().to(torch.float32, copy=True) if layer.bias is not None else \
            torch.zeros(w.shape[0], device=w.device)
        self.register_buffer("bias32", bias.contiguous(), persistent=False)
        self._prepare(w)

    def _prepare(self, w: Tensor) -> None:
        self.register_buffer("wt", w.float().t().contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if x.dtype != torch.float32 or rows > FRAME_ROWS:
            return _plain(self, x)
        y = torch.addmm(self.bias32, x.reshape(rows, self.in_features), self.wt)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class Int8Linear(FrameLinear):
    """``layer`` with int8 weights (see the module docstring), prepared once: q int8 [out, in],
    scale [out] (bfloat16 values in float32), bias [out]. Float32 x [..., in] -> [..., out];
    other dtypes take the float weights."""

    def _prepare(self, w: Tensor) -> None:
        q, scale = quantize_int8(w)
        self.register_buffer("q", q, persistent=False)
        self.register_buffer("scale", scale.to(torch.bfloat16).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:
            return _plain(self, x)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).float()
        acc = torch.mm(x2, self.q.t().float()).mul_(self.scale)
        y = torch.add(self.bias32, acc.to(torch.bfloat16))  # fp32 + bf16 promotes to fp32
        return y.reshape(*x.shape[:-1], y.shape[-1])


def _plain(layer: nn.Linear, x: Tensor) -> Tensor:
    """``F.linear`` with the parameters cast to x's dtype: x [..., in] -> [..., out]."""
    bias = layer.bias.to(x.dtype) if layer.bias is not None else None
    return F.linear(x, layer.weight.to(x.dtype), bias)


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer`` applied to x [..., in] in x's dtype -> [..., out]: a prepared layer
    (``FrameLinear``, ``Int8Linear``) with its inference weights, any other as ``F.linear``."""
    if isinstance(layer, FrameLinear):
        return layer(x)
    return _plain(layer, x)


def prepare_linears(module: nn.Module, int8: bool = False) -> None:
    """Replace, in place, every plain ``nn.Linear`` inside ``module`` by its prepared layer
    (``Int8Linear`` when ``int8``, else ``FrameLinear``), sharing its parameters. For a copy
    whose weights no longer change (a streamer's snapshot): the prepared weights are not
    recomputed when the parameters change."""
    kind = Int8Linear if int8 else FrameLinear
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, kind(child))
