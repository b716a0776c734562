"""The one interface every quantizer kind implements (see docs/quantizers.md).

A quantizer works on flattened latents ``x`` of shape ``[N, d]`` (N vectors of dimension d).
The residual stack (``residual.py``) does the flattening, the per-stage projections and the
gradient wiring between stages; a quantizer only knows its own codebook.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from codec.quant.search import nearest, nearest_cosine


@dataclass
class QuantizerOutput:
    """What a quantizer's training-path ``forward`` returns.

    quantized: [N, d] float, the output value with the kind's own gradient rule
        (in eval mode: exactly ``codeword``).
    codes: [N] int64 indices in [0, codebook_size).
    codeword: [N, d] float, the point this stage contributes to the residual chain: the exact
        codebook lookup (for SF-DiVeQ in training, the dithered point). It keeps the autograd
        graph to the codebook parameters (if any), so the residual stack can route gradients.
    loss: scalar float, the kind's auxiliary loss (0 for DiVeQ / SF-DiVeQ), averaged over the
        active rows.
    passthrough: True while the kind is the identity (SF-DiVeQ's warm-up): ``quantized`` is
        the input, and ``codeword`` the hard symbol of the current codebook, detached, which
        the residual stack still subtracts so that later stages see their own remainders.
    """

    quantized: Tensor
    codes: Tensor
    codeword: Tensor
    loss: Tensor
    passthrough: bool = False


class Quantizer(nn.Module):
    """Base class: a codebook of ``codebook_size`` symbols in ``dim`` dimensions.

    Subclasses implement ``codebook()`` (the effective [K, d] codewords used for search and
    lookup) and ``forward`` (the training path). ``encode`` / ``decode`` are shared and pure:
    no noise, no state change, so ``decode(encode(x))`` equals the eval-mode forward exactly.
    """

    #: The name recipes use for this kind (set by ``register_kind``).
    kind: str = ""
    #: True for kinds whose codeword should keep its Parameter gradient when the residual stack
    #: builds one global DiVeQ over the total (docs/quantizers.md section 7).
    differentiable_codeword: bool = False
    #: True for kinds whose gradient is the rotation trick's: the residual stack (without a
    #: DiVeQ-family stage) then outputs the total rotated onto from z (docs/quantizers.md section 12).
    rotates: bool = False
    #: Noise std of the kind's directional steps; the stack's global DiVeQ step over the total
    #: uses the largest of its stages' (0: noise-free).
    sigma: float = 0.0
    #: Names of buffers only training reads (running statistics, restart counters):
    #: ``Codec.save_pretrained(training_state=False)`` leaves them out.
    TRAINING_STATE: tuple[str, ...] = ()

    def __init__(self, dim: int, codebook_size: int, cosine_search: bool = False) -> None:
        super().__init__()
        if dim < 1 or codebook_size < 2:
            raise ValueError(f"need dim >= 1 and codebook_size >= 2, got {dim}, {codebook_size}")
        self.dim = dim
        self.codebook_size = codebook_size
        #: Search with L2-normalised vectors (max cosine, as DAC), output the raw codeword.
        self.cosine_search = cosine_search

    def codebook(self) -> Tensor:
        """The effective codewords, float [codebook_size, dim]."""
        raise NotImplementedError

    def search(self, x: Tensor, book: Tensor) -> Tensor:
        """The code of every row: x float [N, dim], book float [K, dim] -> int64 [N].

        argmin_k ||x - e_k||^2, or with ``cosine_search`` argmin_k ||x^ - e^_k||^2 with
        x^ = x / ||x||, e^_k = e_k / ||e_k||, i.e. the largest cosine (DAC's factorised codes:
        the search is normalised, the output stays the raw codeword e_k), computed as
        argmax_k x . e^_k (``nearest_cosine``). fp64 rows take the exact paths.
        """
        if self.cosine_search:
            return nearest_cosine(x, l2_normalize(book.detach()))
        return nearest(x, book)

    @torch.no_grad()
    def encode(self, x: Tensor, book: Tensor | None = None) -> Tensor:
        """Hard nearest-neighbour indices: x float [N, dim] -> int64 [N]. Deterministic.

        ``book``: ``codebook()`` computed beforehand (the residual stack caches it per state),
        so kinds that build their codebook (SimVQ, SF-DiVeQ) do not rebuild it per call."""
        return self.search(x, self.codebook() if book is None else book)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Look codes up: int64 [N] -> float [N, dim]."""
        return self.codebook()[codes]

    def lookup(self, codes: Tensor) -> Tensor:
        """Like ``decode`` but keeps the autograd graph to the codebook: int64 [N] -> [N, dim]."""
        return self.codebook()[codes]

    def stored_codebook(self) -> Tensor | None:
        """The codebook tensor when ``codebook()`` is a stored Parameter or buffer searched in
        Euclidean distance (so it can be overwritten in place), else None (SimVQ and SF-DiVeQ
        compute their codewords; a cosine search has other cluster means)."""
        if self.cosine_search:
            return None
        book = self.codebook()
        stored = [*self.parameters(recurse=False), *self.buffers(recurse=False)]
        return book if any(book is t for t in stored) else None

    @torch.no_grad()
    def set_codebook(self, book: Tensor, counts: Tensor) -> None:
        """Overwrite the stored codewords with ``book`` float [K, dim]; ``counts`` [K] are the
        rows each codeword was fitted on (kinds with running statistics restart them from
        it). A kind that initialises itself on its first batch (an ``initialized`` flag) counts
        as initialised from here on. ValueError when the codebook is not stored
        (``stored_codebook`` is None)."""
        target = self.stored_codebook()
        if target is None:
            raise ValueError(f"{type(self).__name__}: the codebook is computed, not stored")
        target.copy_(book)
        flag = getattr(self, "initialized", None)
        if isinstance(flag, Tensor):
            flag.fill_(True)

    def dead_count(self) -> int | None:
        """Codes the kind itself counts as dead (EMA: running cluster size below its
        threshold), or None for kinds without such a statistic."""
        return None

    def eval_output(self, x: Tensor) -> QuantizerOutput:
        """The inference contract: index and exact lookup, no noise, no state change."""
        with torch.no_grad():
            book = self.codebook()
            codes = self.search(x, book)
            c = book[codes]
        return QuantizerOutput(quantized=c, codes=codes, codeword=c, loss=x.new_zeros(()))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Training path. x: float [N, dim]; mask: bool [N], rows that count (None = all).

        Rows outside ``mask`` are still quantized (so shapes stay fixed) but add nothing to the
        loss, to statistics or to codebook updates. In eval mode this is ``eval_output(x)``.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        extra = ", cosine_search=True" if self.cosine_search else ""
        return f"dim={self.dim}, codebook_size={self.codebook_size}{extra}"


#: Recipe name -> class, filled by ``register_kind`` when ``codec.quant.kinds`` imports the
#: kinds' modules (one file per kind).
QUANTIZER_KINDS: dict[str, type[Quantizer]] = {}


def register_kind(name: str):
    """Class decorator: make a Quantizer subclass the kind ``name`` of the recipes."""

    def register(cls: type[Quantizer]) -> type[Quantizer]:
        if name in QUANTIZER_KINDS and QUANTIZER_KINDS[name] is not cls:
            raise ValueError(f"quantizer kind {name!r} is registered twice")
        cls.kind = name
        QUANTIZER_KINDS[name] = cls
        return cls

    return register


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows of x [N, d] scaled to unit L2 norm (a zero row stays zero), in x's dtype."""
    norm = x.pow(2).sum(dim=-1, keepdim=True).sqrt()
    return x / norm.clamp_min(eps)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the rows of ``values`` [N, ...] selected by bool ``mask`` [N] (all if None).

    Returns a scalar; 0 (with a graph) when no row is selected.
    """
    if values.dim() > 1:
        values = values.flatten(1).mean(dim=1)
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)
