"""codec.audio_io: formats, rates, channels, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from codec.audio_io import AudioError, AudioReader, read_audio, write_audio


def tone(rate: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize("fmt,subtype", [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "PCM_32"),
                                         ("wav", "FLOAT"), ("flac", "PCM_16"), ("ogg", "VORBIS")])
def test_reads_formats(tmp_path, fmt, subtype):
    path = tmp_path / f"x.{fmt}"
    sf.write(path, tone(16000), 16000, subtype=subtype)
    x = read_audio(str(path), 16000)
    assert x.dtype == np.float32
    if fmt == "ogg":
        assert abs(len(x) - 8000) < 1000
    else:
        np.testing.assert_allclose(x, tone(16000), atol=1e-4)


def test_resamples_and_downmixes(tmp_path):
    path = tmp_path / "st.wav"
    sf.write(path, tone(44100, 1.0, channels=2), 44100)
    with AudioReader(str(path)) as r:
        assert r.channels == 2 and r.sample_rate == 44100
        blocks = list(r.blocks(16000, block_size=10000))
    x = np.concatenate(blocks)
    assert abs(len(x) - 16000) <= 1
    np.testing.assert_allclose(x[1000:-1000], tone(16000, 1.0)[1000:-1000], atol=2e-3)


@pytest.mark.parametrize("case", ["missing", "dir", "not_audio", "empty", "nan", "inf"])
def test_bad_input(tmp_path, case):
    path = tmp_path / "bad.wav"
    if case == "dir":
        path = tmp_path
    elif case == "not_audio":
        path.write_text("hello, not audio\n" * 10)
    elif case == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif case in ("nan", "inf"):
        x = tone(16000)
        x[100] = np.nan if case == "nan" else np.inf
        sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError):
        read_audio(str(path), 16000)


def test_write_is_atomic(tmp_path):
    out = tmp_path / "o.wav"

    def broken():
        yield np.zeros(100, dtype=np.float32)
        raise AudioError("boom")

    with pytest.raises(AudioError):
        write_audio(str(out), broken(), 16000)
    assert list(tmp_path.iterdir()) == []
    write_audio(str(out), [tone(16000)], 16000, "FLOAT")
    np.testing.assert_array_equal(sf.read(out, dtype="float32")[0], tone(16000))


class _ShortWriter:
    """A writer that takes at most ``most`` bytes a call and says so (as a buffered writer on a
    pipe does when the pipe fills and its reader leaves), then raises BrokenPipeError once
    ``limit`` bytes have gone in, if a limit is given."""

    def __init__(self, most: int, limit: int | None = None) -> None:
        self.most, self.limit, self.got = most, limit, bytearray()

    def write(self, data) -> int:
        if self.limit is not None and len(self.got) >= self.limit:
            raise BrokenPipeError(32, "Broken pipe")
        taken = bytes(data[: self.most])
        self.got += taken
        return len(taken)


def test_write_all_and_copy_all_write_every_byte_through_short_writes():
    import io

    from codec.bitstream.atomic import copy_all, write_all

    data = np.random.default_rng(0).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    out = _ShortWriter(most=65_536)
    write_all(out, data)
    assert bytes(out.got) == data
    out = _ShortWriter(most=1000)
    copy_all(io.BytesIO(data), out, chunk=4096)
    assert bytes(out.got) == data
    # A writer that writes all and returns None (some raw streams do) is taken at its word.
    sink = io.BytesIO()
    write_all(type("W", (), {"write": lambda self, d: sink.write(d) and None})(), data[:10])
    assert sink.getvalue() == data[:10]


def test_write_all_raises_when_the_reader_leaves_part_way():
    """The case CI met: the first write reports the 65,536 bytes that fitted in the pipe, and only
    the next one finds the reader gone; a plain ``write`` returned quietly and the command ended 0."""
    from codec.bitstream.atomic import write_all

    out = _ShortWriter(most=65_536, limit=65_536)
    with pytest.raises(BrokenPipeError):
        write_all(out, bytes(384_000))
    assert len(out.got) == 65_536
