"""A model on a live stream: audio blocks in, packets out (``LiveEncoder``), and packets in,
audio out (``LiveDecoder``), each a stream of a streamer (``Codec.streamer``: its precision
the caller's choice), so every frame is coded as soon as its samples are in and decoded as
soon as its packet is, with no history recomputed. The packet format is
``codec.bitstream.live``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from codec.bitstream.live import LiveHeader, LiveWriter
from codec.bitstream.live_reader import End, Frames, LiveReader
from codec.files.coding import check_model, make_header

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's from Python 3.11 on (torch requires typing_extensions)

    from codec.model import Codec
    from codec.runtime.streamer import Streamer


def live_header(model: Codec, num_stages: int, packet_frames: int = 1) -> LiveHeader:
    """The stream header for ``model`` using its first ``num_stages`` stages: the fields a
    ``.rvq`` file's header has for it (``make_header``), in packets of ``packet_frames`` frames."""
    h = make_header(model, num_stages)
    return LiveHeader(h.sample_rate, h.hop_length, h.codebook_sizes, h.fingerprint, packet_frames)


def warm_up(streamer: Streamer, encoder: bool = True, decoder: bool = True) -> None:
    """Run one frame of silence through throw-away streams of the parts asked for, so that the
    first real frame does not pay for PyTorch's first-call set-ups (the weights were prepared
    when the streamer was made); the streams are reset after."""
    with torch.inference_mode(), streamer:
        if encoder:
            streamer.encode(torch.zeros(1, 1, streamer.hop_length))
        if decoder:
            streamer.decode(torch.zeros(1, 1, 1, dtype=torch.long))
            streamer.flush_decoder()


class _ModelStream:
    """A context manager holding fresh streams of ``streamer`` while inside (``model``: the
    codec it was made from)."""

    def __init__(self, streamer: Streamer) -> None:
        self.streamer = streamer
        self.model: Codec = streamer.model

    def __enter__(self) -> Self:
        self.streamer.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        self.streamer.reset()


class LiveEncoder(_ModelStream):
    """Audio in, stream bytes out. Use as a context manager (it holds a model stream)::

        with LiveEncoder(model.streamer(), n_q) as enc:
            send(enc.start())
            for block in blocks:       # float32 [L] at model.sample_rate, any L
                send(enc.push(block))  # the packets the block completed (b"" if none)
            send(enc.finish())         # the last, zero-padded frame and the end packet

    header_every: repeat the header every that many packets (0: never) for late joiners.
    """

    def __init__(self, streamer: Streamer, n_q: int, packet_frames: int = 1, header_every: int = 0) -> None:
        super().__init__(streamer)
        self.n_q = n_q
        self.writer = LiveWriter(live_header(self.model, n_q, packet_frames), header_every)
        self.num_samples = 0  # samples coded so far

    @property
    def header(self) -> LiveHeader:
        """The stream's header (as ``start`` sends it: ``frame`` 0)."""
        return self.writer.header

    def start(self) -> bytes:
        """The header packet (send it before any audio: the decoder checks the model with it)."""
        return self.writer.start()

    def push(self, block: np.ndarray) -> bytes:
        """The next samples, float32 [L] -> bytes of the packets of the frames they complete.
        An exception raised part-way (a signal's) leaves the model's stream and ``num_samples``
        apart, and ``finish`` then fails: stop between pushes (``codec stream-encode`` does)."""
        if len(block) == 0:
            return b""
        with torch.inference_mode():
            codes = self.streamer.encode(torch.from_numpy(np.ascontiguousarray(block, np.float32))[None, None], self.n_q)
        self.num_samples += len(block)
        return self.writer.write(codes[0].numpy())

    def finish(self) -> bytes:
        """End of the audio: the pending partial frame (zero-padded) and the end packet."""
        with torch.inference_mode():
            codes = self.streamer.flush(self.n_q)
        return self.writer.end(codes[0].numpy(), self.num_samples)


class LiveDecoder(_ModelStream):
    """Stream bytes in, audio out. Use as a context manager (it holds a model stream)::

        with LiveDecoder(model.streamer()) as dec:
            for data in chunks:         # bytes as they arrive, any amount
                play(dec.push(data))    # float32 [L]: the samples that became final
            play(dec.finish())          # what the synthesis still held back
            dec.close()                 # BitstreamError if the stream was cut off

    The output ends exactly at the stream's sample count (from ``joined_at`` on when joined).
    join: the input may start anywhere in a stream (``LiveReader``).
    """

    def __init__(self, streamer: Streamer, join: bool = False) -> None:
        super().__init__(streamer)
        self.reader = LiveReader(join=join)
        self.samples_out = 0
        self._limit: int | None = None  # samples to output in all, once the end packet told
        self._fingerprint = self.model.fingerprint()

    @property
    def header(self) -> LiveHeader | None:
        """The stream's header once read (None before)."""
        return self.reader.header

    def push(self, data: bytes) -> np.ndarray:
        """The next bytes of the stream -> float32 [L] samples decoded from the packets they
        complete (consecutive frames decoded in one call)."""
        out, run = [], []
        for event in self.reader.feed(data):
            if isinstance(event, LiveHeader):
                check_model(event, self.model, self._fingerprint, source="the stream",
                            hint="; pass the encoder's --model")
            elif isinstance(event, Frames):
                run.append(event.codes)
            elif isinstance(event, End):
                run.append(event.codes)
                out.append(self._decode(run))
                run = []
                self._limit = event.num_samples - self.reader.joined_at * self.model.hop_length
                out.append(self._flush())
        if run:
            out.append(self._decode(run))
        return self._trim(out)

    def finish(self) -> np.ndarray:
        """At end of input: the samples the synthesis look-ahead still holds (float32 [L]; empty
        when the end packet already released them). A damaged stream raises its error instead."""
        self.reader.raise_pending()
        if self.reader.ended or self.reader.header is None:
            return np.zeros(0, np.float32)
        return self._trim([self._flush()])

    def close(self) -> None:
        """Raise BitstreamError unless the input held a whole stream (``LiveReader.close``)."""
        self.reader.close()

    def _decode(self, runs: list[np.ndarray]) -> np.ndarray:
        codes = np.concatenate(runs, axis=1)
        if codes.shape[1] == 0:
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            return self.streamer.decode(torch.from_numpy(codes)[None])[0, 0].numpy()

    def _flush(self) -> np.ndarray:
        with torch.inference_mode():
            return self.streamer.flush_decoder()[0, 0].numpy()

    def _trim(self, parts: list[np.ndarray]) -> np.ndarray:
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if self._limit is not None:
            audio = audio[: max(0, self._limit - self.samples_out)]
        self.samples_out += len(audio)
        return audio.astype(np.float32, copy=False)
