"""VQ with the rotation trick (Fifty et al., arXiv 2410.06424; docs/quantizers.md section 12).

The forward value is the codeword, as with the straight-through estimator, but the gradient
reaches the encoder through a fixed rotation and rescaling that carries the input e onto the
codeword q: y = sg(lambda R) e with lambda = ||q|| / ||e|| and R the rotation in the plane of
e and q that turns e's direction into q's. The encoder's gradient is then (lambda R)^T g: its
angle to e is the angle of g to q, so inputs that fall in one Voronoi cell get different
gradients, where STE gives them all g. Codebook and commitment losses as VQ-VAE's (STE's).
"""
from __future__ import annotations

from torch import Tensor

from codec.quant.base import QuantizerOutput, register_kind
from codec.quant.directional import rotate_onto
from codec.quant.kinds.ste import STEQuantizer


@register_kind("rotation")
class RotationQuantizer(STEQuantizer):
    """STE's codebook, search and losses with the rotation trick's gradient (``rotate_onto``).

    In a residual stack the trick applies to the total: the stack's output is
    ``rotate_onto(z, sum of codewords)`` (docs/quantizers.md section 7), since each stage's own
    output value is replaced by the stack's. Options as STE's (beta, init, cosine_search,
    restart_after)."""

    #: The residual stack builds its output with ``rotate_onto`` over the total.
    rotates = True

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """x: float [N, d]; mask: bool [N] or None -> QuantizerOutput whose ``quantized`` is
        ``rotate_onto(x, codeword)`` (STE's in everything else)."""
        out = super().forward(x, mask)
        if not self.training:
            return out
        quantized = rotate_onto(x, out.codeword.detach())
        return QuantizerOutput(quantized=quantized, codes=out.codes, codeword=out.codeword, loss=out.loss)
