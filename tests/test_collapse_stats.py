"""The collapse measures of codec/quant/stats.py (effective rank, norm spread) on sets whose
answer is known."""
from __future__ import annotations

import math

import pytest
import torch

from codec.quant.stats import effective_rank, norm_spread


def test_effective_rank_of_known_sets() -> None:
    """Isotropic vectors have the effective rank of their dimension (within sampling noise),
    vectors on one line have 1, on k orthogonal directions of equal spread k; scaling and a
    shift change nothing; fewer than two vectors or all equal give 0."""
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(20000, 16, generator=g)
    assert effective_rank(iso) == pytest.approx(16, rel=0.02)
    line = torch.randn(500, 1, generator=g) * torch.randn(1, 16, generator=g)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-5)  # float32 rounding leaves tiny singular values
    k = 5
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g))[0][:, :k]  # k orthonormal columns
    # equal singular values on k directions: +-1 along each basis vector in turn
    signs = torch.tensor([1.0, -1.0]).repeat(k * 50)
    coeffs = torch.zeros(len(signs), k)
    coeffs[torch.arange(len(signs)), torch.arange(len(signs)) // 2 % k] = signs
    spread = coeffs @ basis.T
    assert effective_rank(spread) == pytest.approx(k, rel=1e-6)
    assert effective_rank(3.0 * spread + 7.0) == pytest.approx(k, rel=1e-6)
    # two directions, one with 3x the spread: exp(entropy of (3/4, 1/4))
    two = torch.cat([3 * torch.tensor([[1.0, 0], [-1, 0]]), torch.tensor([[0, 1.0], [0, -1]])])
    assert effective_rank(two) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-9)
    assert effective_rank(torch.ones(1, 8)) == 0.0 and effective_rank(torch.ones(10, 8)) == 0.0


def test_norm_spread_of_known_codebooks() -> None:
    """Codewords of one length have no spread; lengths 1 and 3 in equal numbers: std 1 over
    mean 2; a rotation of the codebook changes nothing."""
    g = torch.Generator().manual_seed(1)
    unit = torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=-1)
    assert norm_spread(5 * unit) == pytest.approx(0.0, abs=1e-6)  # float32 unit vectors
    lengths = torch.tensor([1.0, 3.0]).repeat(32).unsqueeze(1)
    book = lengths * unit
    assert norm_spread(book) == pytest.approx(0.5, rel=1e-6)
    q = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    assert norm_spread(book @ q) == pytest.approx(0.5, rel=1e-6)
    assert norm_spread(torch.zeros(4, 8)) == 0.0
