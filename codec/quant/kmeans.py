"""Vectorised Lloyd / k-means: codebook initialisation from a batch (STE and EMA kinds) and the
post-training refit (``codec.quant.refit``)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from codec.quant.search import nearest


@torch.no_grad()
def lloyd_split(x: Tensor, codebook: Tensor, search: Callable[[Tensor, Tensor], Tensor] = nearest,
                iters: int = 40, min_fraction: float = 0.1, settle: int = 5,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm on rows x float [N, d] from ``codebook`` float [K, d];
    ``search(x, book)`` -> int64 [N] assigns rows. A cluster that becomes empty keeps its
    centroid. With ``min_fraction`` > 0 (the default, 0.1), a codeword holding fewer than that fraction of the
    average cluster's rows is moved next to one of the most populated clusters (an LBG-style
    split, jittered by 1% of the data's spread), except in the last ``settle`` iterations.
    Returns (codebook float32 [K, d], its final counts int64 [K] over x)."""
    x = x.detach().float()
    book = codebook.detach().float().clone()
    k = book.shape[0]
    min_count = min_fraction * x.shape[0] / k
    scale = None
    for it in range(iters):
        codes = search(x, book)
        counts = torch.bincount(codes, minlength=k)
        sums = torch.zeros_like(book).index_add_(0, codes, x)
        book = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1)[:, None].to(x.dtype), book)
        small = (counts < min_count).nonzero()[:, 0]
        if len(small) and it < iters - settle:
            scale = x.std(dim=0) if scale is None else scale
            big = counts.topk(len(small)).indices
            noise = torch.randn(len(small), book.shape[1], generator=generator, device=book.device)
            book[small] = book[big] + 0.01 * noise * scale
    return book, torch.bincount(search(x, book), minlength=k)


@torch.no_grad()
def kmeans(samples: Tensor, num_clusters: int, iters: int = 50) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm on ``samples``.

    samples: float [N, d] (N >= 1) -> (centroids float32 [num_clusters, d], counts float32
    [num_clusters], the number of samples assigned to each final centroid).
    Centroids start at random samples (with replacement when N < num_clusters); a cluster that
    becomes empty keeps its previous centroid rather than collapsing to 0.
    """
    x = samples.detach().float()
    n = x.shape[0]
    if n >= num_clusters:
        start = torch.randperm(n, device=x.device)[:num_clusters]
    else:
        start = torch.randint(0, n, (num_clusters,), device=x.device)
    centroids, counts = lloyd_split(x, x[start], nearest, iters, min_fraction=0.0)
    return centroids, counts.to(x.dtype)
