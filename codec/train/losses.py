"""Spectral reconstruction losses (auraloss) used to train the codec."""
from __future__ import annotations

import auraloss
from torch import Tensor, nn


def multi_resolution_stft(sample_rate: int = 16000) -> nn.Module:
    """auraloss's multi-resolution STFT loss (spectral convergence + log magnitude) with
    window sizes 20 ms to 128 ms at ``sample_rate``. Call it as loss(pred, target) on float
    [B, 1, T] audio; returns a scalar."""
    wins = [int(sample_rate * s) for s in (0.02, 0.04, 0.08)]
    ffts = [1 << (w - 1).bit_length() for w in wins]
    hops = [w // 4 for w in wins]
    return auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=ffts, hop_sizes=hops, win_lengths=wins)


class ReconstructionLoss(nn.Module):
    """Weighted sum of the multi-resolution STFT loss and a waveform L1.

    forward(pred, target): float [B, 1, T] each -> (total scalar, {name: scalar}).
    """

    def __init__(self, sample_rate: int = 16000, stft_weight: float = 1.0, l1_weight: float = 0.0) -> None:
        super().__init__()
        self.stft = multi_resolution_stft(sample_rate)
        self.stft_weight = stft_weight
        self.l1_weight = l1_weight

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts = {"stft": self.stft(pred, target)}
        total = self.stft_weight * parts["stft"]
        if self.l1_weight:
            parts["l1"] = (pred - target).abs().mean()
            total = total + self.l1_weight * parts["l1"]
        return total, parts
