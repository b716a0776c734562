"""The residual stack's inference tables: what encoding and decoding read, computed once.

``StackTables(quantizer, dtype)`` reads a ``ResidualQuantizer``'s current weights and keeps,
per stage, the search codebook, its search terms in ``dtype`` (transposed codewords and
squared norms, or the unit rows for a cosine search), the input projection, and the table of
every codeword projected back to the latent space; and all the tables stacked, so that a
decode of a few frames (a streamed chunk) is one gather. The live quantizer builds one per
``encode`` / ``decode`` call; a streamer (``codec.runtime``) builds one when it is made and
keeps it: a snapshot, which never sees later weight changes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from codec.quant.base import l2_normalize
from codec.quant.search import codebook_norms, nearest, nearest_cosine

#: Decodes of at most this many frames (a streamed chunk) gather from the stacked tables.
GATHER_ROWS = 4


class _Stage:
    """One stage's tables (see the module docstring); ``dtype``: the search's precision."""

    def __init__(self, stage: nn.Module, dtype: torch.dtype) -> None:
        book, self.table = stage.tables()  # float32 [K, d], [K, D]
        self.cosine = bool(stage.quantizer.cosine_search)
        self.book = l2_normalize(book) if self.cosine else book
        self.terms = codebook_norms(self.book, dtype)
        proj = stage.in_proj if isinstance(stage.in_proj, nn.Linear) else None
        # cast once: the same values ``_apply`` casts per call
        self.in_w = proj.weight.detach().to(dtype) if proj is not None else None
        self.in_b = proj.bias.detach().to(dtype) if proj is not None else None

    def search(self, r: Tensor) -> Tensor:
        """Residual rows float [N, D] (the search dtype) -> codes int64 [N]."""
        x = r if self.in_w is None else nn.functional.linear(r, self.in_w, self.in_b)
        return nearest_cosine(x, self.book, self.terms) if self.cosine else nearest(x, self.book, self.terms)


class StackTables:
    """The tables of ``quantizer`` (a ResidualQuantizer) at its current weights; ``dtype``:
    the search's precision (float32, or float64 for the exact encode)."""

    def __init__(self, quantizer: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.latent_dim = quantizer.latent_dim
        self.num_stages = quantizer.num_stages
        with torch.no_grad():
            self.stages = [_Stage(stage, dtype) for stage in quantizer.stages]
            tables = [s.table for s in self.stages]
            self.stacked = torch.zeros(len(tables), max(t.shape[0] for t in tables), self.latent_dim,
                                       device=tables[0].device)  # rows past a stage's K: never indexed
            for i, t in enumerate(tables):
                self.stacked[i, : t.shape[0]] = t
        self._index = torch.arange(len(tables), device=self.stacked.device)[None, :]

    @torch.no_grad()
    def encode(self, z: Tensor, n: int) -> Tensor:
        """Latents float [B, D, F] (float32, or float64: the exact chain) -> codes int64
        [B, n, F]: stage i searches what stages 1..i-1 left, r_{i+1} = r_i - table_i[code]."""
        b, d, f = z.shape
        r = z.transpose(1, 2).reshape(b * f, d).detach()
        codes = []
        for stage in self.stages[:n]:
            idx = stage.search(r)
            r = r - stage.table[idx].to(r.dtype)
            codes.append(idx)
        return torch.stack(codes, dim=1).reshape(b, f, n).transpose(1, 2)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes int64 [B, n, F] -> latents float32 [B, D, F], the sum of the stages' rows."""
        b, n, f = codes.shape
        rows = codes.transpose(1, 2).reshape(b * f, n)
        if b * f <= GATHER_ROWS:
            # A streamed frame: one gather from the stacked tables instead of n lookups and adds.
            total = self.stacked[self._index[:, :n], rows].sum(dim=1)  # [b f, n, D] -> [b f, D]
        else:
            total = torch.zeros(b * f, self.latent_dim, device=codes.device)
            for i, stage in enumerate(self.stages[:n]):
                total = total + stage.table[rows[:, i]]
        return total.reshape(b, f, -1).transpose(1, 2)
