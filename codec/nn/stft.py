"""Causal, streamable short-time Fourier analysis and synthesis at one hop per frame.

With hop h, frame t spans the 2h samples x[(t - 1) h : (t + 1) h] (a periodic Hann window,
50% overlap): it ends at the last sample of block t, so the analysis never looks ahead.
Synthesis overlap-adds windowed inverse FFTs so that output block t (samples t h .. t h + h - 1)
is the first half of frame t plus the second half of frame t - 1: a frame needs nothing
later than itself, and the codec's algorithmic latency stays one hop. Hann windows at 50%
overlap sum to one, so synthesising the spectra of the plain (unwindowed) frames returns the
input exactly, one hop late (frame t's first half holds block t - 1). The decoder therefore does not invert the
analysis: it learns spectra whose first half is the current block and whose windowed tail
carries into the next one, the same structure as a causally trimmed transposed convolution.
"""
from __future__ import annotations

import torch
from torch import Tensor

from codec.nn.streaming import StreamingLayer

#: Upper clamp of the synthesis log-magnitude (e^7 ~ 1100, above any full-scale sinusoid's
#: peak bin, 2h / 4 = 160 at h = 320): a guard against overflow early in training.
LOG_MAGNITUDE_MAX = 7.0
_EPS = 1e-5


_WINDOWS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def _window(hop: int, like: Tensor) -> Tensor:
    """The periodic Hann window of 2 hop samples in ``like``'s dtype and device, made once
    (a streamed frame would otherwise rebuild it twice per 20 ms)."""
    key = (hop, like.dtype, like.device)
    w = _WINDOWS.get(key)
    if w is None:
        w = _WINDOWS[key] = torch.hann_window(2 * hop, periodic=True, dtype=like.dtype, device=like.device)
    return w


class CausalSTFT(StreamingLayer):
    """Waveform float [B, 1, T] (T a multiple of hop) -> per-frame features [B, T / hop, 3 (hop + 1)]:
    log(|X| + 1e-5), then the real and imaginary parts of X / |X| (the phase as a unit
    vector), for the hop + 1 bins of each frame's FFT. In streaming mode any chunk length goes in
    and the frames it completes come out; the layer keeps fewer than 2 hop past samples."""

    def __init__(self, hop: int) -> None:
        super().__init__()
        self.hop = hop

    @property
    def features(self) -> int:
        """Feature size per frame: 3 (hop + 1)."""
        return 3 * (self.hop + 1)

    def frame_features(self, frames: Tensor) -> Tensor:
        """Frames float [B, F, 2 hop] (raw samples) -> features [B, F, 3 (hop + 1)]."""
        spec = torch.fft.rfft(frames * _window(self.hop, frames), dim=-1)
        mag = spec.abs()
        unit = spec / mag.clamp_min(_EPS)
        return torch.cat([torch.log(mag + _EPS), unit.real, unit.imag], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.hop
        x = x[:, 0]
        if not self._streaming:
            x = torch.nn.functional.pad(x, (h, 0))
        else:
            buf = self.__dict__["_buffer"]
            if buf is None:
                buf = x.new_zeros(x.shape[0], h)
            x = torch.cat([buf, x], dim=-1)
            n = max(0, (x.shape[-1] - 2 * h) // h + 1)
            self.__dict__["_buffer"] = x[:, n * h :]
            if n == 0:
                return x.new_zeros(x.shape[0], 0, self.features)
        return self.frame_features(x.unfold(-1, 2 * h, h))


class CausalISTFT(StreamingLayer):
    """Per-frame spectra as [log-magnitude (hop + 1) | phase in radians (hop + 1)], float
    [B, F, 2 (hop + 1)] -> waveform [B, 1, F hop]. Streaming keeps the last frame's second
    half (hop samples) for the next block."""

    def __init__(self, hop: int) -> None:
        super().__init__()
        self.hop = hop

    def forward(self, x: Tensor) -> Tensor:
        h = self.hop
        logmag, phase = x.chunk(2, dim=-1)
        mag = torch.exp(logmag.clamp(max=LOG_MAGNITUDE_MAX))
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        frames = torch.fft.irfft(spec, n=2 * h, dim=-1) * _window(h, x)  # [B, F, 2h]
        b, f, _ = frames.shape
        head, tail = frames[..., :h], frames[..., h:]
        if self._streaming:
            prev = self.__dict__["_buffer"]
            if prev is None:
                prev = tail.new_zeros(b, 1, h)
            tails = torch.cat([prev, tail], dim=1)  # [B, F + 1, h]
            self.__dict__["_buffer"] = tails[:, f:]
        else:
            tails = torch.nn.functional.pad(tail, (0, 0, 1, 0))
        return (head + tails[:, :f]).reshape(b, 1, f * h)
