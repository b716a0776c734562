"""Space-filling DiVeQ: quantize onto a dithered polyline (docs/quantizers.md section 5).

The layer holds K + 1 polyline vertices e_0..e_K. Its K symbols are the segment midpoints
m_j = (e_j + e_{j+1}) / 2: search, encode, decode and eval all use them, so indices are
reproducible. In training, each segment j gets a point d_j = (1 - l_j) e_j + l_j e_{j+1} at a
random l_j ~ U(0, 1) (shared over the batch), the nearest d_j is chosen and the output moves
toward it with two DiVeQ directional steps, one per vertex. No auxiliary loss.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from codec.quant.base import Quantizer, QuantizerOutput, register_kind
from codec.quant.directional import directional_step
from codec.quant.distributed import broadcast_from_rank0, rank
from codec.quant.restart import CodeRestart, sample_rows
from codec.quant.search import nearest


def chunk_means(samples: Tensor, chunks: int) -> Tensor:
    """Means of ``chunks`` contiguous, near-equal chunks of samples [n, d] (n >= 1) -> [chunks, d].

    With fewer samples than chunks, chunk j takes sample floor(j * n / chunks) instead.
    """
    n = samples.shape[0]
    if n < chunks:
        return samples[torch.arange(chunks, device=samples.device) * n // chunks]
    chunk_id = torch.arange(n, device=samples.device) * chunks // n
    sums = samples.new_zeros(chunks, samples.shape[1]).index_add_(0, chunk_id, samples)
    counts = torch.bincount(chunk_id, minlength=chunks).to(samples.dtype)
    return sums / counts[:, None]


@register_kind("sf_diveq")
class SFDiVeQQuantizer(Quantizer):
    """SF-DiVeQ with midpoint symbols for a reproducible bitstream.

    Args:
        dim, codebook_size: d and K (the number of symbols; K + 1 vertices are learned).
        sigma: noise std on the two directions (1e-3).
        warmup_steps: training steps during which the layer is the identity and collects
            latents; at their end vertex j becomes the mean of the j-th contiguous chunk.
        warmup_max_vectors: size of the reservoir sample of collected latents.
        restart_after: after the warm-up, a vertex whose adjacent segments (symbols) were all
            unused for this many training steps is moved onto a random active batch row
            (restart.py); vertices shared with a used segment stay, so used symbols never
            move. 0: never (the official layer has no replacement).

    State: ``vertices`` Parameter [K + 1, d]; buffer ``step``. The reservoir is a
    non-persistent buffer (not saved: a resume mid-warm-up restarts the collection) and is
    freed once the vertices are set.
    """

    differentiable_codeword = True

    def __init__(self, dim: int, codebook_size: int, sigma: float = 1e-3,
                 warmup_steps: int = 1000, warmup_max_vectors: int = 65536,
                 restart_after: int = 0) -> None:
        super().__init__(dim, codebook_size)
        if warmup_max_vectors < 1:
            raise ValueError(f"warmup_max_vectors must be >= 1, got {warmup_max_vectors}")
        self.sigma = sigma
        self.warmup_steps = warmup_steps
        self.warmup_max_vectors = warmup_max_vectors
        self.vertices = nn.Parameter(torch.rand(codebook_size + 1, dim) / codebook_size)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("reservoir", torch.zeros(0, dim), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)
        # Only built when enabled, so checkpoints without restarts keep their keys.
        self.restart = CodeRestart(codebook_size, restart_after) if restart_after > 0 else None

    def codebook(self) -> Tensor:
        """The K symbols, segment midpoints (e_j + e_{j+1}) / 2: float [K, d], graph to vertices."""
        return 0.5 * (self.vertices[:-1] + self.vertices[1:])

    @torch.no_grad()
    def _collect(self, x: Tensor, mask: Tensor | None) -> None:
        """Reservoir-sample the active rows of x [N, d] (uniform over everything seen)."""
        active = x.detach().float() if mask is None else x.detach().float()[mask]
        n, cap = active.shape[0], self.warmup_max_vectors
        if n == 0:
            return
        if self.reservoir.shape[0] == 0:
            self.reservoir = x.new_zeros(cap, self.dim, dtype=torch.float32)
        t = self.seen + torch.arange(n, device=x.device)  # global index of each row
        slot = torch.where(t < cap, t, (torch.rand(n, device=x.device) * (t + 1)).long())
        keep = slot < cap
        self.reservoir[slot[keep]] = active[keep]
        self.seen += n

    @torch.no_grad()
    def _init_vertices(self) -> None:
        """Vertices from chunk means of rank 0's reservoir, broadcast; frees the reservoir."""
        if rank() == 0:
            filled = min(int(self.seen), self.reservoir.shape[0])
            if filled > 0:
                means = chunk_means(self.reservoir[:filled], self.codebook_size + 1)
                self.vertices.copy_(means.to(self.vertices))
        broadcast_from_rank0(self.vertices)
        self.reservoir = self.reservoir.new_zeros(0, self.dim)
        self.seen.zero_()

    @torch.no_grad()
    def _restart(self, x: Tensor, mask: Tensor | None) -> None:
        """Move vertices whose every adjacent segment is idle onto batch rows."""
        dead_seg = self.restart.dead()
        if not bool(dead_seg.any()):
            return
        pad = dead_seg.new_ones(1)
        # vertex k borders segments k - 1 and k (one segment at either end)
        dead_vert = torch.cat([pad, dead_seg]) & torch.cat([dead_seg, pad])
        if not bool(dead_vert.any()):
            return
        rows, ok = sample_rows(x, mask, self.codebook_size + 1)
        if not bool(ok):
            return
        self.vertices.copy_(torch.where(dead_vert[:, None], rows.to(self.vertices), self.vertices))
        # segments with a new vertex get a fresh window; isolated idle segments keep counting
        touched = dead_vert[:-1] | dead_vert[1:]
        self.restart.idle.masked_fill_(touched, 0)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """x: float [N, d]; mask: bool [N] or None -> QuantizerOutput (see base.py), loss 0.

        Warm-up (``passthrough``): y = x, codes from the midpoint search, codeword the
        detached midpoint of each code (what a residual stack subtracts, so the stages after
        this one collect their own remainders rather than zeros), vertices untouched.
        """
        if not self.training:
            return self.eval_output(x)
        step = int(self.step)
        self.step += 1
        if step < self.warmup_steps:
            self._collect(x, mask)
            with torch.no_grad():
                book = self.codebook()
                codes = nearest(x, book)
            return QuantizerOutput(quantized=x, codes=codes, codeword=book[codes].to(x.dtype),
                                   loss=x.new_zeros(()), passthrough=True)
        if step == self.warmup_steps and self.warmup_steps > 0:
            self._init_vertices()  # before the vertices enter this step's graph
        if self.restart is not None:
            self._restart(x, mask)
        v = self.vertices
        lam = torch.rand(self.codebook_size, 1, device=x.device, dtype=v.dtype)
        dithered = (1.0 - lam) * v[:-1] + lam * v[1:]  # [K, d], graph to the vertices
        codes = nearest(x, dithered)
        if self.restart is not None:
            self.restart.record(codes, mask)
        l_sel = lam[codes].to(x.dtype)
        y = (x + (1.0 - l_sel) * directional_step(x, v[codes], self.sigma)
             + l_sel * directional_step(x, v[codes + 1], self.sigma))
        return QuantizerOutput(quantized=y, codes=codes, codeword=dithered[codes],
                               loss=x.new_zeros(()))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, sigma={self.sigma}, "
                f"warmup_steps={self.warmup_steps}, vertices={self.codebook_size + 1}")
