"""A codec's inference networks in one precision, copied from its weights once.

``Snapshot(codec, precision)`` deep-copies the codec's encoder, decoder and quantizer stack
(eval mode, no gradients, weight-norm products computed once) and prepares what inference
reads, once: per precision,

- "fp32" (default): float32; linear layers with transposed copies for the frame-rate
  matrix-vector products (``codec.nn.frame_linear.FrameLinear``);
- "int8": the ConvNeXt linear layers with int8 weights and bfloat16 activations
  (``Int8Linear``): a streamed frame reads 4x fewer weight bytes in the native engine; codes
  differ from float32's in some late-stage frames (same PESQ);
- "exact": the encoder in float64 and the code search with ties snapped
  (``codec.quant.search.nearest``), so that streamed codes equal offline codes bit for bit
  whatever the chunking (about 1.7x the encode time); the decoder as "fp32";

the convolutions' matmul taps and the stack's tables (``codec.quant.tables.StackTables``) in
the precision's dtype. It is a snapshot: a later change of the codec's weights (a training
step, ``load_state_dict``) is not seen; make a new one. ``encode`` / ``decode`` run it offline;
a ``Streamer`` streams a ``twin`` of its networks.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from codec.nn.conv import CausalConv1d
from codec.nn.frame_linear import prepare_linears
from codec.quant.tables import StackTables
from codec.runtime.batch import check_tensor, pad_to_hop

PRECISIONS = ("fp32", "int8", "exact")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode without gradients, its parametrizations (weight
    norm) replaced by the weights they compute now."""
    net = copy.deepcopy(module).eval()
    for m in list(net.modules()):
        if parametrize.is_parametrized(m):
            # The copy shares its parametrized class with the original, and removing a
            # parametrization deletes the class's property: give the copy a class of its own.
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__,
                               {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
            for name in list(m.parametrizations):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return net.requires_grad_(False)


def prepared(module: nn.Module, dtype: torch.dtype, int8: bool = False) -> nn.Module:
    """``frozen_copy(module)`` with its inference weights prepared for inputs of ``dtype``:
    float64 casts every weight (exactly); float32 replaces its linear layers by prepared ones
    (int8 ones when ``int8``); every causal convolution keeps its matmul taps."""
    net = frozen_copy(module)
    if dtype == torch.float64:
        net.double()
    else:
        prepare_linears(net, int8)
    for m in net.modules():
        if isinstance(m, CausalConv1d):
            m.prepare_taps(dtype)
    return net


def twin(module: nn.Module) -> nn.Module:
    """A second module tree of ``module`` that shares every tensor it holds (parameters,
    buffers, prepared weights), so it keeps streaming state of its own without a second copy
    of the weights."""
    memo: dict[int, object] = {}

    def share(value: object) -> None:
        if isinstance(value, Tensor):
            memo[id(value)] = value
        elif isinstance(value, (list, tuple)):
            for v in value:
                share(v)
        elif isinstance(value, dict):
            for v in value.values():
                share(v)

    for m in module.modules():
        share(vars(m))
    return copy.deepcopy(module, memo)


class Snapshot:
    """The inference networks of ``codec`` (a ``codec.model.Codec``) in ``precision``
    (PRECISIONS; see the module docstring), on the codec's device."""

    def __init__(self, codec: nn.Module, precision: str = "fp32") -> None:
        self.precision = check_precision(precision)
        self.hop_length = int(codec.hop_length)
        #: the encoder's input and search dtype: float64 for "exact", else float32
        self.encode_dtype = torch.float64 if precision == "exact" else torch.float32
        int8 = precision == "int8"
        self.encoder = prepared(codec.encoder, self.encode_dtype, int8)
        self.decoder = prepared(codec.decoder, torch.float32, int8)
        self.quantizer = frozen_copy(codec.quantizer)
        self.tables = StackTables(self.quantizer, self.encode_dtype)

    def check_n_q(self, n_q: int | None) -> int:
        """The number of stages to use: n_q, or all when None; ValueError outside [1, N]."""
        return self.quantizer.check_n_q(n_q)

    @torch.no_grad()
    def encode(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """Audio float [B, 1, T] -> codes int64 [B, n_q, ceil(T / hop)], offline."""
        check_tensor(wav, "wav", "float audio [B, 1, T]")
        z = self.encoder(pad_to_hop(wav, self.hop_length).to(self.encode_dtype))
        return self.tables.encode(z, self.check_n_q(n_q))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes int64 [B, n, F] (n <= num_stages) -> audio float [B, 1, F hop], offline."""
        check_tensor(codes, "codes", "int64 codes [B, n, F]")
        if codes.dim() != 3:
            raise ValueError(f"expected codes of shape [B, n, F], got {tuple(codes.shape)}")
        self.check_n_q(codes.shape[1])
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 1, 0, device=codes.device)
        return self.decoder(self.tables.decode(codes))
