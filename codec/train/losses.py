"""The training loss, composed in one place: named terms (auraloss multi-resolution STFT, a
multi-scale log-mel L1 (DAC-style: several window sizes, fewer mel bands for short windows), and
optional waveform L1, power-law compressed complex-spectrum, SI-SDR, DC and level terms, and the quantizer
stack's auxiliary loss), one dict of weights over them
(``LossConfig``, the recipe's ``train.loss``), and ``CodecLoss``, which the training loop,
validation and the benchmark use alike. Audio terms are computed in float32 whatever the
autocast context, because bf16 log-spectra are too coarse to train on.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import auraloss
import librosa
import torch
from torch import Tensor, nn

from codec.nn.stft import SynthesisSpectra


class _MagnitudeSTFTLoss(auraloss.freq.STFTLoss):
    """auraloss's STFTLoss without its phase: auraloss 0.4 computes ``torch.angle`` of every
    spectrum it takes, even when the phase term's weight is 0 (as here), which cost about 5%
    of a training step of the default recipe on a 2-core CPU. The loss value is auraloss's."""

    def stft(self, x: Tensor) -> tuple[Tensor, None]:
        """Audio float [B, T] -> (magnitude [B, fft_size // 2 + 1, frames] as auraloss
        computes it, None in place of the phase)."""
        spec = torch.stft(x, self.fft_size, self.hop_size, self.win_length, self.window, return_complex=True)
        return torch.sqrt(torch.clamp(spec.real.square() + spec.imag.square(), min=self.eps)), None


