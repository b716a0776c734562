"""torch.distributed helpers that are no-ops in a single process.

Codebook state that is not a Parameter (EMA statistics, restart choices, replaced codes) is
not synchronised by DDP, so the quantizers call these to keep every rank identical.
"""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over all ranks in place and return it (unchanged in one process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_from_rank0(t: Tensor) -> Tensor:
    """Overwrite ``t`` in place with rank 0's value and return it (unchanged in one process)."""
    if is_distributed():
        dist.broadcast(t, src=0)
    return t


def rank() -> int:
    """This process's rank (0 in one process)."""
    return dist.get_rank() if is_distributed() else 0
