"""Glue between a Codec model and the container: streaming encode, exact decode.

The coding runs on a streamer (``Codec.streamer``, its precision the caller's choice); the
headers are checked against the model it was made from (``streamer.model``). Codes go in as
the streamer emits them, so encoding holds only one audio block and a few frames in memory.
Decoding runs offline on up to ``DECODE_BLOCK_FRAMES`` frames at once (bit-exact with
``streamer.decode_offline``) and switches to the streaming decoder in blocks of that size for
longer files (equal up to float rounding, memory bounded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from codec.bitstream.container import (
    DEFAULT_BLOCK_FRAMES,
    BitstreamWriter,
    Parsed,
    decode_codes,
    parse,
    write_file,
)
from codec.bitstream.errors import BitstreamError
from codec.bitstream.header import MODE_FIXED, MODE_RANGE, TRAILER_SIZE, Header
from codec.bitstream.packing import packed_size
from codec.bitstream.priors import Priors

if TYPE_CHECKING:
    from codec.runtime.streamer import Streamer

DECODE_BLOCK_FRAMES = 3000  # 60 s at 50 frames/s


def make_header(model, num_stages: int, priors: Priors | None = None,
                block_frames: int = DEFAULT_BLOCK_FRAMES, fingerprint: bytes | None = None) -> Header:
    """Header for ``model`` using its first ``num_stages`` stages; range-coded when priors are
    given. ``fingerprint``: the model's, when already computed (it hashes every weight)."""
    fp = fingerprint if fingerprint is not None else model.fingerprint()
    sizes = tuple(model.codebook_sizes[:num_stages])
    if priors is None:
        return Header(MODE_FIXED, model.sample_rate, model.hop_length, sizes, fp)
    if priors.fingerprint != fp or priors.codebook_sizes[:num_stages] != sizes:
        raise BitstreamError("the entropy priors belong to a different model; run `codec priors` again")
    return Header(MODE_RANGE, model.sample_rate, model.hop_length, sizes, fp, block_frames, priors.id)


def check_model(header, model, fingerprint: bytes | None = None, source: str = "file", hint: str = "") -> None:
    """Raise BitstreamError unless ``header`` (a file's ``Header`` or a stream's, anything with
    fingerprint, sample_rate, hop_length, codebook_sizes and num_stages) was written by this
    very model. ``fingerprint``: the model's, when already computed (it hashes every weight);
    ``source`` names what was read in the message, ``hint`` is appended to it."""
    fp = fingerprint if fingerprint is not None else model.fingerprint()
    if header.fingerprint != fp:
        raise BitstreamError(
            f"{source} was made by another model (fingerprint {header.fingerprint.hex()[:12]}...,"
            f" this model is {fp.hex()[:12]}...){hint}"
        )
    if (header.sample_rate, header.hop_length) != (model.sample_rate, model.hop_length) or \
            header.codebook_sizes != tuple(model.codebook_sizes[: header.num_stages]):
        raise BitstreamError(f"{source} header disagrees with the model's rate, hop or codebook sizes")


@dataclass(frozen=True)
class EncodeResult:
    num_samples: int
    num_frames: int
    file_size: int


class Counted:
    """Audio blocks [L] passed through unchanged, counting their samples (``samples``)."""

    def __init__(self, blocks: Iterable[np.ndarray]) -> None:
        self.blocks, self.samples = blocks, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            self.samples += len(block)
            yield block


def stream_codes(streamer: Streamer, blocks: Iterable[np.ndarray], n_q: int) -> Iterator[np.ndarray]:
    """Codes int64 [n_q, f] as the streaming encoder emits them for mono float32 blocks [L] at
    the model's sample rate (f >= 0 frames each), the last chunk from its flush. A fresh
    stream of ``streamer`` runs until the generator ends or is closed (``contextlib.closing``)."""
    with torch.inference_mode(), streamer:
        for block in blocks:
            yield streamer.encode(torch.from_numpy(block)[None, None], n_q=n_q)[0].cpu().numpy()
        yield streamer.flush(n_q=n_q)[0].cpu().numpy()


