"""Causal, streamable short-time Fourier analysis and synthesis on a token grid.

The default grid (what follows describes it; ``CausalSTFT`` / ``CausalISTFT`` also take
several sub-frames per token, longer windows and a synthesis delay, see their docstrings):
with hop h, frame t spans the 2h samples x[(t - 1) h : (t + 1) h] (a periodic Hann window,
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

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from codec.nn.streaming import StreamingLayer

#: Upper clamp of the synthesis log-magnitude (e^7 ~ 1100, above any full-scale sinusoid's
#: peak bin, 2h / 4 = 160 at h = 320): a guard against overflow early in training.
LOG_MAGNITUDE_MAX = 7.0
_EPS = 1e-5


_WINDOWS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def _window(n: int, like: Tensor) -> Tensor:
    """The periodic Hann window of ``n`` samples in ``like``'s dtype and device, made once (a
    streamed frame would otherwise rebuild it twice per 20 ms)."""
    key = (n, like.dtype, like.device)
    w = _WINDOWS.get(key)
    if w is None:
        # never an inference tensor, or a first call under torch.inference_mode (an evaluation)
        # would leave a window that autograd cannot save for a later training step
        with torch.inference_mode(False):
            w = _WINDOWS[key] = torch.hann_window(n, periodic=True, dtype=like.dtype, device=like.device)
    return w


_DFTS: dict[tuple[int, bool], tuple[Tensor, Tensor]] = {}


def _dft_matrices(n: int, inverse: bool) -> tuple[Tensor, Tensor]:
    """Real matrices of the n-point real DFT, float32, made once: forward (``inverse`` False)
    (cos, -sin) [n, n / 2 + 1], so frames @ each = rfft's real and imaginary parts; inverse
    (a, b) [n / 2 + 1, n], so re @ a + im @ b = irfft(re + i im, n) (the imaginary parts of the
    DC and Nyquist bins ignored, as irfft does)."""
    key = (n, inverse)
    if key not in _DFTS:
        with torch.inference_mode(False):  # as _window: a normal tensor wherever it is first made
            _DFTS[key] = _make_dft(n, inverse)
    return _DFTS[key]


def _make_dft(n: int, inverse: bool) -> tuple[Tensor, Tensor]:
    """``_dft_matrices``' two matrices, computed in float64 and returned in float32."""
    bins = n // 2 + 1
    angle = 2 * math.pi * torch.outer(torch.arange(n, dtype=torch.float64), torch.arange(bins, dtype=torch.float64)) / n
    if not inverse:
        return torch.cos(angle).float(), (-torch.sin(angle)).float()
    weight = torch.full((bins, 1), 2.0 / n, dtype=torch.float64)
    weight[0] = 1.0 / n
    if n % 2 == 0:
        weight[-1] = 1.0 / n  # bin n / 2 is the Nyquist bin, counted once
    return (torch.cos(angle).t() * weight).float(), (-torch.sin(angle).t() * weight).float()


def exporting() -> bool:
    """True while ``torch.onnx.export`` traces: the grids then compute their DFTs as matrix
    products on real tensors (ONNX has no complex type, and its DFT operator is newer than
    what most runtimes run), the same numbers up to float rounding."""
    return torch.onnx.is_in_onnx_export()


class _TokenGrid(StreamingLayer):
    """The STFT grid of a token rate: ``hop`` samples per token, ``subframes`` frames per token
    at a sub-hop of hop / subframes, ``window`` samples per frame (default two sub-hops)."""

    def __init__(self, hop: int, subframes: int, window: int | None) -> None:
        super().__init__()
        self.hop = hop
        self.subframes = subframes
        self.sub_hop = hop // subframes
        self.window = 2 * self.sub_hop if window is None else window
        if self.sub_hop * subframes != hop or self.window % self.sub_hop or self.window < self.sub_hop:
            raise ValueError(f"hop {hop} must split into {subframes} sub-hops, and the window {self.window} "
                             "be a multiple of the sub-hop")

    @property
    def bins(self) -> int:
        """Frequency bins per frame: window / 2 + 1."""
        return self.window // 2 + 1


