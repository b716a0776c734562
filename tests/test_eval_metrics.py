"""The evaluation's metric plumbing on cases with known answers (real speech)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import speech

from codec.eval.metrics import align, mel_distance, pesq_wb, score, si_sdr, stoi, to_metric_rate
from codec.eval.report import aggregate, mean_ci

PESQ_WB_MAX = 4.643888  # P.862.2 mapping of the best raw score


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return speech(3.0, index=1)[0, 0].numpy()


def orthogonal_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """Zero-mean noise orthogonal to zero-mean x with |x|^2 / |n|^2 = 10^(snr/10)."""
    x0 = x - x.mean()
    n = np.random.default_rng(seed).standard_normal(len(x))
    n -= n.mean()
    n -= np.dot(n, x0) / np.dot(x0, x0) * x0
    return n * math.sqrt(np.dot(x0, x0) / np.dot(n, n) / 10 ** (snr_db / 10))


def test_identical_audio_scores_the_maximum(clean):
    s = score(clean, clean.copy())
    assert s["pesq"] == pytest.approx(PESQ_WB_MAX, abs=1e-4)
    assert s["stoi"] == pytest.approx(1.0, abs=1e-9)
    assert s["mel_distance"] == 0.0
    assert s["si_sdr"] > 100


def test_degraded_audio_scores_lower(clean):
    noisy = clean + 0.02 * np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32)
    assert 1.0 < pesq_wb(clean, noisy) < 3.0
    assert 0.5 < stoi(clean, noisy) < 0.99
    assert mel_distance(clean, noisy) > 0.3
    assert stoi(clean, clean + 0.1 * noisy) > stoi(clean, noisy)


def test_si_sdr_known_values(clean):
    x = clean.astype(np.float64)
    noise = orthogonal_noise(x, 20.0)
    assert si_sdr(x, x + noise) == pytest.approx(20.0, abs=1e-6)
    assert si_sdr(x, 3.0 * (x + noise)) == pytest.approx(20.0, abs=1e-6)  # scale-invariant
    assert si_sdr(x, x + 0.5 + noise) == pytest.approx(20.0, abs=1e-6)  # mean removed
    assert si_sdr(x, x + orthogonal_noise(x, -5.0, seed=1)) == pytest.approx(-5.0, abs=1e-6)


def test_mel_distance_of_a_gain_is_its_log(clean):
    # Log-mel shifts by log(g) wherever the spectrum is above the floor (nearly everywhere in speech).
    assert mel_distance(clean, 2.0 * clean) == pytest.approx(math.log(2.0), rel=0.03)


def test_lengths_are_aligned_to_the_reference(clean):
    ref, deg = align(clean, clean[:-100])
    assert len(deg) == len(ref) and (deg[-100:] == 0).all()
    ref, deg = align(clean, np.concatenate([clean, clean[:50]]))
    assert np.array_equal(ref, deg)
    assert score(clean, np.concatenate([clean, np.ones(77, np.float32)]))["mel_distance"] == 0.0


def test_resampling_to_16k():
    tone = np.sin(2 * np.pi * 440 * np.arange(24000) / 24000).astype(np.float32)
    out = to_metric_rate(tone, 24000)
    assert len(out) == 16000
    assert np.array_equal(to_metric_rate(tone, 16000), tone)  # already 16 kHz: unchanged


def test_mean_and_95_interval():
    mean, half, n = mean_ci([1.0, 2.0, 3.0, 4.0, math.nan])
    assert (mean, n) == (2.5, 4)
    assert half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert math.isnan(mean_ci([])[0]) and math.isnan(mean_ci([3.0])[1])


def test_aggregate_bitrate_is_total_bits_over_total_time():
    rows = [
        {"system": "m", "stages": 1, "nominal_kbps": 0.3, "duration_s": d, "file_bytes": b,
         "payload_bytes": b - 62, "pesq": p, "stoi": 0.5, "mel_distance": 1.0, "si_sdr": 0.0}
        for d, b, p in [(1.0, 100, 1.0), (3.0, 200, 2.0)]
    ]
    (point,) = aggregate(rows)
    assert point.kbps == pytest.approx(8 * 300 / 4.0 / 1000)
    assert point.payload_kbps == pytest.approx(8 * 176 / 4.0 / 1000)
    assert point.means["pesq"][0] == 1.5 and point.utterances == 2
