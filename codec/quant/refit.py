"""Post-training refit of residual codebooks: Lloyd iterations with cluster splitting.

Training with quantizer dropout leaves late stages with codewords that sit on rare outlier
residuals (a dead-code restart copies a random residual, and later stages see fewer frames):
on held-out speech the shipped model's stages 10-12 used only 79, 63 and 49% of their codes.
This refit keeps the encoder and decoder and re-estimates the chosen stages' codebooks, in
stage order, on the residuals of real audio:

- Lloyd's algorithm (assign with the stage's own search, move each codeword to the mean of its
  rows), starting from the trained codebook, so codes keep their meaning for the decoder;
- a codeword that holds fewer than ``min_fraction`` of the average cluster's rows is moved next
  to the centroid of one of the most populated clusters (a split, as in LBG): codewords go where
  the data is dense instead of staying on outliers;
- the last ``settle`` iterations split nothing, so the result is a Lloyd fixed point
  (``codec.quant.kmeans.lloyd_split``, the loop the k-means initialisation runs too).

Every stage after a refitted one sees the new residuals. Only stored Euclidean codebooks
(STE, EMA, DiVeQ) can be refitted: SimVQ's and SF-DiVeQ's codewords are computed from other
parameters, and a cosine search has other cluster means.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from codec.quant.kmeans import lloyd_split
from codec.quant.residual import ResidualQuantizer, _apply

__all__ = ["StageRefit", "fit_codebooks", "lloyd_split", "refit_codebooks"]


@dataclass(frozen=True)
class StageRefit:
    """What refitting one stage did on the fitting rows (squared errors are per row, summed
    over the stage's codebook dimensions)."""

    stage: int  # 1-based
    used_before: int  # distinct codes the rows used
    used_after: int
    error_before: float  # mean ||p - c||^2 in the stage's own (projected) space
    error_after: float


@torch.no_grad()
def refit_codebooks(quantizer: ResidualQuantizer, latents: Tensor, stages: Iterable[int], iters: int = 40,
                    min_fraction: float = 0.1, seed: int = 0) -> list[StageRefit]:
    """Refit the 1-based ``stages`` of ``quantizer`` in place on latents float [N, latent_dim]
    (encoder outputs as rows), in stage order; returns one StageRefit per stage of the stack
    (unlisted stages report their unchanged usage). Codebooks are written with
    ``Quantizer.set_codebook`` (EMA stages restart their statistics from the new clusters).
    Raises ValueError for a stage number out of range or a stage whose codebook is not stored."""
    wanted = set(stages)
    n = quantizer.num_stages
    bad = sorted(s for s in wanted if not 1 <= s <= n)
    if bad:
        raise ValueError(f"stage {bad[0]} out of range 1..{n}")
    for s in sorted(wanted):
        q = quantizer.stages[s - 1].quantizer
        if q.stored_codebook() is None:
            raise ValueError(f"stage {s} ({type(q).__name__}): only stored Euclidean codebooks "
                             "(STE, EMA, DiVeQ without cosine search) can be refitted")
    return _lloyd_stages(quantizer, latents, wanted, iters, min_fraction, seed, _trained_start)


@torch.no_grad()
def fit_codebooks(quantizer: ResidualQuantizer, latents: Tensor, iters: int = 40, min_fraction: float = 0.1,
                  seed: int = 0) -> list[StageRefit]:
    """Fit every stored codebook of ``quantizer`` afresh on latents float [N, latent_dim], stage
    by stage on the residuals the fitted stages before it leave: k-means from random rows, with
    the refit's splits. A training run does this when its quantizer warm-up ends
    (``train.quantizer_fit_batches``), so the stack starts from many batches' latents instead of
    one batch's. Stages whose codebooks are computed (SimVQ, SF-DiVeQ) or cosine-searched keep
    their own initialisation. Returns one StageRefit per stage."""
    stored = {i for i, st in enumerate(quantizer.stages, start=1) if st.quantizer.stored_codebook() is not None}
    return _lloyd_stages(quantizer, latents, stored, iters, min_fraction, seed, _random_rows)


def _trained_start(rows: Tensor, book: Tensor, gen: torch.Generator) -> Tensor:
    """A refit starts from the trained codebook, so codes keep their meaning for the decoder."""
    return book


def _random_rows(rows: Tensor, book: Tensor, gen: torch.Generator) -> Tensor:
    """A fresh fit starts from K random rows [K, d] of the stage's residuals [N, d]."""
    return rows[torch.randint(0, rows.shape[0], (book.shape[0],), generator=gen, device=rows.device)]


def _lloyd_stages(quantizer: ResidualQuantizer, latents: Tensor, wanted: set[int], iters: int,
                  min_fraction: float, seed: int,
                  start: Callable[[Tensor, Tensor, torch.Generator], Tensor]) -> list[StageRefit]:
    """Lloyd with splits on the ``wanted`` stages in stage order, each from ``start(rows,
    codebook, generator)``; the later stages see the new residuals."""
    gen = torch.Generator(device=latents.device).manual_seed(seed)
    r = latents.detach().float()
    report = []
    for i, stage in enumerate(quantizer.stages, start=1):
        q = stage.quantizer
        p = _apply(stage.in_proj, r)
        book = q.codebook().detach()
        codes = q.search(p, book)
        used0, err0 = int(codes.unique().numel()), float((p - book[codes]).pow(2).sum(1).mean())
        if i in wanted:
            q.set_codebook(*lloyd_split(p, start(p, book, gen), q.search, iters, min_fraction, generator=gen))
            book = q.codebook().detach()
            codes = q.search(p, book)
        err1 = float((p - book[codes]).pow(2).sum(1).mean())
        report.append(StageRefit(i, used0, int(codes.unique().numel()), err0, err1))
        r = r - stage.decode(codes)
    return report