def encode_stream(streamer: Streamer, blocks: Iterable[np.ndarray], out: BinaryIO, header: Header,
                  priors: Priors | None = None) -> EncodeResult:
    """Encode mono float32 blocks [L] at the model's sample rate into ``out``, frame by frame,
    through a fresh stream of ``streamer``."""
    writer = BitstreamWriter(out, header, priors)
    counted = Counted(blocks)
    with closing(stream_codes(streamer, counted, header.num_stages)) as chunks:
        for codes in chunks:
            writer.write(codes)
    size = writer.finish(counted.samples)
    return EncodeResult(counted.samples, writer.num_frames, size)


def fixed_width_if_smaller(f: BinaryIO, result: EncodeResult, priors: Priors) -> EncodeResult | None:
    """Rewrite a range-coded file fixed-width when that is smaller.

    ``f``: a readable, seekable file holding exactly the file ``encode_stream`` just wrote (a
    range-coded one, ``result`` its sizes). Range coding can lose to fixed-width packing on audio
    unlike the priors' data (the record length fields and each record's final word cost too).
    Returns the fixed-width file's EncodeResult after rewriting ``f`` in place, or None when the
    range-coded file is the smaller one (``f`` untouched).
    """
    f.flush()
    f.seek(0)
    parsed = parse(f.read())
    h, t = parsed.header, parsed.trailer
    fixed_size = h.size + packed_size(t.num_frames, h.bit_widths) + TRAILER_SIZE
    if h.mode != MODE_RANGE or result.file_size <= fixed_size:
        f.seek(0, 2)
        return None
    codes = decode_codes(parsed, priors)
    f.seek(0)
    f.truncate()
    size = write_file(f, Header(MODE_FIXED, h.sample_rate, h.hop_length, h.codebook_sizes, h.fingerprint), codes,
                      t.num_samples)
    return EncodeResult(result.num_samples, result.num_frames, size)


def decode_blocks(streamer: Streamer, parsed: Parsed, priors: Priors | None = None,
                  block_frames: int = DECODE_BLOCK_FRAMES, fingerprint: bytes | None = None) -> Iterator[np.ndarray]:
    """Yield float32 audio blocks [L] (the model's sample rate), trimmed to the stored sample
    count, decoded by ``streamer`` (offline, or a fresh decode stream for more than
    ``block_frames`` frames). ``fingerprint``: the model's, when already computed
    (``check_model``)."""
    check_model(parsed.header, streamer.model, fingerprint)
    codes = torch.from_numpy(decode_codes(parsed, priors))[None]  # [1, N, F]
    remaining = parsed.trailer.num_samples
    with torch.inference_mode():
        if codes.shape[-1] <= block_frames:
            yield streamer.decode_offline(codes)[0, 0, :remaining].cpu().numpy()
            return
        with streamer:
            for start in range(0, codes.shape[-1], block_frames):
                wav = streamer.decode(codes[..., start : start + block_frames])[0, 0, :remaining]
                remaining -= wav.shape[-1]
                yield wav.cpu().numpy()
            tail = streamer.flush_decoder()[0, 0, :remaining]
            if tail.numel():
                yield tail.cpu().numpy()


def decode_audio(streamer: Streamer, parsed: Parsed, priors: Priors | None = None) -> np.ndarray:
    """The whole decoded signal, float32 [num_samples]; equals
    ``streamer.decode_offline(codes)`` exactly."""
    return np.concatenate(list(decode_blocks(streamer, parsed, priors, block_frames=1 << 62)))


def stages_for_bitrate(model, bits_per_second: float) -> int:
    """Most stages whose nominal bitrate stays within ``bits_per_second``."""
    fitting = [n for n in range(1, model.num_stages + 1) if model.bitrate(n) <= bits_per_second * (1 + 1e-9)]
    if not fitting:
        raise ValueError(
            f"bitrate {bits_per_second:g} bit/s is below the model's lowest ({model.bitrate(1):g} bit/s, 1 stage)"
        )
    return max(fitting)
