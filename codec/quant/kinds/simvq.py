"""SimVQ: a frozen random codebook C and a learned linear map, E = C W^T + b
(QUANTIZERS.md section 3; arXiv 2411.02038, official code youngsheen/SimVQ).

Training the shared map W moves every codeword at once, so codes that are never selected
still follow the latents: this is what keeps utilisation high. Do not combine with EMA.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from codec.quant.base import Quantizer, QuantizerOutput, masked_mean, register_kind
from codec.quant.restart import CodeRestart


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
            row of C is set so that its effective codeword C_k W^T + b equals a random active
            batch row (C_k = (x - b) pinv(W)^T); 0: never (C stays frozen).

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
        w, b = self.proj.weight.float(), self.proj.bias.float()
        # E_k = C_k W^T + b = x  <=>  W C_k^T = x - b; pinv also copes with a singular W.
        fresh = (rows - b) @ torch.linalg.pinv(w).T
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
