"""The DiVeQ directional step (docs/quantizers.md section 4) and the rotation trick's step
(section 12): each shared by its kinds and by the residual stack's global step over the total."""
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


def rotate_onto(e: Tensor, q: Tensor) -> Tensor:
    """The rotation trick's output for inputs e [N, d] and their codewords q [N, d]:
    lambda R e with lambda = ||q|| / ||e|| and R = I - 2 r r^T + 2 u w^T (w = e / ||e||,
    u = q / ||q||, r = (w + u) / ||w + u||), built from detached quantities so that only e
    carries a gradient. Value: q up to float rounding; Jacobian in e: lambda R. Rows with e = 0
    or q = 0 pass q (no rotation is defined; their gradient is zero). Never forms R: two dot
    products per row."""
    en, qn = safe_norm(e.detach()), safe_norm(q.detach())
    ok = (en > 0) & (qn > 0)
    w = e.detach() / en.clamp_min(1e-30)
    u = q.detach() / qn.clamp_min(1e-30)
    s = w + u
    r = s / safe_norm(s).clamp_min(1e-30)  # e opposite to q (s = 0): r = 0, R = I + 2 u w^T still maps w to u
    scale = qn / en.clamp_min(1e-30)
    turned = e - 2 * r * (r * e).sum(-1, keepdim=True) + 2 * u * (w * e).sum(-1, keepdim=True)
    return (scale * turned).where(ok, q.detach())
