"""A model on a live stream: audio blocks in, packets out (``LiveEncoder``), and packets in,
audio out (``LiveDecoder``), each a stream of the model (``model.streaming()``), so every
frame is coded as soon as its samples are in and decoded as soon as its packet is, with no
history recomputed. The packet format is ``codec.bitstream.live``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from codec.bitstream.errors import BitstreamError
from codec.bitstream.live import LiveHeader, LiveWriter
from codec.bitstream.live_reader import End, Frames, LiveReader


def live_header(model, num_stages: int, packet_frames: int = 1) -> LiveHeader:
    """The stream header for ``model`` using its first ``num_stages`` stages."""
    return LiveHeader(model.sample_rate, model.hop_length, tuple(model.codebook_sizes[:num_stages]),
                      model.fingerprint(), packet_frames)


def check_live_model(header: LiveHeader, model, fingerprint: bytes | None = None) -> None:
    """Raise BitstreamError unless the stream was made by this very model (``fingerprint``: the
    model's, when already computed)."""
    fp = fingerprint if fingerprint is not None else model.fingerprint()
    if header.fingerprint != fp:
        raise BitstreamError(f"the stream was made by another model (fingerprint {header.fingerprint.hex()[:12]}...,"
                             f" this model is {fp.hex()[:12]}...); pass the encoder's --model")
    if (header.sample_rate, header.hop_length) != (model.sample_rate, model.hop_length) or \
            header.codebook_sizes != tuple(model.codebook_sizes[: header.num_stages]):
        raise BitstreamError("the stream header disagrees with the model's rate, hop or codebook sizes")


def warm_up(model, encoder: bool = True, decoder: bool = True) -> None:
    """Run one frame of silence through a throw-away stream of the parts asked for, so that the
    first real frame does not pay for preparing them (the native engine packs its weights on a
    stream's first chunk: ~0.1-0.3 s; prepared engines are kept for later streams)."""
    with torch.inference_mode(), model.streaming():
        if encoder:
            model.encode(torch.zeros(1, 1, model.hop_length))
        if decoder:
            model.decode(torch.zeros(1, 1, 1, dtype=torch.long))
            model.flush_decoder()


class LiveEncoder:
    """Audio in, stream bytes out. Use as a context manager (it holds a model stream)::

        with LiveEncoder(model, n_q) as enc:
            send(enc.start())
            for block in blocks:       # float32 [L] at model.sample_rate, any L
                send(enc.push(block))  # the packets the block completed (b"" if none)
            send(enc.finish())         # the last, zero-padded frame and the end packet

    header_every: repeat the header every that many packets (0: never) for late joiners.
    """

    def __init__(self, model, n_q: int, packet_frames: int = 1, header_every: int = 0) -> None:
        self.model, self.n_q = model, n_q
        self.writer = LiveWriter(live_header(model, n_q, packet_frames), header_every)
        self.num_samples = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LiveEncoder:  # noqa: PYI034
        self._stack.enter_context(self.model.streaming())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def header(self) -> LiveHeader:
        return self.writer.header

    def start(self) -> bytes:
        """The header packet (send it before any audio: the decoder checks the model with it)."""
        return self.writer.start()

    def push(self, block: np.ndarray) -> bytes:
        """The next samples, float32 [L] -> bytes of the packets of the frames they complete."""
        if len(block) == 0:
            return b""
        self.num_samples += len(block)
        with torch.inference_mode():
            codes = self.model.encode(torch.from_numpy(np.ascontiguousarray(block, np.float32))[None, None], self.n_q)
        return self.writer.write(codes[0].numpy())

    def finish(self) -> bytes:
        """End of the audio: the pending partial frame (zero-padded) and the end packet."""
        with torch.inference_mode():
            codes = self.model.flush(self.n_q)
        return self.writer.end(codes[0].numpy(), self.num_samples)


class LiveDecoder:
    """Stream bytes in, audio out. Use as a context manager (it holds a model stream)::

        with LiveDecoder(model) as dec:
            for data in chunks:         # bytes as they arrive, any amount
                play(dec.push(data))    # float32 [L]: the samples that became final
            play(dec.finish())          # what the synthesis still held back
            dec.close()                 # BitstreamError if the stream was cut off

    The output ends exactly at the stream's sample count (from ``joined_at`` on when joined).
    join: the input may start anywhere in a stream (``LiveReader``).
    """

    def __init__(self, model, join: bool = False) -> None:
        self.model = model
        self.reader = LiveReader(join=join)
        self.samples_out = 0
        self._limit: int | None = None  # samples to output in all, once the end packet told
        self._fingerprint = model.fingerprint()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LiveDecoder:  # noqa: PYI034
        self._stack.enter_context(self.model.streaming())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def header(self) -> LiveHeader | None:
        return self.reader.header

    def push(self, data: bytes) -> np.ndarray:
        """The next bytes of the stream -> float32 [L] samples decoded from the packets they
        complete (consecutive frames decoded in one call)."""
        out, run = [], []
        for event in self.reader.feed(data):
            if isinstance(event, LiveHeader):
                check_live_model(event, self.model, self._fingerprint)
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
            return self.model.decode(torch.from_numpy(codes)[None])[0, 0].numpy()

    def _flush(self) -> np.ndarray:
        with torch.inference_mode():
            return self.model.flush_decoder()[0, 0].numpy()

    def _trim(self, parts: list[np.ndarray]) -> np.ndarray:
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if self._limit is not None:
            audio = audio[: max(0, self._limit - self.samples_out)]
        self.samples_out += len(audio)
        return audio.astype(np.float32, copy=False)
