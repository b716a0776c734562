"""VQ-VAE quantizer with the straight-through estimator (QUANTIZERS.md section 1).

The codebook is a Parameter trained by the codebook term of the loss; the reconstruction
gradient passes straight through to the encoder (dL/dz = g) and gives the codebook nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from codec.quant.base import Quantizer, QuantizerOutput, masked_mean
from codec.quant.distributed import broadcast_from_rank0, rank
from codec.quant.kmeans import kmeans
from codec.quant.search import nearest


class STEQuantizer(Quantizer):
    """Straight-through VQ: y = z + sg(c - z) in training, exact lookup in eval.

    Args:
        dim: vector dimension d.
        codebook_size: number of codes K.
        beta: commitment weight; loss = mean||c - sg(z)||^2 + beta * mean||z - sg(c)||^2
            (beta on the commitment term, not the codebook term: the taming "legacy" bug).
        init: "kaiming" (kaiming-uniform, as EnCodec) or "kmeans" (k-means on the active rows
            of the first training batch, chosen on rank 0 and broadcast).
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25,
                 init: str = "kaiming") -> None:
        super().__init__(dim, codebook_size)
        if init not in ("kaiming", "kmeans"):
            raise ValueError(f"init must be 'kaiming' or 'kmeans', got {init!r}")
        self.beta = beta
        self.init = init
        weight = torch.empty(codebook_size, dim)
        nn.init.kaiming_uniform_(weight)  # as EnCodec: U(-sqrt(6/d), sqrt(6/d))
        self.embed = nn.Parameter(weight)
        # A buffer (not a Python flag) so a resumed checkpoint does not re-run k-means.
        self.register_buffer("initialized", torch.tensor(init == "kaiming"))

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
        broadcast_from_rank0(self.embed.data)  # every rank starts from rank 0's centroids
        self.initialized.fill_(True)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """x: float [N, d]; mask: bool [N] or None -> QuantizerOutput (see base.py)."""
        if not self.training:
            return self.eval_output(x)
        if not bool(self.initialized):
            self._kmeans_init(x, mask)
        codes = nearest(x, self.embed)
        c = self.embed[codes]  # keeps the graph to the Parameter
        codebook_term = masked_mean((c - x.detach()).pow(2), mask)
        commitment = masked_mean((x - c.detach()).pow(2), mask)
        y = x + (c - x).detach()
        return QuantizerOutput(quantized=y, codes=codes, codeword=c,
                               loss=codebook_term + self.beta * commitment)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, init={self.init!r}"
