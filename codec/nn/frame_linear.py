"""Linear layers at the frame rate: matrix-vector products that read as few bytes as possible.

A streamed 20 ms chunk is one frame, so every linear layer is a matrix-vector product whose
cost is reading its weight matrix: the default model reads ~32 MB of fp32 weights per frame,
more than a shared CPU's cache keeps, so a streamed frame runs at memory bandwidth, not at
arithmetic speed. Two things cut the bytes and the time:

- fp32 (default): for a few rows without autograd the weight is read from a cached transposed
  copy [in, out], the layout BLAS's matrix-vector kernel streams fastest (~1.5x faster than
  ``F.linear`` on a 384 x 768 layer here). Same values up to the summation order.
- int8 (``set_int8``, opt-in): weight-only int8 with one fp32-derived scale per output channel,
  activations and outputs rounded to bfloat16: ``y = bias + bf16(bf16(x) @ q^T * scale)`` with a
  float32 accumulation. Here it is computed with public float32 operators (the int8 weights are
  widened per call), so it gives the int8 numbers, not int8 speed: its speed is the native frame
  engine's, which reads the int8 bytes (4x fewer per frame) and rounds the same way. PyTorch's
  private ``torch._weight_int8pack_mm`` is deliberately not used: its kernels crash for more
  than one row unless the inner size is a multiple of their vector width (16 on AVX-512, where
  8 sufficed on AVX2), a contract no public document states. It applies to every call without
  autograd (offline too, so a stream still matches its offline result); training never sees it.

Float64 inputs (the codec's exact path) and autograd always take plain ``F.linear``.
Batch-1 streams of short chunks usually bypass these layers altogether: the native frame
engine (``codec.runtime.native``) reads the same weights (and rounds int8 the same way) in C.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: At most this many rows (frames x batch) take the cached matrix-vector layout; above it the
#: product is a matrix-matrix one and ``F.linear``'s GEMM is faster.
FRAME_ROWS = 4


def set_int8(module: nn.Module, on: bool) -> None:
    """Switch int8 weight-only inference on or off for every nn.Linear inside ``module``
    that goes through ``linear`` (cached weights are rebuilt on the next call)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.__dict__["_int8"] = on
            m.__dict__.pop("_frame_cache", None)


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8: weight float [out, in] -> (int8 [out, in],
    scale float32 [out]) with weight ~ q * scale (error at most scale / 2 per entry)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def _cache(layer: nn.Linear, int8: bool) -> tuple:
    """The layer's inference weights, rebuilt when its parameters change (storage and
    version counter, as the codebook caches): fp32 -> (Wt [in, out], bias [out]); int8 ->
    (q [out, in] int8, scale [out] float32 holding bfloat16 values, bias [out] float32)."""
    w, b = layer.weight, layer.bias
    key = (int8, w.data_ptr(), w._version) + ((b.data_ptr(), b._version) if b is not None else ())
    cached = layer.__dict__.get("_frame_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    bias = (b.detach().float() if b is not None else torch.zeros(w.shape[0], device=w.device)).contiguous()
    if int8:
        q, scale = quantize_int8(w)
        value = (q, scale.to(torch.bfloat16).float(), bias)
    else:
        value = (w.detach().float().t().contiguous(), bias)
    layer.__dict__["_frame_cache"] = (key, value)
    return value


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer`` applied to x [..., in] in x's dtype -> [..., out].

    Without autograd, float32 inputs read the cached weights described in the module
    docstring: int8 when ``set_int8`` switched it on, else for at most FRAME_ROWS rows the
    transposed fp32 copy. Everything else is ``F.linear`` with the parameters cast to x's dtype.
    """
    if x.dtype == torch.float32 and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)):
        int8 = layer.__dict__.get("_int8", False)
        rows = x.numel() // layer.in_features
        if int8 or rows <= FRAME_ROWS:
            try:
                cache = _cache(layer, int8)
            except RuntimeError:  # inference tensors have no version counter: no caching
                cache = None
            if cache is not None:
                x2 = x.reshape(rows, layer.in_features)
                if int8:
                    q, scale, bias = cache
                    xb = x2.to(torch.bfloat16).float()
                    acc = torch.mm(xb, q.t().float()).mul_(scale)
                    y = torch.add(bias, acc.to(torch.bfloat16))  # fp32 + bf16 promotes to fp32
                else:
                    wt, bias = cache
                    y = torch.addmm(bias, x2, wt)
                return y.reshape(*x.shape[:-1], y.shape[-1])
    bias = layer.bias.to(x.dtype) if layer.bias is not None else None
    return F.linear(x, layer.weight.to(x.dtype), bias)
