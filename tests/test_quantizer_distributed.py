"""Property 18 (docs/quantizers.md s. 9): under torch.distributed every rank stays bitwise identical.

Two gloo processes train each kind on DIFFERENT data per rank; afterwards the codebooks, EMA
buffers, SimVQ projections and DiVeQ usage counters must be equal bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import average_gradients, rank_differences, rank_states, save_rank_state

from codec.quant import build_quantizer

WORLD = 2
DIM, K = 8, 32
# Options that exercise every synchronised path within a few steps: EMA k-means init and
# restarts, STE k-means init, DiVeQ replacement, SF-DiVeQ end of warm-up.
KINDS = {
    "ema": {"kmeans_iters": 5},
    "ste": {"init": "kmeans"},
    "simvq": {},
    "diveq": {"replace_every": 2, "replace_min_usage": 0.6},
    "sf_diveq": {"warmup_steps": 2, "warmup_max_vectors": 128},
}
STEPS = 5


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        for kind, options in KINDS.items():
            torch.manual_seed(0)  # identical construction on every rank (as DDP requires)
            q = build_quantizer(kind, DIM, K, **options).train()
            opt = torch.optim.Adam(q.parameters(), lr=1e-2) if list(q.parameters()) else None
            data = torch.Generator().manual_seed(1000 + rank)  # different data per rank
            torch.manual_seed(100 + rank)  # and different local randomness (noise, lambda)
            for _ in range(STEPS):
                x = (torch.randn(64, DIM, generator=data) * (1 + rank)).requires_grad_(True)
                mask = torch.rand(64, generator=data) < 0.8
                out = q(x, mask)
                (out.quantized.square().mean() + out.loss).backward()
                if opt is not None:
                    average_gradients(q)
                    opt.step()
                    opt.zero_grad()
            save_rank_state(q, out_dir, kind, rank)
        # Both ranks leave together: tearing gloo down while the peer still sends can abort.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ranks_stay_bitwise_identical(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for kind in KINDS:
        assert rank_differences(rank_states(tmp_path, kind, WORLD)) == [], kind
