"""VQ with an exponential-moving-average codebook (docs/quantizers.md section 2, EnCodec defaults).

The codebook is not a Parameter: it is re-estimated every training step from the running
cluster sizes N and embedding sums m. Dead codes (N_k < tau) are restarted from batch vectors
AFTER the EMA update, so the restart survives (EnCodec's statement order loses it).
Under torch.distributed the statistics are summed over ranks and every random choice is made
on rank 0 and broadcast, so all ranks hold bitwise identical buffers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from codec.quant.base import Quantizer, QuantizerOutput, masked_mean, register_kind
from codec.quant.distributed import all_reduce_sum, broadcast_from_rank0, rank
from codec.quant.kmeans import kmeans
from codec.quant.restart import sample_rows


@register_kind("ema")
class EMAQuantizer(Quantizer):
    """EMA-codebook VQ: y = z + sg(c - z); the only loss is the commitment term.

    Args:
        dim, codebook_size: d and K.
        decay: EMA decay g (0.99).
        eps: Laplace smoothing epsilon (1e-5).
        dead_threshold: tau; codes with N_k < tau are restarted from batch vectors (2.0).
        dead_fraction: with it, tau is at least this fraction of the mean running cluster size
            (the active rows per step / K), so the threshold follows the batch: at 1024 codes
            and ~800 rows a step, an absolute tau of 2 restarts nearly every code every step,
            while 0.1 of the mean restarts only codes used ten times less than average (0: off).
        commitment: weight beta_c of mean||z - sg(c)||^2 (EnCodec 1.0).
        kmeans_init: k-means on the first training batch (else random-normal codewords).
        kmeans_iters: Lloyd iterations for that init (50).
        cosine_search: pick the code of largest cosine (L2-normalised search, as DAC); the
            EMA statistics, the output and the loss use the raw vectors as before.

    Buffers (all float32): cluster_size N [K], embed_sum m [K, d], embed e [K, d],
    initialized (bool scalar).
    """

    #: Buffers only training reads (``Codec.save_pretrained(training_state=False)`` leaves them out).
    TRAINING_STATE = ("cluster_size", "embed_sum")

    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_threshold: float = 2.0, commitment: float = 1.0, kmeans_init: bool = True,
                 kmeans_iters: int = 50, cosine_search: bool = False, dead_fraction: float = 0.0) -> None:
        super().__init__(dim, codebook_size, cosine_search)
        self.decay = decay
        self.eps = eps
        self.dead_threshold = dead_threshold
        self.dead_fraction = dead_fraction
        #: Codes restarted by the last training step (a statistic, not state).
        self.last_restarts = 0
        self.commitment = commitment
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        embed = torch.randn(codebook_size, dim)
        self.register_buffer("embed", embed)
        # Without k-means each code starts as if it had seen one vector equal to itself.
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    def codebook(self) -> Tensor:
        """The current codewords e: float [K, d] (a buffer, no gradient)."""
        return self.embed

    @torch.no_grad()
    def set_codebook(self, book: Tensor, counts: Tensor) -> None:
        """As the base class, and the EMA statistics restart from the fitted clusters
        (N = counts, m = e * N, as after the k-means init), so training can go on from here."""
        super().set_codebook(book, counts)
        self.cluster_size.copy_(counts.float())
        self.embed_sum.copy_(self.embed * self.cluster_size[:, None])

    def threshold(self) -> float:
        """The dead-code threshold tau now: max(dead_threshold, dead_fraction x mean N)."""
        if self.dead_fraction <= 0:
            return float(self.dead_threshold)
        return max(float(self.dead_threshold), self.dead_fraction * float(self.cluster_size.mean()))

    def dead_count(self) -> int:
        """Number of codes whose running cluster size is below the dead threshold."""
        return int((self.cluster_size < self.threshold()).sum())

    @torch.no_grad()
    def _kmeans_init(self, x: Tensor, mask: Tensor | None) -> None:
        """Centroids from rank 0's active rows; N from the global counts; m = e * N."""
        ok = torch.zeros((), dtype=torch.bool, device=x.device)
        if rank() == 0:
            active = x.detach().float() if mask is None else x.detach().float()[mask]
            if active.shape[0] > 0:
                self.embed.copy_(kmeans(active, self.codebook_size, self.kmeans_iters)[0])
                ok.fill_(True)
        # A stage dropped for the whole batch waits for a batch that reaches it.
        if not bool(broadcast_from_rank0(ok)):
            return
        broadcast_from_rank0(self.embed)
        counts, _ = self._batch_stats(x, mask)
        self.cluster_size.copy_(counts)
        # m = e * N, not m = e: otherwise e = m / N shrinks every code on the first update.
        self.embed_sum.copy_(self.embed * counts[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _neutral_stats(self, mask: Tensor) -> None:
        """Statistics for a trained codebook loaded without them (``save_pretrained(
        training_state=False)`` leaves N and m out, so they load as zeros, which would restart
        every code): every code gets the mean count of this step's active rows, N = rows / K,
        and m = e * N, so training goes on from the loaded codewords and the codes it no longer
        uses fall below the threshold within a few hundred steps, as in a run never saved."""
        rows = all_reduce_sum(mask.float().sum())
        self.cluster_size.fill_(float(rows) / self.codebook_size)
        self.embed_sum.copy_(self.embed * self.cluster_size[:, None])

    @torch.no_grad()
    def _batch_stats(self, x: Tensor, mask: Tensor | None,
                     codes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Counts n [K] and sums s [K, d] of the active rows per code, summed over ranks."""
        if codes is None:
            codes = self.search(x, self.embed)
        x32 = x.detach().float()
        weight = x32.new_ones(x.shape[0]) if mask is None else mask.to(x32.dtype)
        n = torch.zeros_like(self.cluster_size).index_add_(0, codes, weight)
        s = torch.zeros_like(self.embed).index_add_(0, codes, x32 * weight[:, None])
        return all_reduce_sum(n), all_reduce_sum(s)

    @torch.no_grad()
    def _update(self, x: Tensor, mask: Tensor | None, codes: Tensor) -> None:
        """One EMA step from the active rows, then the dead-code restart."""
        n, s = self._batch_stats(x, mask, codes)
        g = self.decay
        self.cluster_size.mul_(g).add_(n, alpha=1.0 - g)
        self.embed_sum.mul_(g).add_(s, alpha=1.0 - g)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        # A code with zero smoothed size (only possible with eps = 0) keeps its codeword.
        has_mass = smoothed > 0
        self.embed.copy_(torch.where(has_mass[:, None],
                                     self.embed_sum / smoothed.clamp_min(1e-30)[:, None],
                                     self.embed))
        # Restart after the update so the next EMA line cannot overwrite it.
        tau = self.threshold()
        dead = self.cluster_size < tau
        self.last_restarts = 0
        if bool(dead.any()):
            rows, ok = sample_rows(x, mask, self.codebook_size)
            dead &= ok
            self.last_restarts = int(dead.sum())
            self.embed.copy_(torch.where(dead[:, None], rows, self.embed))
            self.embed_sum.copy_(torch.where(dead[:, None], rows * tau, self.embed_sum))
            self.cluster_size.copy_(torch.where(dead, torch.full_like(self.cluster_size, tau),
                                                self.cluster_size))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """x: float [N, d]; mask: bool [N] or None -> QuantizerOutput (see base.py).

        Output and loss use the codebook before this step's update; the update happens last.
        """
        if not self.training:
            return self.eval_output(x)
        if not bool(self.initialized):
            self._kmeans_init(x, mask)
        elif not bool(self.cluster_size.any()):
            self._neutral_stats(mask if mask is not None else x.new_ones(x.shape[0], dtype=torch.bool))
        codes = self.search(x, self.embed)
        c = self.embed[codes].to(x.dtype)
        loss = self.commitment * masked_mean((x - c).pow(2), mask)
        y = x + (c - x).detach()
        self._update(x, mask, codes)
        return QuantizerOutput(quantized=y, codes=codes, codeword=c, loss=loss)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, decay={self.decay}, eps={self.eps}, "
                f"dead_threshold={self.dead_threshold}, dead_fraction={self.dead_fraction}, "
                f"commitment={self.commitment}")
