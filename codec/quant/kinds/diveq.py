"""DiVeQ: differentiable VQ by a detached direction and a differentiable distance
(docs/quantizers.md section 4; arXiv 2509.26469, official code AaltoML/DiVeQ).

Training forward: y = z + ||c - z|| * sg(v), v = (c - z + n) / ||c - z + n||. The value is
(almost) c, and the gradient reaches both the encoder (dL/dz = g - u (v.g)) and the selected
codeword (dL/dc = u (v.g)), so no auxiliary loss is needed. Noise and code replacement happen
in training mode only (the official forward does them in eval too: a bug not to copy).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from codec.quant.base import Quantizer, QuantizerOutput, register_kind
from codec.quant.directional import directional_step, safe_norm
from codec.quant.distributed import all_reduce_sum, broadcast_from_rank0, rank
from codec.quant.restart import CodeRestart

#: Size of the perturbation added to a copied code on replacement, relative to its norm.
#: A fixed tiny value (the official 1e-9) is below fp32 resolution for codewords of size ~1.
REPLACE_PERTURBATION = 1e-3


@register_kind("diveq")
class DiVeQQuantizer(Quantizer):
    """DiVeQ with a codebook Parameter and periodic replacement of unused codes.

    Args:
        dim, codebook_size: d and K.
        sigma: noise std on the direction (1e-3; the official "noise_var" is a std).
        detach_variant: use the noise-free direction e / (||e|| + 1e-12).
        replace_every: replace unused codes every this many training steps (<= 0: never).
        replace_min_usage: a code used in fewer than this fraction of those steps is replaced
            by a used code (sampled in proportion to its assignment count) plus a perturbation
            of relative size REPLACE_PERTURBATION.
        cosine_search: pick the code of largest cosine (L2-normalised search, as DAC); the
            output and its gradients use the raw codeword as before.
        restart_after: restart a code unused for this many training steps from a random
            active batch row (restart.py, checked every step); 0: never. Independent of the
            official periodic replacement above.

    Buffers: ``step`` (training steps so far), ``used_steps`` [K] (steps in which each code was
    used on any rank since the last replacement), ``usage`` [K] (assignments, all ranks).
    """

    differentiable_codeword = True

    def __init__(self, dim: int, codebook_size: int, sigma: float = 1e-3,
                 detach_variant: bool = False, replace_every: int = 100,
                 replace_min_usage: float = 0.01, cosine_search: bool = False,
                 restart_after: int = 0) -> None:
        super().__init__(dim, codebook_size, cosine_search)
        self.sigma = sigma
        self.detach_variant = detach_variant
        self.replace_every = replace_every
        self.replace_min_usage = replace_min_usage
        self.embed = nn.Parameter(torch.rand(codebook_size, dim) / codebook_size)  # U[0, 1/K)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("used_steps", torch.zeros(codebook_size))
        self.register_buffer("usage", torch.zeros(codebook_size))
        # Only built when enabled, so checkpoints without restarts keep their keys.
        self.restart = CodeRestart(codebook_size, restart_after) if restart_after > 0 else None

    def codebook(self) -> Tensor:
        """The codewords, the Parameter itself: float [K, d]."""
        return self.embed

    @torch.no_grad()
    def _record_usage(self, codes: Tensor, mask: Tensor | None, counts: Tensor | None = None) -> None:
        """Add this step's (all-reduced) assignment counts of the active rows (``counts`` [K]
        when already computed and all-reduced, e.g. by the restart tracker)."""
        if counts is None:
            weight = None if mask is None else mask.float()
            counts = torch.bincount(codes, weights=weight, minlength=self.codebook_size).float()
            all_reduce_sum(counts)
        self.usage += counts
        self.used_steps += (counts > 0).float()

    @torch.no_grad()
    def replace_unused(self) -> int:
        """Overwrite codes used in < replace_min_usage of the window's steps; reset counters.

        The choice is made on rank 0 and broadcast (counters are all-reduced, so whether a
        replacement happens is the same on every rank). Returns the number of codes replaced.
        """
        window = max(self.replace_every, 1)
        dead = self.used_steps < self.replace_min_usage * window
        alive = ~dead
        num_dead = int(dead.sum())
        if num_dead > 0 and bool(alive.any()):
            if rank() == 0:
                src = torch.multinomial(self.usage * alive, self.codebook_size, replacement=True)
                base = self.embed[src]
                scale = REPLACE_PERTURBATION * safe_norm(base).clamp_min(1e-12)
                fresh = base + scale * torch.randn_like(base) / math.sqrt(self.dim)
                self.embed.copy_(torch.where(dead[:, None], fresh, self.embed))
            broadcast_from_rank0(self.embed)
        else:
            num_dead = 0
        self.used_steps.zero_()
        self.usage.zero_()
        return num_dead

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """x: float [N, d]; mask: bool [N] or None -> QuantizerOutput (see base.py), loss 0.

        Replacement runs at the start of the step after every ``replace_every`` steps, before
        the codebook enters the graph (an in-place change afterwards would corrupt backward).
        """
        if not self.training:
            return self.eval_output(x)
        step = int(self.step)
        if self.replace_every > 0 and step > 0 and step % self.replace_every == 0:
            self.replace_unused()
        if self.restart is not None:
            proposal = self.restart.propose(x, mask)
            if proposal is not None:
                dead, rows = proposal
                with torch.no_grad():
                    self.embed.copy_(torch.where(dead[:, None], rows.to(self.embed), self.embed))
        codes = self.search(x, self.embed)  # from the clean z: no noise in the selection
        counts = None if self.restart is None else self.restart.record(codes, mask)
        c = self.embed[codes]
        y = x + directional_step(x, c, self.sigma, self.detach_variant)
        self._record_usage(codes, mask, counts)
        self.step += 1
        return QuantizerOutput(quantized=y, codes=codes, codeword=c, loss=x.new_zeros(()))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, sigma={self.sigma}, detach_variant={self.detach_variant},"
                f" replace_every={self.replace_every}, replace_min_usage={self.replace_min_usage}")
