"""torch.distributed helpers that are no-ops in a single process.

Codebook state that is not a Parameter (EMA statistics, restart choices, replaced codes) is
not synchronised by DDP, so the quantizers call these to keep every rank identical.
"""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor
from torch.autograd.graph import increment_version


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over all ranks in place and return it (unchanged in one process).

    Collectives write the storage behind autograd's back, so the tensor's version counter is
    bumped by hand: caches keyed on it (codebook norms, the residual stack's tables) see the
    change like any other in-place update. Pass the Parameter or buffer itself, not ``.data``
    (a ``.data`` view has a version counter of its own)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        increment_version(t)
    return t


def broadcast_from_rank0(t: Tensor) -> Tensor:
    """Overwrite ``t`` in place with rank 0's value and return it (unchanged in one process);
    bumps the version counter like ``all_reduce_sum``."""
    if is_distributed():
        dist.broadcast(t, src=0)
        increment_version(t)
    return t


def rank() -> int:
    """This process's rank (0 in one process)."""
    return dist.get_rank() if is_distributed() else 0
