"""Bitstream against a real (tiny, random-weight) model: exact decode, entropy coding, priors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import data_root

from codec import Codec
from codec.bitstream import BitstreamError, Priors, packed_size, parse
from codec.files.coding import decode_audio, decode_blocks, encode_stream, make_header, stages_for_bitrate
from codec.files.estimate import estimate_priors

REPO = Path(__file__).resolve().parents[1]


def speech_files(n: int) -> list[Path]:
    root = data_root() / "test-other"
    files = sorted(root.rglob("*.flac"))[:n]
    if not files:
        pytest.skip(f"no LibriSpeech FLAC under {root}")
    return files


@pytest.fixture(scope="module")
def model() -> Codec:
    """A tiny random model."""
    torch.manual_seed(0)
    return Codec.from_config(REPO / "recipes" / "tiny.yaml").eval()


@pytest.fixture(scope="module")
def exact(model):
    """The model's exact-precision streamer: streamed file codes must equal its offline codes."""
    return model.streamer("exact")


@pytest.fixture(scope="module")
def wav() -> np.ndarray:
    """2.5 s of real speech (+ a few samples so the last frame is partial), float32 [T] at 16 kHz."""
    audio, rate = sf.read(speech_files(1)[0], dtype="float32", frames=40_007)
    assert rate == 16000
    return audio


@pytest.fixture(scope="module")
def priors(model) -> Priors:
    return estimate_priors(model, speech_files(1))


def encode(streamer, wav, n_q, priors=None, block=4000) -> bytes:
    buf = io.BytesIO()
    blocks = [wav[i : i + block] for i in range(0, len(wav), block)]
    encode_stream(streamer, blocks, buf, make_header(streamer.model, n_q, priors, block_frames=32), priors)
    return buf.getvalue()


def reference(streamer, wav, n_q) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(wav)[None, None]
    codes = streamer.encode_offline(x, n_q=n_q)
    return codes[0].numpy(), streamer.decode_offline(codes)[0, 0, : len(wav)].numpy()


@pytest.mark.parametrize("n_q", [1, 2, 4])
def test_decode_equals_model_roundtrip_exactly(exact, wav, n_q):
    data = encode(exact, wav, n_q)
    codes, expected = reference(exact, wav, n_q)
    parsed = parse(data)
    assert parsed.trailer.num_samples == len(wav) and parsed.header.num_stages == n_q
    assert len(data) == parsed.header.size + packed_size(codes.shape[1], parsed.header.bit_widths) + 16
    out = decode_audio(exact, parsed)
    assert out.dtype == np.float32 and np.array_equal(out, expected)  # same floats


@pytest.mark.parametrize("n_q", [1, 4])
def test_entropy_coded_decodes_bit_exactly(exact, wav, priors, n_q):
    data = encode(exact, wav, n_q, priors)
    _, expected = reference(exact, wav, n_q)
    parsed = parse(data)
    assert len(parsed.records) > 1
    assert np.array_equal(decode_audio(exact, parsed, priors), expected)
    fixed = packed_size(parsed.trailer.num_frames, parsed.header.bit_widths)
    assert parsed.payload_size < fixed  # random weights: codes are far from uniform


def test_streamed_long_decode_is_close(exact, wav):
    parsed = parse(encode(exact, wav, 4))
    _, expected = reference(exact, wav, 4)
    out = np.concatenate(list(decode_blocks(exact, parsed, block_frames=16)))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_other_model_is_rejected(exact, wav):
    data = encode(exact, wav, 2)
    torch.manual_seed(1)
    other = Codec.from_config(REPO / "recipes" / "tiny.yaml").eval()
    with pytest.raises(BitstreamError, match="another model"):
        list(decode_blocks(other.streamer(), parse(data)))


def test_priors_must_match_model(model, priors):
    torch.manual_seed(1)
    other = Codec.from_config(REPO / "recipes" / "tiny.yaml").eval()
    with pytest.raises(BitstreamError, match="different model"):
        make_header(other, 2, priors)


def test_stages_for_bitrate(model):
    per_stage = model.bitrate(1)
    assert stages_for_bitrate(model, 2.5 * per_stage) == 2
    assert stages_for_bitrate(model, 1e9) == model.num_stages
    with pytest.raises(ValueError):
        stages_for_bitrate(model, per_stage / 2)