def multi_resolution_stft(sample_rate: int = 16000) -> nn.Module:
    """auraloss's multi-resolution STFT loss (spectral convergence + log magnitude) with
    window sizes 20 ms to 128 ms at ``sample_rate``, each resolution a ``_MagnitudeSTFTLoss``.
    Call it as loss(pred, target) on float [B, 1, T] audio; returns a scalar."""
    wins = [int(sample_rate * s) for s in (0.02, 0.04, 0.08)]
    ffts = [1 << (w - 1).bit_length() for w in wins]
    hops = [w // 4 for w in wins]
    loss = auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=ffts, hop_sizes=hops, win_lengths=wins)
    loss.stft_losses = nn.ModuleList(_MagnitudeSTFTLoss(f, h, w) for f, h, w in zip(ffts, hops, wins))
    return loss


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

    def log_mel(self, i: int, x: Tensor) -> Tensor:
        """Audio float [B, T] -> log10 mel spectrogram of window ``windows[i]``, [B, bands, frames]."""
        w = self.windows[i]
        spec = torch.stft(x, n_fft=w, hop_length=w // 4, window=getattr(self, f"win{i}"), return_complex=True).abs()
        return torch.log10(torch.matmul(getattr(self, f"fb{i}"), spec).clamp_min(1e-5))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        p_audio, t_audio = pred.squeeze(1).float(), target.squeeze(1).float()
        total = p_audio.new_zeros(())
        for i in range(len(self.windows)):
            with torch.no_grad():  # the target's spectra need no backward pass
                t = self.log_mel(i, t_audio)
            total = total + (self.log_mel(i, p_audio) - t).abs().mean()
        return total / len(self.windows)


class CompressedComplexLoss(nn.Module):
    """Power-law compressed complex-spectrum loss (ESC, arXiv 2404.19441), phase-aware where
    magnitude losses are not: per resolution (n_fft, hop) with a periodic Hann window,
    S_c = S |S|^(c - 1) (magnitude compressed to |S|^c, phase kept), and
    loss = mean over bins of |S_c - T_c|^2 (real and imaginary parts together) + mean over
    bins of (|S_c| - |T_c|)^2,
    averaged over resolutions. |S| is floored at sqrt(1e-8) inside the power so the gradient
    stays finite at silent bins. forward: float [B, 1, T] each -> scalar.
    """

    def __init__(self, resolutions: list, power: float = 0.3) -> None:
        super().__init__()
        self.resolutions = [(int(n), int(h)) for n, h in resolutions]
        self.power = float(power)
        for i, (n, _) in enumerate(self.resolutions):
            self.register_buffer(f"win{i}", torch.hann_window(n), persistent=False)

    def compressed(self, spec: Tensor) -> Tensor:
        """Complex spectrum -> S |S|^(power - 1), complex, same shape."""
        mag2 = spec.real.square() + spec.imag.square() + 1e-8
        return spec * mag2.pow(0.5 * (self.power - 1.0))

    def between(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss between two complex spectra of one shape (compressed here) -> scalar."""
        p, t = self.compressed(pred), self.compressed(target)
        return (p - t).abs().square().mean() + (p.abs() - t.abs()).square().mean()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        p_audio, t_audio = pred.squeeze(1).float(), target.squeeze(1).float()
        total = p_audio.new_zeros(())
        for i, (n, hop) in enumerate(self.resolutions):
            window = getattr(self, f"win{i}")
            with torch.no_grad():  # the target's spectra need no backward pass
                t = torch.stft(t_audio, n_fft=n, hop_length=hop, window=window, return_complex=True)
            total = total + self.between(torch.stft(p_audio, n_fft=n, hop_length=hop, window=window,
                                                    return_complex=True), t)
        return total / len(self.resolutions)


def anti_wrapped(x: Tensor) -> Tensor:
    """|x - 2 pi round(x / 2 pi)|: a phase difference's distance from the nearest whole turn,
    in [0, pi] (APNet's anti-wrapping function)."""
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


def phase_loss(pred: Tensor, target: Tensor) -> Tensor:
    """APNet / APCodec's anti-wrapping phase losses between two complex spectra [B, U, bins]
    (U frames in time): the instantaneous phase, the group delay (its difference along
    frequency) and the instantaneous frequency (along time), each the mean anti-wrapped
    difference, summed -> scalar (0 when the phases agree up to whole turns)."""
    p = torch.atan2(pred.imag, pred.real)
    t = torch.atan2(target.imag, target.real)
    ip = anti_wrapped(p - t).mean()
    gd = anti_wrapped(p.diff(dim=-1) - t.diff(dim=-1)).mean()
    iaf = anti_wrapped(p.diff(dim=-2) - t.diff(dim=-2)).mean()
    return ip + gd + iaf


def si_sdr_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Negative scale-invariant SDR in dB, averaged over the batch: pred, target float
    [B, 1, T] -> scalar (lower is better; invariant to the scale of ``pred``)."""
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    scale = (p * t).sum(1, keepdim=True) / (t.square().sum(1, keepdim=True) + eps)
    proj = scale * t
    ratio = proj.square().sum(1) / ((p - proj).square().sum(1) + eps)
    return -(10.0 * torch.log10(ratio + eps)).mean()


def dc_error(pred: Tensor, target: Tensor) -> Tensor:
    """|mean(pred) - mean(target)| per item (the DC offset the codec adds), averaged over the
    batch: float [B, 1, T] each -> scalar, in full-scale units."""
    return (pred.flatten(1).float().mean(1) - target.flatten(1).float().mean(1)).abs().mean()


def level_error(pred: Tensor, target: Tensor, floor: float = 1e-4) -> Tensor:
    """|ln rms(pred) - ln rms(target)| per item, averaged over the batch: float [B, 1, T] each
    -> scalar in nepers (1 dB = 0.115). ``floor`` (-80 dBFS) is added to the mean square
    (ln sqrt(ms + floor^2)), so a silent crop cannot dominate and a silent output still has a
    gradient. Unlike the spectral distances, which average over bins, it charges a tone
    decoded as silence as much as speech decoded as silence."""
    def log_rms(x: Tensor) -> Tensor:
        return 0.5 * torch.log(x.flatten(1).float().square().mean(1) + floor * floor)
    return (log_rms(pred) - log_rms(target)).abs().mean()


#: The named terms of the training loss, in the order logs list them. "quantizer" is the
#: stack's own auxiliary loss (commitment, codebook); "spectrum" and "phase" compare the
#: decoder's own synthesis spectra with those that rebuild the target, "consistency" with
#: the synthesised waveform's re-analysis (STFT-head decoders); the others compare audio.
TERM_NAMES = ("stft", "mel", "l1", "complex", "spectrum", "phase", "consistency", "sisdr", "dc", "level",
              "quantizer")
#: The terms that read the decoder's own synthesis spectra (CodecOutput.spectra).
SPECTRA_TERMS = ("spectrum", "phase", "consistency")


@dataclass
class LossConfig:
    """The recipe's ``train.loss`` section: one weight per term of TERM_NAMES (0 switches a
    term off) and the mel term's resolutions. The defaults here are the only ones."""

    stft: float = 1.0  # auraloss multi-resolution STFT
    mel: float = 1.0  # multi-scale log-mel L1
    l1: float = 0.0  # waveform L1
    complex: float = 0.0  # power-law compressed complex spectrum (CompressedComplexLoss)
    spectrum: float = 0.0  # the same distance on the synthesis spectra themselves (per sub-frame and bin)
    phase: float = 0.0  # anti-wrapping phase losses on the synthesis spectra (phase_loss)
    consistency: float = 0.0  # STFT consistency: synthesis spectra vs their waveform's re-analysis (MSE)
    sisdr: float = 0.0  # negative SI-SDR in dB
    dc: float = 0.0  # |DC offset out - DC offset in| per crop (dc_error)
    level: float = 0.0  # |log RMS out - log RMS in| per crop, in nepers (level_error)
    quantizer: float = 1.0  # the quantizer stack's auxiliary losses
    mel_windows: list = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])  # samples
    n_mels: list = field(default_factory=lambda: [5, 10, 20, 40, 80, 80, 80])  # per window
    complex_resolutions: list = field(default_factory=lambda: [[320, 80]])  # [n_fft, hop] pairs (ESC's grid)
    complex_power: float = 0.3  # the magnitude compression exponent c

    def validate(self) -> None:
        """ValueError on settings no loss can be computed with."""
        if any(float(w) < 0 for w in self.weights().values()):
            raise ValueError("train.loss weights must be >= 0")
        if len(self.mel_windows) != len(self.n_mels):
            raise ValueError("train.loss.mel_windows and n_mels must have the same length")
        pairs = self.complex_resolutions
        if not pairs or any(not isinstance(p, (list, tuple)) or len(p) != 2 or int(p[1]) < 1 or int(p[0]) < int(p[1])
                            for p in pairs):
            raise ValueError("train.loss.complex_resolutions must be [n_fft, hop] pairs with n_fft >= hop >= 1")
        if not self.complex_power > 0:
            raise ValueError("train.loss.complex_power must be > 0")

    def weights(self) -> dict[str, float]:
        """{term: weight} for every term of TERM_NAMES (DAC's ``lambdas``)."""
        return {name: float(getattr(self, name)) for name in TERM_NAMES}


