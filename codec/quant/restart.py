"""Dead-code restarts for codebooks trained by gradients (STE, SimVQ, DiVeQ).

EMA restarts codes whose running cluster size falls below a threshold (ema.py); the
gradient-trained kinds have no such statistic, so ``CodeRestart`` counts, per code, the
training steps since it was last assigned (counts summed over ranks). A code idle for
``after`` steps is overwritten with a random active row of the current batch, the same rows
on every rank (drawn on rank 0 and broadcast, ``sample_rows``), so the code is the
nearest one for at least that row again. The quantizer applies the new rows itself (its
codebook may be a Parameter or a map of a frozen codebook) at the start of a training
forward, before the codebook enters the autograd graph.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from codec.quant.distributed import all_reduce_sum, broadcast_from_rank0, rank


def sample_rows(x: Tensor, mask: Tensor | None, count: int) -> tuple[Tensor, Tensor]:
    """``count`` active rows of x [N, d] drawn uniformly with replacement, decided on rank 0.

    Returns (rows float32 [count, d], ok bool scalar). ``ok`` is False (and rows are zeros)
    when rank 0 has no active row; both are broadcast so every rank gets rank 0's choice.
    """
    rows = x.new_zeros(count, x.shape[1], dtype=torch.float32)
    ok = torch.zeros((), dtype=torch.bool, device=x.device)
    if rank() == 0:
        active = x.detach().float() if mask is None else x.detach().float()[mask]
        if active.shape[0] > 0:
            rows = active[torch.randint(0, active.shape[0], (count,), device=x.device)]
            ok.fill_(True)
    broadcast_from_rank0(rows)
    broadcast_from_rank0(ok)
    return rows, ok


class CodeRestart(nn.Module):
    """Tracks idle steps per code and proposes restarts from batch rows.

    Args:
        codebook_size: K.
        after: a code not assigned (on any rank, active rows only) for this many
            consecutive training steps is restarted; must be >= 1.

    Buffer ``idle`` int64 [K]: training steps since each code was last assigned. It is
    identical on every rank (the counts are all-reduced), so the set of restarted codes is too.
    """

    #: Buffers only training reads (``Codec.save_pretrained(training_state=False)`` leaves them out).
    TRAINING_STATE = ("idle",)

    def __init__(self, codebook_size: int, after: int) -> None:
        super().__init__()
        if after < 1:
            raise ValueError(f"restart_after must be >= 1, got {after}")
        self.codebook_size = codebook_size
        self.after = after
        self.register_buffer("idle", torch.zeros(codebook_size, dtype=torch.long))

    @torch.no_grad()
    def record(self, codes: Tensor, mask: Tensor | None) -> Tensor:
        """Count this step's assignments of the active rows (summed over ranks) and update
        ``idle``. codes: int64 [N]; mask: bool [N] or None. Returns the counts float [K]."""
        weight = None if mask is None else mask.float()
        counts = torch.bincount(codes, weights=weight, minlength=self.codebook_size).float()
        all_reduce_sum(counts)
        self.idle.copy_(torch.where(counts > 0, torch.zeros_like(self.idle), self.idle + 1))
        return counts

    def dead(self) -> Tensor:
        """bool [K]: codes idle for at least ``after`` steps."""
        return self.idle >= self.after

    @torch.no_grad()
    def propose(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The codes to restart now and their new values, or None when there are none.

        x: float [N, d], the quantizer's input this step; mask: bool [N] or None. Returns
        (dead bool [K], rows float32 [K, d]); row k is meaningful where dead[k]. The
        chosen codes' idle counters are reset. Same result on every rank.
        """
        dead = self.dead()
        if not bool(dead.any()):
            return None
        rows, ok = sample_rows(x, mask, self.codebook_size)
        if not bool(ok):  # rank 0 has no active row this step: try again next step
            return None
        self.idle.masked_fill_(dead, 0)
        return dead, rows

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, after={self.after}"
