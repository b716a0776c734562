"""Reconstruction losses used to train the codec: auraloss multi-resolution STFT, a multi-scale
log-mel L1 (DAC-style: several window sizes, fewer mel bands for short windows), and an
optional waveform L1. All are computed in float32 whatever the autocast context, because
bf16 log-spectra are too coarse to train on.
"""
from __future__ import annotations

import warnings

import auraloss
import librosa
import torch
from torch import Tensor, nn


def multi_resolution_stft(sample_rate: int = 16000) -> nn.Module:
    """auraloss's multi-resolution STFT loss (spectral convergence + log magnitude) with
    window sizes 20 ms to 128 ms at ``sample_rate``. Call it as loss(pred, target) on float
    [B, 1, T] audio; returns a scalar."""
    wins = [int(sample_rate * s) for s in (0.02, 0.04, 0.08)]
    ffts = [1 << (w - 1).bit_length() for w in wins]
    hops = [w // 4 for w in wins]
    return auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=ffts, hop_sizes=hops, win_lengths=wins)


class MultiScaleMelLoss(nn.Module):
    """Mean over window sizes of L1(log10 mel(pred), log10 mel(target)).

    windows: STFT window (= FFT) sizes in samples, hop = window / 4; n_mels: bands per window
    (short windows have few FFT bins, so they get few bands). forward: float [B, 1, T] each
    -> scalar. Mel filters come from librosa (Slaney), magnitudes are clamped at 1e-5.
    """

    def __init__(self, sample_rate: int, windows: list[int], n_mels: list[int]) -> None:
        super().__init__()
        self.windows = [int(w) for w in windows]
        for i, (w, m) in enumerate(zip(self.windows, n_mels)):
            with warnings.catch_warnings():  # "empty filters" for the shortest windows is expected
                warnings.simplefilter("ignore")
                fb = librosa.filters.mel(sr=sample_rate, n_fft=w, n_mels=int(m))
            self.register_buffer(f"fb{i}", torch.from_numpy(fb).float(), persistent=False)
            self.register_buffer(f"win{i}", torch.hann_window(w), persistent=False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        x = torch.cat([pred, target]).squeeze(1).float()  # one STFT for both: [2B, T]
        total = x.new_zeros(())
        for i, w in enumerate(self.windows):
            spec = torch.stft(x, n_fft=w, hop_length=w // 4, window=getattr(self, f"win{i}"),
                              return_complex=True).abs()  # [2B, w/2+1, frames]
            mel = torch.log10(torch.matmul(getattr(self, f"fb{i}"), spec).clamp_min(1e-5))
            p, t = mel.chunk(2)
            total = total + (p - t).abs().mean()
        return total / len(self.windows)


class ReconstructionLoss(nn.Module):
    """Weighted sum of the multi-resolution STFT loss, the multi-scale mel L1 and a waveform L1
    (a weight of 0 skips the term).

    forward(pred, target): float [B, 1, T] each -> (total scalar, {name: unweighted scalar}).
    """

    def __init__(self, sample_rate: int = 16000, stft_weight: float = 1.0, l1_weight: float = 0.0,
                 mel_weight: float = 0.0, mel_windows: list[int] | None = None,
                 n_mels: list[int] | None = None) -> None:
        super().__init__()
        self.stft = multi_resolution_stft(sample_rate)
        self.mel = MultiScaleMelLoss(sample_rate, mel_windows or [32, 64, 128, 256, 512, 1024, 2048],
                                     n_mels or [5, 10, 20, 40, 80, 80, 80])
        self.weights = {"stft": stft_weight, "mel": mel_weight, "l1": l1_weight}

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        pred, target = pred.float(), target.float()
        with torch.autocast(pred.device.type, enabled=False):
            parts: dict[str, Tensor] = {}
            if self.weights["stft"]:
                parts["stft"] = self.stft(pred, target)
            if self.weights["mel"]:
                parts["mel"] = self.mel(pred, target)
            if self.weights["l1"]:
                parts["l1"] = (pred - target).abs().mean()
            total = sum((self.weights[k] * v for k, v in parts.items()), pred.new_zeros(()))
        return total, parts