class CausalSTFT(_TokenGrid):
    """Waveform float [B, 1, T] (T a multiple of hop) -> per-frame features [B, T / hop, features].

    Each token frame of ``hop`` samples holds ``subframes`` STFT frames of ``window`` samples
    (default two sub-hops) at a sub-hop of hop / subframes; sub-frame u
    ends at the last sample of sub-block u, so the analysis never looks ahead. Per sub-frame:
    log(|X| + 1e-5), then the real and imaginary parts of X / |X| (the phase as a unit vector),
    for its window / 2 + 1 bins; a token's features are its sub-frames' side by side. In
    streaming mode any chunk length goes in and the token frames it completes come out; the
    layer keeps fewer than window + hop past samples."""

    def __init__(self, hop: int, subframes: int = 1, window: int | None = None) -> None:
        super().__init__(hop, subframes, window)

    @property
    def features(self) -> int:
        """Feature size per token frame: subframes x 3 bins (3 (hop + 1) at one sub-frame)."""
        return self.subframes * 3 * self.bins

    def frame_features(self, frames: Tensor) -> Tensor:
        """Sub-frames float [B, U, window] (raw samples) -> features [B, U, 3 bins]."""
        windowed = frames * _window(self.window, frames)
        if exporting():
            cos, sin = _dft_matrices(self.window, inverse=False)
            re, im = windowed @ cos, windowed @ sin
            mag = torch.sqrt(re * re + im * im)
            inv = 1.0 / mag.clamp_min(_EPS)
            return torch.cat([torch.log(mag + _EPS), re * inv, im * inv], dim=-1)
        spec = torch.fft.rfft(windowed, dim=-1)
        mag = spec.abs()
        unit = spec / mag.clamp_min(_EPS)
        return torch.cat([torch.log(mag + _EPS), unit.real, unit.imag], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        h, context = self.sub_hop, self.window - self.sub_hop
        x = x[:, 0]
        if not self._streaming:
            x = torch.nn.functional.pad(x, (context, 0))
        else:
            buf = self.__dict__["_buffer"]
            if buf is None:
                buf = x.new_zeros(x.shape[0], context)
            x = torch.cat([buf, x], dim=-1)
            n = max(0, (x.shape[-1] - context) // self.hop)  # token frames completed
            self.__dict__["_buffer"] = x[:, n * self.hop :]
            if n == 0:
                return x.new_zeros(x.shape[0], 0, self.features)
            if self.subframes > 1:
                x = x[:, : context + n * self.hop]
        # a positive dim: the ONNX exporter mis-places the window axis of a negative one
        feats = self.frame_features(x.unfold(x.dim() - 1, self.window, h))  # [B, T / h, 3 bins]
        if self.subframes == 1:
            return feats
        return feats.reshape(feats.shape[0], -1, self.features)


#: Synthesis heads -> values per bin of each sub-frame the head predicts, and how they become a
#: spectrum: logmag_phase [log-magnitude | phase in radians]; complex [real | imaginary];
#: logmag_atan2 [log-magnitude | r | i], the phase being the angle of (r, i) (APCodec's
#: parallel phase estimation: no wrapped quantity to regress).
HEADS = {"logmag_phase": 2, "complex": 2, "logmag_atan2": 3}


class CausalISTFT(_TokenGrid):
    """Per-token spectra, float [B, F, subframes x HEADS[head] x bins] -> waveform [B, 1, F hop].

    Each token carries ``subframes`` spectra (bins = window / 2 + 1 each) in the layout of
    ``head`` (HEADS); their inverse FFTs are windowed
    (periodic Hann) and overlap-added at the sub-hop. ``delay`` False: sub-frame u starts at
    sub-block u (it needs nothing later than itself: no latency beyond the token); True: it
    ends at sub-block u, as the analysis does, so a sample is final only once the window - sub
    hop samples after it are synthesised too (that much more algorithmic latency). Offline the
    output is aligned with the input either way; streaming returns the samples that are final
    so far (with ``delay``, the last window - sub hop of them come from ``flush``)."""

    def __init__(self, hop: int, subframes: int = 1, window: int | None = None, head: str = "logmag_phase",
                 delay: bool = False) -> None:
        super().__init__(hop, subframes, window)
        self.head = head
        self.delay = delay
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {head!r}")

    @property
    def outputs(self) -> int:
        """Values per token frame the head predicts: subframes x HEADS[head] x bins."""
        return self.subframes * HEADS[self.head] * self.bins

    @property
    def frame_delay(self) -> int:
        """Sub-blocks a sub-frame reaches back: sub-frame u covers sub-blocks u - d .. u - d + k - 1
        (k = window / sub hop), d = k - 1 with ``delay``, else 0."""
        return self.window // self.sub_hop - 1 if self.delay else 0

    def spectra(self, x: Tensor) -> Tensor:
        """Head outputs float [B, F, outputs] -> the sub-frames' spectra, complex [B, F subframes, bins]."""
        return torch.complex(*self.spectrum_parts(x))

    def spectrum_parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Head outputs float [B, F, outputs] -> the real and imaginary parts of the sub-frames'
        spectra, float [B, F subframes, bins] each."""
        per_bin = HEADS[self.head]
        if x.dtype in (torch.float16, torch.bfloat16):
            # autocast's head output: no complex type in bf16, and exp of a bf16 log-magnitude is
            # too coarse to synthesise from (float64, the exact path, stays float64)
            x = x.float()
        x = x.reshape(x.shape[0], -1, per_bin * self.bins)
        if self.head == "logmag_phase":
            first, second = x.chunk(2, dim=-1)
            mag = torch.exp(first.clamp(max=LOG_MAGNITUDE_MAX))
            return mag * torch.cos(second), mag * torch.sin(second)
        if self.head == "complex":
            first, second = x.chunk(2, dim=-1)
            return first, second
        logmag, re, im = x.chunk(3, dim=-1)
        scale = torch.exp(logmag.clamp(max=LOG_MAGNITUDE_MAX)) * torch.rsqrt(re.square() + im.square() + _EPS**2)
        return re * scale, im * scale

    def target_spectra(self, wav: Tensor) -> Tensor:
        """Audio float [B, 1, T] (T a multiple of hop) -> complex [B, T / sub hop, bins]: the
        spectra this synthesis turns back into ``wav`` (sub-frame by sub-frame, each where this
        grid places it; samples outside the signal count as zero): the FFT of the plain frame
        divided by the windows' overlap sum (k / 2 for Hann at k sub-hops per window). Exact
        except at one edge, where frames outside the signal would be needed: the last k - 1
        sub-blocks with ``delay``, the first k - 1 without. What a loss on the head's own
        spectra compares with."""
        h, k, d = self.sub_hop, self.window // self.sub_hop, self.frame_delay
        x = torch.nn.functional.pad(wav[:, 0], (d * h, (k - 1 - d) * h))
        return torch.fft.rfft(x.unfold(-1, self.window, h), dim=-1) * (2.0 / k)

    @property
    def lookahead(self) -> int:
        """Samples of algorithmic latency beyond the token: window - sub hop with ``delay``, else 0."""
        return self.window - self.sub_hop if self.delay else 0

    def synthesis_frames(self, spec: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """Spectra complex [B, U, bins], or their real and imaginary parts (float, as an ONNX
        export passes them: the inverse DFT is then a matrix product) -> windowed sub-frames
        float [B, U, window]."""
        if isinstance(spec, tuple):
            a, b = _dft_matrices(self.window, inverse=True)
            frames = spec[0] @ a + spec[1] @ b
        else:
            frames = torch.fft.irfft(spec, n=self.window, dim=-1)
        return frames * _window(self.window, frames)

    def forward(self, x: Tensor, spectra: Tensor | None = None) -> Tensor:
        """Head outputs [B, F, outputs] -> audio [B, 1, F hop] (``spectra``: the sub-frames'
        spectra when the caller has them already, ``self.spectra(x)``)."""
        h = self.sub_hop
        if spectra is None:
            spectra = self.spectrum_parts(x) if exporting() else self.spectra(x)
        frames = self.synthesis_frames(spectra)  # [B, U, window]
        b, u, _ = frames.shape
        k = self.window // h  # sub-blocks a frame spans
        if k == 2 and not self.delay:
            # 50% overlap without delay (the default grid): head + tail, the operations the
            # shipped model was measured with, kept so its output stays bit for bit the same
            head, tail = frames[..., :h], frames[..., h:]
            if self._streaming:
                prev = self.__dict__["_buffer"]
                if prev is None:
                    prev = tail.new_zeros(b, 1, h)
                tails = torch.cat([prev, tail], dim=1)  # [B, U + 1, h]
                self.__dict__["_buffer"] = tails[:, u:]
            else:
                tails = torch.nn.functional.pad(tail, (0, 0, 1, 0))
            return (head + tails[:, :u]).reshape(b, 1, u * h)
        return self._overlap_add(frames.reshape(b, u, k, h))

    def _overlap_add(self, pieces: Tensor) -> Tensor:
        """Pieces [B, U, k, sub hop] (frame u's j-th sub-block) -> the final samples.

        Sub-frame u covers sub-blocks u - d .. u - d + k - 1 with d = k - 1 under ``delay``
        (else 0). Offline every sub-block 0 .. U - 1 is returned; streaming keeps the partial
        sums of the k - 1 sub-blocks later frames still add to ([B, k - 1, sub hop]) and
        returns those no later frame touches, less the stream's first d (before sample 0)."""
        b, u, k, h = pieces.shape
        d = k - 1 if self.delay else 0
        # sum[v] over frames: sub-block v = u' - d + j gets pieces[u', j]
        span = u + k - 1
        acc = pieces.new_zeros(b, span, h)
        for j in range(k):
            acc[:, j : j + u] += pieces[:, :, j]
        # acc[i] is sub-block i - d relative to this call's first frame
        if not self._streaming:
            return acc[:, d : d + u].reshape(b, 1, u * h)
        prev = self.__dict__["_buffer"]  # partial sums of the sub-blocks from this call's first frame - d on
        if prev is not None:
            acc[:, : prev.shape[1]] += prev
        final = u  # sub-blocks (from this call's first frame - d) that no later frame reaches
        self.__dict__["_buffer"] = acc[:, final:].clone()
        out = acc[:, :final]
        skip = self.__dict__.get("_skip")
        skip = d if skip is None else skip  # the stream's first d sub-blocks lie before sample 0
        if skip:
            dropped = min(skip, out.shape[1])
            out = out[:, dropped:]
            skip -= dropped
        self.__dict__["_skip"] = skip
        return out.reshape(b, 1, -1)

    def flush(self) -> Tensor | None:
        """Streaming: the samples still held back, float [B, 1, lookahead] (the partial sums
        no later frame will complete), or None when there are none; the stream then starts
        afresh."""
        buf, skip = self.__dict__["_buffer"], self.skip or 0
        self.load_stream_state(None)
        if buf is None or not self.delay:
            return None
        # a stream shorter than the delay still owes its skip: those sub-blocks lie before sample 0
        held = self.lookahead // self.sub_hop
        return buf[:, min(skip, held) : held].reshape(buf.shape[0], 1, -1)

    @property
    def skip(self) -> int | None:
        """Streaming: sub-blocks still to drop at the stream's start (a synthesis delay's, before
        sample 0); None before the first frame (then frame_delay will be) and on the default
        grid's own path (no delay, nothing to drop)."""
        return self.__dict__.get("_skip")

    @skip.setter
    def skip(self, value: int | None) -> None:
        self.__dict__["_skip"] = value

    def load_stream_state(self, state: Tensor | None) -> None:
        super().load_stream_state(state)
        if state is None:
            self.__dict__["_skip"] = None

    def reset_stream(self, streaming: bool) -> None:
        super().reset_stream(streaming)
        self.__dict__["_skip"] = None


@dataclass
class SynthesisSpectra:
    """What losses on a decoder's own spectra read (``Codec.forward(spectra=True)``).

    predicted: the synthesised sub-frames' spectra, complex [B, U, bins] (with gradients);
    target: the spectra that rebuild the input exactly (``CausalISTFT.target_spectra``, no
    gradients); audio: the synthesised waveform [B, 1, U sub hop] (with gradients); grid: the
    synthesis, for ``reanalysed``."""

    predicted: Tensor
    target: Tensor
    audio: Tensor
    grid: CausalISTFT

    def reanalysed(self) -> Tensor:
        """The synthesised waveform's own spectra on the grid, complex [B, U, bins] (with
        gradients): equal to ``predicted`` exactly when the predicted spectra are consistent
        (some waveform has them), which an STFT-consistency loss asks for."""
        return self.grid.target_spectra(self.audio)
