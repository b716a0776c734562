"""Per-stage codebook statistics: perplexity, utilisation and dead codes (docs/quantizers.md s. 8).

Only active positions count (not padding, stage not dropped): callers pass a mask.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def code_counts(codes: Tensor, codebook_size: int, mask: Tensor | None = None) -> Tensor:
    """How often each code occurs. codes: int [N]; mask: bool [N] or None -> float [K]."""
    codes = codes.reshape(-1)
    if mask is not None:
        codes = codes[mask.reshape(-1)]
    return torch.bincount(codes, minlength=codebook_size).to(torch.float32)


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the empirical code distribution. counts: [K] -> scalar in [1, K].

    Uniform counts give K, a single used code gives 1; no counts at all give 1.
    """
    total = counts.sum()
    if total <= 0:
        return counts.new_ones(())
    p = counts / total
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


def utilisation(counts: Tensor) -> Tensor:
    """Fraction of codes used at least once. counts: [K] -> scalar in [0, 1]."""
    return (counts > 0).float().mean()


class UsageWindow(nn.Module):
    """Code counts over the last ``window`` training steps (a ring of per-step counts).

    The ring is a buffer, so it is saved with checkpoints and restored on resume.
    """

    #: Buffers only training reads (``Codec.save_pretrained(training_state=False)`` leaves them out).
    TRAINING_STATE = ("ring", "step")

    def __init__(self, codebook_size: int, window: int = 100) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.window = window
        self.register_buffer("ring", torch.zeros(window, codebook_size))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, counts: Tensor) -> None:
        """Record one step's counts [K]."""
        self.ring[int(self.step) % self.window] = counts.to(self.ring)
        self.step += 1

    def counts(self) -> Tensor:
        """Summed counts over the window, [K]."""
        return self.ring.sum(dim=0)

    def dead_codes(self) -> int:
        """Codes not used in the window (K minus codes used)."""
        return int((self.counts() <= 0).sum())


def stage_stats(counts: Tensor, window: UsageWindow | None = None) -> dict[str, float]:
    """The numbers a training loop logs for one stage, from this batch's counts [K].

    Keys: perplexity, utilisation (this batch), and if a window is given window_perplexity,
    window_utilisation and dead_codes (over the window).
    """
    out = {"perplexity": float(perplexity(counts)), "utilisation": float(utilisation(counts))}
    if window is not None:
        wc = window.counts()
        out["window_perplexity"] = float(perplexity(wc))
        out["window_utilisation"] = float(utilisation(wc))
        out["dead_codes"] = float(window.dead_codes())
    return out


def effective_rank(x: Tensor) -> float:
    """Effective rank (Roy and Vetterli, 2007) of a set of vectors: exp of the entropy of the
    normalised singular values of the centred matrix. x: [N, D] -> a number in [1, min(N, D)];
    D for isotropic vectors, 1 when they all lie on one line, 0.0 for fewer than two vectors
    or vectors that are all equal.

    Read for each stage on the residuals it receives, it tells encoder-side collapse (the
    latents themselves squeezed onto few directions) from index collapse (a codebook that
    uses few codes of latents that still span the space)."""
    x = x.detach().reshape(-1, x.shape[-1]).double()
    if x.shape[0] < 2:
        return 0.0
    s = torch.linalg.svdvals(x - x.mean(dim=0))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def norm_spread(codebook: Tensor) -> float:
    """Spread of the codewords' lengths: their standard deviation over their mean, codebook
    [K, D] -> a number >= 0 (0 when every code has the same norm). A codebook whose few
    used codes grow while the rest stay where they were initialised shows it as a rising
    spread."""
    norms = codebook.detach().double().norm(dim=-1)
    mean = norms.mean()
    return float(norms.std(unbiased=False) / mean) if mean > 0 else 0.0
