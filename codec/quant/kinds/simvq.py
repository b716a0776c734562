"""SimVQ: a frozen random codebook C and a learned linear map, E = C W^T + b
(docs/quantizers.md section 3; arXiv 2411.02038, official code youngsheen/SimVQ).

Training the shared map W moves every codeword at once, so codes that are never selected
still follow the latents: this is what keeps utilisation high. Do not combine with EMA.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from codec.quant.base import Quantizer, QuantizerOutput, masked_mean, register_kind
from codec.quant.restart import CodeRestart

#: A restarted row of C may be this many times the median row norm of C (or the norm that W's
#: largest singular value needs to reach the target, if that is more).
RESTART_ROW_SCALE = 2.0


def restart_rows(w: Tensor, b: Tensor, targets: Tensor, scale: float, iters: int = 60) -> Tensor:
    """Rows c of C whose codewords c W^T + b come nearest to ``targets`` [R, d] under a bound
    on ||c||: the larger of ``scale`` and ||x - b|| / s_max (the norm W's largest singular value
    s_max needs to reach x), so a target W reaches with a row of that size is hit exactly.

    The exact solution c = (x - b) pinv(W)^T blows up along W's small singular values (rows
    of median norm ~830 against ~1 for the others at d = 128): one optimizer step on W then
    moves such a codeword by ||c|| times what it moves the others. Instead, with W = U S V^T and
    t = (x - b) U, c = a V^T with a_i = t_i s_i / (s_i^2 + lambda): a ridge solution, lambda = 0
    where the exact one fits in the bound, else the smallest lambda (bisection in log space, per
    row) that brings ||c|| down to it. Returns float32 [R, d].
    """
    u, s, vh = torch.linalg.svd(w.double())
    t = (targets.double() - b.double()) @ u  # [R, d] coordinates along W's output directions
    s2 = s.pow(2)[None]

    def coords(lam: Tensor) -> Tensor:
        return t * s[None] / (s2 + lam[:, None])

    limit = torch.clamp(t.norm(dim=1) / s.max(), min=scale)
    exact = coords(t.new_zeros(t.shape[0]))
    norms = exact.norm(dim=1)
    over = norms > limit
    if bool(over.any()):
        top = float(s2.max())
        lo = torch.full_like(norms, -30.0)  # log10 lambda / max s^2
        hi = torch.full_like(norms, 30.0)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            big = coords(top * 10.0 ** mid).norm(dim=1) > limit
            lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
        exact = torch.where(over[:, None], coords(top * 10.0 ** hi), exact)
    return (exact @ vh).float()


@register_kind("simvq")
class SimVQQuantizer(Quantizer):
    """SimVQ with the straight-through estimator.

    Args:
        dim, codebook_size: d and K.
        beta: commitment weight (0.25).
        commit_weight: global factor on the loss (1.0 ImageNet, 1000.0 in the official
            LibriTTS config).
        cosine_search: pick the code of largest cosine (L2-normalised search, as DAC); the
            output and the loss use the raw codeword E_k as before.
        restart_after: restart a code unused for this many training steps (restart.py): its
            row of C is rewritten so that its codeword C_k W^T + b lands as close to a random
            active batch row x as a row of C's usual size allows (``restart_rows``: exactly on x
            when W reaches it with such a row); 0: never (C stays frozen).

    State: ``frozen_codebook`` C float [K, d] (a buffer, N(0, d^-1/2), never trained) and
    ``proj`` = nn.Linear(d, d) (W and b, trained by the codebook term only).
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25,
                 commit_weight: float = 1.0, cosine_search: bool = False,
                 restart_after: int = 0) -> None:
        super().__init__(dim, codebook_size, cosine_search)
        self.beta = beta
        self.commit_weight = commit_weight
        # A buffer, so no optimizer can touch it; DDP broadcasts buffers from rank 0 anyway.
        self.register_buffer("frozen_codebook", torch.randn(codebook_size, dim) * dim ** -0.5)
        self.proj = nn.Linear(dim, dim)
        # Only built when enabled, so checkpoints without restarts keep their keys.
        self.restart = CodeRestart(codebook_size, restart_after) if restart_after > 0 else None

    def codebook(self) -> Tensor:
        """Effective codewords E = C W^T + b, recomputed each call: float [K, d], graph to W, b."""
        return self.proj(self.frozen_codebook)

    @torch.no_grad()
    def _restart(self, x: Tensor, mask: Tensor | None) -> None:
        """Move idle codes onto batch rows by rewriting their rows of C (W and b untouched)."""
        proposal = self.restart.propose(x, mask)
        if proposal is None:
            return
        dead, rows = proposal
        scale = float(self.frozen_codebook.float().norm(dim=1).median())
        fresh = restart_rows(self.proj.weight.float(), self.proj.bias.float(), rows, RESTART_ROW_SCALE * scale)
        self.frozen_codebook.copy_(torch.where(dead[:, None], fresh.to(self.frozen_codebook),
                                               self.frozen_codebook))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """x: float [N, d]; mask: bool [N] or None -> QuantizerOutput (see base.py).

        loss = commit_weight * (beta * mean(sg(q) - z)^2 + mean(q - sg(z))^2).
        """
        if not self.training:
            return self.eval_output(x)
        if self.restart is not None:
            self._restart(x, mask)
        book = self.codebook()
        codes = self.search(x, book)
        if self.restart is not None:
            self.restart.record(codes, mask)
        q = book[codes]
        commitment = masked_mean((q.detach() - x).pow(2), mask)
        codebook_term = masked_mean((q - x.detach()).pow(2), mask)
        loss = self.commit_weight * (self.beta * commitment + codebook_term)
        y = x + (q - x).detach()
        return QuantizerOutput(quantized=y, codes=codes, codeword=q, loss=loss)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, commit_weight={self.commit_weight}"
