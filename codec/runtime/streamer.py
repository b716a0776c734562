"""One object for a codec's inference: a snapshot of its weights in one precision, one encode
stream and one decode stream of it, and the offline path in the same precision.

    streamer = model.streamer(precision="fp32", backend="native")   # or Streamer(model, ...)
    with streamer:                                 # fresh streams in, state dropped out
        codes = streamer.encode(chunk)             # audio [B, 1, L] -> codes of completed frames
        codes = streamer.flush()                   # the last partial frame, zero-padded
        audio = streamer.decode(codes)             # codes [B, n, F] -> the final samples
        tail = streamer.flush_decoder()            # what a look-ahead synthesis held back

Made once, it prepares everything (``Snapshot``: the copied weights, packed, int8-quantized or
float64 per precision, the stack's tables; ``prepare_engines``: the native frame engine), and
streams many signals (``reset()`` or a ``with`` block between them). A streamer is a snapshot:
weights changed after it was made (a training step, ``load_state_dict``) are not seen; make a
new one. Concatenated, the streamed results equal the offline ones (``encode_offline`` /
``decode_offline``): codes bit for bit in the "exact" precision, up to near-ties in "fp32" and
"int8"; audio within float rounding.

Backends: "native" (default) runs batch-1 chunks of up to ``ENGINE_MAX_FRAMES`` frames in the
C frame engine wherever it applies (``prepare_engines``) and everything else in the PyTorch
layers; "torch" always runs the PyTorch layers. Both give the same results up to float
summation order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from codec.nn.streaming import set_streaming
from codec.runtime import batch
from codec.runtime.native.engine import FrameEngine
from codec.runtime.snapshot import Snapshot, twin
from codec.runtime.stream import PARTS, StreamRunner, prepare_engines

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's from Python 3.11 on (torch requires typing_extensions)

BACKENDS = ("native", "torch")


class Streamer:
    """Streams of ``codec`` (a ``codec.model.Codec``) in ``precision`` ("fp32", "int8" or
    "exact": ``codec.runtime.snapshot``) on ``backend`` ("native" or "torch"); see the module
    docstring. ``model``: the codec it was made from (its configuration: rates, stages,
    fingerprint; the weights it runs are the snapshot's)."""

    def __init__(self, codec: nn.Module, precision: str = "fp32", backend: str = "native") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.model = codec
        self.backend = backend
        self.snapshot = Snapshot(codec, precision)
        self.precision = self.snapshot.precision
        self.hop_length = self.snapshot.hop_length
        #: the streaming networks: the snapshot's, sharing its weights, with their own state
        self.nets = {part: twin(getattr(self.snapshot, part)) for part in PARTS}
        engines = prepare_engines(self.snapshot) if backend == "native" else dict.fromkeys(PARTS)
        self.runner = StreamRunner(self.nets, engines)
        self.reset()

    # ----- the streams ------------------------------------------------------------------------
    def reset(self) -> None:
        """Start both streams afresh: every layer's and engine's history dropped, nothing pending."""
        for net in self.nets.values():
            set_streaming(net, True)
        self._samples = 0  # samples the encode stream has taken
        self._batch = 1
        self.runner.start()

    def __enter__(self) -> Self:
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    @torch.no_grad()
    def encode(self, chunk: Tensor, n_q: int | None = None) -> Tensor:
        """The next chunk of the encode stream, audio float [B, 1, L] (any L) -> codes int64
        [B, n_q, frames it completed] ([B, n_q, 0] if none)."""
        batch.check_tensor(chunk, "chunk", "float audio [B, 1, L]")
        if chunk.dim() != 3 or chunk.shape[1] != 1:
            raise ValueError(f"expected audio of shape [B, 1, L], got {tuple(chunk.shape)}")
        n = self.snapshot.check_n_q(n_q)
        self._samples += chunk.shape[-1]
        self._batch = chunk.shape[0]
        hop = self.hop_length
        frames = self._samples // hop - (self._samples - chunk.shape[-1]) // hop
        engine = self.runner.route("encoder", chunk.shape[0], frames)
        if engine is not None:
            return engine.encode(chunk, n)
        z = self.nets["encoder"](chunk.to(self.snapshot.encode_dtype))
        if z.shape[-1] == 0:
            return torch.zeros(chunk.shape[0], n, 0, dtype=torch.long, device=chunk.device)
        return self.snapshot.tables.encode(z, n)

    @torch.no_grad()
    def flush(self, n_q: int | None = None) -> Tensor:
        """End of the encode stream's audio: the pending samples zero-padded to a whole frame
        -> its codes int64 [B, n_q, 1], or [B, n_q, 0] when nothing is pending."""
        pending = (-self._samples) % self.hop_length
        device = next(self.nets["encoder"].parameters()).device
        if pending == 0:
            return torch.zeros(self._batch, self.snapshot.check_n_q(n_q), 0, dtype=torch.long, device=device)
        return self.encode(torch.zeros(self._batch, 1, pending, device=device), n_q)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """The next frames of the decode stream, codes int64 [B, n, F] (n <= num_stages, any
        grouping, one frame at a time included) -> audio float [B, 1, <= F hop]: the samples
        that are final (a synthesis with a look-ahead holds the rest until ``flush_decoder``).
        IndexError for a code outside its codebook (native engine: the stream stays intact)."""
        batch.check_tensor(codes, "codes", "int64 codes [B, n, F]")
        if codes.dim() != 3:
            raise ValueError(f"expected codes of shape [B, n, F], got {tuple(codes.shape)}")
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 1, 0, device=codes.device)
        self.snapshot.check_n_q(codes.shape[1])
        self._batch = codes.shape[0]
        engine = self.runner.route("decoder", codes.shape[0], codes.shape[-1])
        if engine is not None:
            return engine.decode(codes)
        return self.nets["decoder"](self.snapshot.tables.decode(codes))

    @torch.no_grad()
    def flush_decoder(self) -> Tensor:
        """End the decode stream: the decoded samples still held back when the synthesis has a
        look-ahead (``Codec.latency``), float [B, 1, lookahead] ([B, 1, 0] without one);
        concatenated after the stream's audio, it equals the offline decode. A ``decode``
        after it starts a new decode stream."""
        decoder = self.nets["decoder"]
        istft = getattr(decoder, "istft", None)
        self.runner.to_layers("decoder")  # the held-back partial sums may sit in the engine
        tail = istft.flush() if istft is not None else None
        if tail is None:
            tail = torch.zeros(self._batch, 1, 0, device=next(decoder.parameters()).device)
        set_streaming(decoder, True)
        self.runner.restart("decoder")
        return tail

    def engine(self, part: str) -> FrameEngine | None:
        """The native engine prepared for ``part`` ("encoder" / "decoder"), None where the
        PyTorch layers run every chunk (backend "torch", or ``prepare_engines`` found none)."""
        return self.runner.engines[part]

    # ----- offline, in the same precision -----------------------------------------------------
    def encode_offline(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """Audio float [B, 1, T] -> codes int64 [B, n_q, ceil(T / hop)], the whole signal at
        once in this precision (the streams are left as they are)."""
        return self.snapshot.encode(wav, n_q)

    def decode_offline(self, codes: Tensor) -> Tensor:
        """Codes int64 [B, n, F] -> audio float [B, 1, F hop], all frames at once in this
        precision (the streams are left as they are)."""
        return self.snapshot.decode(codes)

    def encode_batch(self, wavs: Sequence[Tensor], n_q: int | None = None) -> list[Tensor]:
        """Several signals offline in one padded batch, as ``Codec.encode_batch`` in this
        precision: float audio [T_i] -> codes int64 [n_q, ceil(T_i / hop)] each, in order
        (bit for bit ``encode_offline`` item by item in "exact")."""
        return batch.encode_batch(self.snapshot.encode, self.hop_length, wavs, n_q)
