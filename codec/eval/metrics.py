"""Quality metrics of a decoded signal against the original, all at 16 kHz mono.

pesq_wb: wide-band PESQ (ITU-T P.862.2, ``pesq`` package), MOS-LQO in about [1.04, 4.64];
stoi: short-time objective intelligibility (``pystoi``), in [0, 1];
mel_distance: mean L1 distance between natural-log mel spectrograms (librosa filters, torch.stft);
si_sdr: scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

METRIC_RATE = 16000  # PESQ wide-band and STOI are defined at 16 kHz here
MEL_N_FFT, MEL_HOP, MEL_BANDS, MEL_FLOOR = 1024, 256, 80, 1e-5
METRICS = ("pesq", "stoi", "mel_distance", "si_sdr")


def align(reference: np.ndarray, degraded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of equal length: the degraded signal is cut or zero-padded to the reference."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    deg = np.asarray(degraded, dtype=np.float64).reshape(-1)[: len(ref)]
    if len(deg) < len(ref):
        deg = np.pad(deg, (0, len(ref) - len(deg)))
    return ref, deg


def pesq_wb(reference: np.ndarray, degraded: np.ndarray, rate: int = METRIC_RATE) -> float:
    """Wide-band PESQ; NaN where PESQ finds no speech (e.g. silence)."""
    from pesq import PesqError, pesq

    ref, deg = align(reference, degraded)
    try:
        return float(pesq(rate, ref, deg, "wb"))
    except PesqError:
        return math.nan


def stoi(reference: np.ndarray, degraded: np.ndarray, rate: int = METRIC_RATE) -> float:
    """STOI (not extended), 1 for identical signals."""
    from pystoi import stoi as _stoi

    ref, deg = align(reference, degraded)
    return float(_stoi(ref, deg, rate, extended=False))


@lru_cache(maxsize=4)
def _mel_filters(rate: int) -> torch.Tensor:
    import librosa

    fb = librosa.filters.mel(sr=rate, n_fft=MEL_N_FFT, n_mels=MEL_BANDS)
    return torch.from_numpy(fb).double()  # [n_mels, n_fft // 2 + 1]


def log_mel(x: np.ndarray, rate: int = METRIC_RATE) -> torch.Tensor:
    """Natural-log mel magnitude spectrogram [n_mels, frames] (Hann window, centred frames)."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    spec = torch.stft(t, MEL_N_FFT, MEL_HOP, window=torch.hann_window(MEL_N_FFT, dtype=torch.float64),
                      center=True, return_complex=True).abs()
    return torch.log(torch.clamp(_mel_filters(rate) @ spec, min=MEL_FLOOR))


def mel_distance(reference: np.ndarray, degraded: np.ndarray, rate: int = METRIC_RATE) -> float:
    """Mean absolute difference of the log-mel spectrograms (0 for identical signals)."""
    ref, deg = align(reference, degraded)
    return float((log_mel(ref, rate) - log_mel(deg, rate)).abs().mean())


def si_sdr(reference: np.ndarray, degraded: np.ndarray, eps: float = 1e-12) -> float:
    """10 log10(|a s|^2 / |a s - d|^2), a = <d, s> / |s|^2, on zero-mean signals (dB)."""
    ref, deg = align(reference, degraded)
    ref, deg = ref - ref.mean(), deg - deg.mean()
    target = (np.dot(deg, ref) / (np.dot(ref, ref) + eps)) * ref
    noise = deg - target
    return float(10 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


def to_metric_rate(x: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 audio at ``rate`` Hz -> float32 at 16 kHz (soxr HQ; unchanged if already 16 kHz)."""
    x = np.asarray(x, dtype=np.float32)
    if rate == METRIC_RATE:
        return x
    import soxr

    return soxr.resample(x, rate, METRIC_RATE, quality="HQ")


def score(reference: np.ndarray, degraded: np.ndarray) -> dict[str, float]:
    """All four metrics of ``degraded`` against ``reference``, both mono at 16 kHz; the
    degraded signal is cut or zero-padded to the reference's length."""
    return {
        "pesq": pesq_wb(reference, degraded),
        "stoi": stoi(reference, degraded),
        "mel_distance": mel_distance(reference, degraded),
        "si_sdr": si_sdr(reference, degraded),
    }
