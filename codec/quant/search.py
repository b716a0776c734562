"""Nearest-neighbour search over a codebook, one matmul per call."""
from __future__ import annotations

import torch
from torch import Tensor

#: In the exact (fp64) path, distances are snapped to this fraction of their scale, so that
#: candidates closer than that (e.g. duplicated codewords) tie and go to the lowest index.
_SNAP = 2.0**-32


def nearest(x: Tensor, codebook: Tensor) -> Tensor:
    """Index of the closest codeword for every row.

    x: float [N, d]; codebook: float [K, d] -> int64 [N], argmin_k ||x - e_k||^2.
    Runs with autocast off. fp32 inputs search in fp32 (bf16 distances pick wrong codes;
    this is the training path). fp64 inputs take the codec's exact path: fp64 distances
    snapped to 2^-32 of (||x||^2 + max ||e||^2), ties to the lowest index. Matmul rounding
    depends on the batch shape (a streamed frame vs a whole file); the snap makes the winner
    independent of it, duplicated codewords included, unless a candidate sits within ~1e-16
    of a snap boundary.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        if x.dtype != torch.float64:
            xs, es = x.detach().float(), codebook.detach().float()
            return ((es * es).sum(dim=1)[None, :] - 2.0 * (xs @ es.t())).argmin(dim=1)
        xs, es = x.detach(), codebook.detach().double()
        x2 = (xs * xs).sum(dim=1, keepdim=True)
        e2 = (es * es).sum(dim=1)[None, :]
        dist = x2 + e2 - 2.0 * (xs @ es.t())
        scale = (x2 + e2.max()).clamp_min(1e-300)
        return torch.round(dist / (scale * _SNAP)).argmin(dim=1)