class CodecLoss(nn.Module):
    """The training objective: sum over terms of weight x term, from one dict of weights.

    forward(pred, target, quantizer_loss=None, spectra=None): audio float [B, 1, T] each, the
    stack's auxiliary loss (a scalar; None where there is none, as in validation through encode
    and decode) and CodecOutput.spectra (SPECTRA_TERMS' input; None leaves them out) ->
    (total scalar, {term: unweighted scalar}: the terms with a non-zero weight and their input,
    and "quantizer" whenever it is given, even at weight 0, so that logs show it). The
    training loop, validation and the benchmark all call it this way.
    """

    def __init__(self, sample_rate: int, cfg: LossConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or LossConfig()
        self.weights = cfg.weights()
        self.stft = multi_resolution_stft(sample_rate)
        self.mel = MultiScaleMelLoss(sample_rate, cfg.mel_windows, cfg.n_mels)
        self.complex = CompressedComplexLoss(cfg.complex_resolutions, cfg.complex_power)

    @property
    def wants_spectra(self) -> bool:
        """Whether a term of SPECTRA_TERMS is on (callers then pass ``spectra``)."""
        return any(self.weights[n] for n in SPECTRA_TERMS)

    def reported(self, with_quantizer: bool = True, with_spectra: bool = True) -> list[str]:
        """The terms ``forward`` returns, in TERM_NAMES order (``with_quantizer``: a quantizer
        loss is passed; ``with_spectra``: the synthesis spectra are)."""
        def on(n: str) -> bool:
            if n == "quantizer":
                return with_quantizer
            return bool(self.weights[n]) and (n not in SPECTRA_TERMS or with_spectra)
        return [n for n in TERM_NAMES if on(n)]

    def forward(self, pred: Tensor, target: Tensor, quantizer_loss: Tensor | None = None,
                spectra: SynthesisSpectra | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        pred, target = pred.float(), target.float()
        with torch.autocast(pred.device.type, enabled=False):
            parts: dict[str, Tensor] = {}
            if self.weights["stft"]:
                parts["stft"] = self.stft(pred, target)
            if self.weights["mel"]:
                parts["mel"] = self.mel(pred, target)
            if self.weights["l1"]:
                parts["l1"] = (pred - target).abs().mean()
            if self.weights["complex"]:
                parts["complex"] = self.complex(pred, target)
            if spectra is not None:
                predicted, wanted = spectra.predicted.to(torch.complex64), spectra.target.to(torch.complex64)
                if self.weights["spectrum"]:
                    parts["spectrum"] = self.complex.between(predicted, wanted)
                if self.weights["phase"]:
                    parts["phase"] = phase_loss(predicted, wanted)
                if self.weights["consistency"]:
                    parts["consistency"] = (predicted - spectra.reanalysed().to(torch.complex64)).abs().square().mean()
            if self.weights["sisdr"]:
                parts["sisdr"] = si_sdr_loss(pred, target)
            if self.weights["dc"]:
                parts["dc"] = dc_error(pred, target)
            if self.weights["level"]:
                parts["level"] = level_error(pred, target)
            if quantizer_loss is not None:
                parts["quantizer"] = quantizer_loss.float()
            total = sum((self.weights[k] * v for k, v in parts.items()), pred.new_zeros(()))
        return total, parts
