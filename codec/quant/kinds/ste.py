"""VQ-VAE quantizer with the straight-through estimator (docs/quantizers.md section 1).

The codebook is a Parameter trained by the codebook term of the loss; the reconstruction
gradient passes straight through to the encoder (dL/dz = g) and gives the codebook nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from codec.quant.base import Quantizer, QuantizerOutput, masked_mean, register_kind
from codec.quant.distributed import broadcast_from_rank0, rank
from codec.quant.kmeans import kmeans
from codec.quant.restart import CodeRestart


@register_kind("ste")
class STEQuantizer(Quantizer):
    """Straight-through VQ: y = z + sg(c - z) in training, exact lookup in eval.

    Args:
        dim: vector dimension d.
        codebook_size: number of codes K.
        beta: commitment weight; loss = mean||c - sg(z)||^2 + beta * mean||z - sg(c)||^2
            (beta on the commitment term, not the codebook term: the taming "legacy" bug).
        init: "kaiming" (kaiming-uniform, as EnCodec) or "kmeans" (k-means on the active rows
            of the first training batch, chosen on rank 0 and broadcast).
        cosine_search: pick the code of largest cosine (L2-normalised search, as DAC); the
            output, the losses and the gradients use the raw codeword as before.
        restart_after: restart a code unused for this many training steps from a random
            active batch row (restart.py); 0: never.
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25,
                 init: str = "kaiming", cosine_search: bool = False, restart_after: int = 0) -> None:
        super().__init__(dim, codebook_size, cosine_search)
        if init not in ("kaiming", "kmeans"):
            raise ValueError(f"init must be 'kaiming' or 'kmeans', got {init!r}")
        self.beta = beta
        self.init = init
        weight = torch.empty(codebook_size, dim)
        nn.init.kaiming_uniform_(weight)  # as EnCodec: U(-sqrt(6/d), sqrt(6/d))
        self.embed = nn.Parameter(weight)
        # A buffer (not a Python flag) so a resumed checkpoint does not re-run k-means.
        self.register_buffer("initialized", torch.tensor(init == "kaiming"))
        # Only built when enabled, so checkpoints without restarts keep their keys.
        self.restart = CodeRestart(codebook_size, restart_after) if restart_after > 0 else None

    def codebook(self) -> Tensor:
        """The codewords, the Parameter itself: float [K, d]."""
        return self.embed

    @torch.no_grad()
    def _kmeans_init(self, x: Tensor, mask: Tensor | None) -> None:
        """Set the codebook to k-means centroids of the active rows of x [N, d]."""
        ok = torch.zeros((), dtype=torch.bool, device=x.device)
        if rank() == 0:
            active = x if mask is None else x[mask]
            if active.shape[0] > 0:
                self.embed.copy_(kmeans(active, self.codebook_size)[0].to(self.embed))
                ok.fill_(True)
        # A stage dropped for the whole batch waits for a batch that reaches it.
        if not bool(broadcast_from_rank0(ok)):
            return
        broadcast_from_rank0(self.embed)  # every rank starts from rank 0's centroids
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart(self, x: Tensor, mask: Tensor | None) -> None:
        """Overwrite idle codes with batch rows (before the codebook enters the graph)."""
        proposal = self.restart.propose(x, mask)
        if proposal is not None:
            dead, rows = proposal
            self.embed.copy_(torch.where(dead[:, None], rows.to(self.embed), self.embed))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """x: float [N, d]; mask: bool [N] or None -> QuantizerOutput (see base.py)."""
        if not self.training:
            return self.eval_output(x)
        if not bool(self.initialized):
            self._kmeans_init(x, mask)
        if self.restart is not None:
            self._restart(x, mask)
        codes = self.search(x, self.embed)
        if self.restart is not None:
            self.restart.record(codes, mask)
        c = self.embed[codes]  # keeps the graph to the Parameter
        codebook_term = masked_mean((c - x.detach()).pow(2), mask)
        commitment = masked_mean((x - c.detach()).pow(2), mask)
        y = x + (c - x).detach()
        return QuantizerOutput(quantized=y, codes=codes, codeword=c,
                               loss=codebook_term + self.beta * commitment)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, init={self.init!r}"
