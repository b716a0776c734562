"""Nearest-neighbour search over a codebook, one matmul per call."""
from __future__ import annotations

import torch
from torch import Tensor

#: In the exact (fp64) path, distances are snapped to this fraction of their scale, so that
#: candidates closer than that (e.g. duplicated codewords) tie and go to the lowest index.
_SNAP = 2.0**-32
#: fp32 path: candidates within this fraction of the best distance tie (lowest index wins).
#: Below the 1e-6 near-tie bound of docs/quantizers.md (property 2), ~8x fp32 rounding of a
#: distance near the best.
_TIE32 = 2.0**-21


def codebook_norms(codebook: Tensor, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """The per-codeword terms of the search, computed once per codebook: the codebook
    transposed to [d, K] in ``dtype`` (contiguous, the layout the distance matmul reads
    fastest), the squared norms e2 [1, K] and their maximum (a 0-dim tensor), the same floats
    ``nearest`` would compute itself."""
    es = codebook.detach().to(dtype)
    e2 = (es * es).sum(dim=1)[None, :]
    return es.t().contiguous(), e2, e2.max()


def nearest(x: Tensor, codebook: Tensor, norms: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Index of the closest codeword for every row.

    x: float [N, d]; codebook: float [K, d] -> int64 [N], argmin_k ||x - e_k||^2.
    Runs with autocast off. fp32 inputs search in fp32 (bf16 distances pick wrong codes);
    candidates within a relative 2^-21 (< 1e-6) of the best distance tie and go to the lowest
    index, so near-duplicate codewords (restarts create them) are not decided by the ~1e-7
    rounding differences between a streamed chunk and a whole file. fp64 inputs take the codec's exact path: fp64 distances
    snapped to 2^-32 of (||x||^2 + max ||e||^2), ties to the lowest index. Matmul rounding
    depends on the batch shape (a streamed frame vs a whole file); the snap makes the winner
    independent of it, duplicated codewords included, unless a candidate sits within ~1e-16
    of a snap boundary.

    ``norms``: ``codebook_norms(codebook, x.dtype)`` computed beforehand (a streamer's snapshot
    prepares them once); by default they are computed here, once per call (K d operations,
    small beside the N K d of the distance matmul). The result is bit-identical. One matmul
    per call; the distance terms are
    combined in place, with the same roundings as ``x2 + e2 - 2 * (x @ e^T)`` (the factor
    2 is exact, so the fused multiply-add of ``sub_(alpha=2)`` rounds once, like the
    original subtraction).
    """
    if x.dtype != torch.float64:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return _nearest32(x, codebook, norms)
        return _nearest32(x, codebook, norms)  # no autocast context: a streamed frame's 12 searches
    # fp64: autocast never casts float64 operands, so no autocast guard is needed here.
    xs = x.detach()
    est, e2, e2max = codebook_norms(codebook) if norms is None else norms
    x2 = (xs * xs).sum(dim=1, keepdim=True)
    dist = torch.add(x2, e2).sub_(xs @ est, alpha=2.0)
    scale = (x2 + e2max).clamp_min_(1e-300).mul_(_SNAP)
    return dist.div_(scale).round_().argmin(dim=1)


def _nearest32(x: Tensor, codebook: Tensor, norms: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
    """``nearest``'s float32 path (autocast already off)."""
    xs = x.detach() if x.dtype == torch.float32 else x.detach().float()
    est, e2, _ = codebook_norms(codebook, torch.float32) if norms is None else norms
    dist = torch.addmm(e2, xs, est, alpha=-2.0).add_((xs * xs).sum(dim=1, keepdim=True))
    best = dist.amin(dim=1, keepdim=True)
    # The first index within _TIE32 of the best: near-duplicate codewords (restarts make
    # them) go to the same index whatever the rounding of this batch shape. In place and a
    # bool -> uint8 view: a streamed frame runs this 12 times, and each op costs ~5 us.
    threshold = best.abs().mul_(_TIE32).add_(best)
    ties = dist <= threshold
    if torch.onnx.is_in_onnx_export():  # ONNX has no dtype view; a cast gives the same indices
        return ties.to(torch.uint8).argmax(dim=1)
    return ties.view(torch.uint8).argmax(dim=1)


def nearest_cosine(x: Tensor, unit_codebook: Tensor, norms: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Index of the codeword of largest cosine for every row: x float [N, d], unit_codebook
    float [K, d] with unit-norm rows -> int64 [N], argmax_k x . e_k (the cosine up to the
    positive factor ||x||, so x needs no normalising; a zero row gets index 0).

    fp32: scores within a relative 2^-21 of the best tie, lowest index wins (as ``nearest``).
    fp64 (exact path): scores snapped to 2^-32 of ||x||, the largest a score can be, so
    streamed and offline rows pick the same code. One matmul per call, against the transposed
    codebook (``norms``: ``codebook_norms(unit_codebook, x.dtype)`` computed beforehand, or
    computed here).
    """
    if x.dtype != torch.float64:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return nearest_cosine(x.float(), unit_codebook, norms)
        xs = x.detach().float()
        est, _, _ = codebook_norms(unit_codebook, torch.float32) if norms is None else norms
        scores = xs @ est
        best = scores.amax(dim=1, keepdim=True)
        return (scores >= best - _TIE32 * best.abs()).to(torch.uint8).argmax(dim=1)
    xs = x.detach()
    est, _, _ = codebook_norms(unit_codebook) if norms is None else norms
    scale = xs.norm(dim=1, keepdim=True).clamp_min_(1e-300).mul_(_SNAP)
    return (xs @ est).div_(scale).round_().argmax(dim=1)
