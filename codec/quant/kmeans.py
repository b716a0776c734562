"""Vectorised k-means used to initialise codebooks from a batch (STE and EMA kinds)."""
from __future__ import annotations

import torch
from torch import Tensor

from codec.quant.search import nearest


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
    centroids = x[start].clone()
    for _ in range(iters):
        codes = nearest(x, centroids)
        counts = torch.bincount(codes, minlength=num_clusters).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, codes, x)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp_min(1.0)[:, None], centroids)
    codes = nearest(x, centroids)
    counts = torch.bincount(codes, minlength=num_clusters).to(x.dtype)
    return centroids, counts
