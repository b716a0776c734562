"""The DiVeQ directional step (docs/quantizers.md section 4), shared by the DiVeQ kinds and by the
residual stack's global step over the total."""
from __future__ import annotations

import torch
from torch import Tensor


def safe_norm(e: Tensor) -> Tensor:
    """Row norms ||e|| of e [N, d] -> [N, 1], with a finite (zero) gradient where e = 0.

    The double ``where`` keeps sqrt away from 0 in both the value and the backward pass.
    """
    sq = e.pow(2).sum(dim=-1, keepdim=True)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(),
                       torch.zeros_like(sq))


def directional_step(z: Tensor, target: Tensor, sigma: float, detach: bool = False) -> Tensor:
    """The DiVeQ displacement ||target - z|| * sg(v) from z toward target.

    z, target: float [N, d] -> [N, d]. v is the unit direction of (target - z + n) with
    n ~ N(0, sigma^2 I); with ``detach`` (the noise-free variant) v = e / (||e|| + 1e-12).
    Gradient flows through the distance only: to z and to target (e.g. a codebook Parameter).
    """
    e = target - z
    dist = safe_norm(e)
    with torch.no_grad():
        if detach:
            v = e / (dist + 1e-12)
        else:
            noisy = e + sigma * torch.randn_like(e) if sigma > 0 else e
            v = noisy / safe_norm(noisy).clamp_min(1e-30)  # zero error -> v = 0, not NaN
    return dist * v
