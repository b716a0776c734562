"""Waveform faithfulness of a codec, what a listener notices before PESQ does: a DC offset the
input did not have, a level change, and tones that do not come back.

``speech_faithfulness`` compares input and decoded speech (DC offset and RMS level);
``tone_gains`` sends pure tones through and returns their output/input level in dB.
``decode_through`` is the round trip both use: the model's offline encode and decode at its
full bitrate (the codes a bitstream would carry), trimmed to the input's length.
``Unquantized(model)`` puts the same measurements on the model's autoencoder alone (the
quantizer bypassed), which tells a loss in the stack from one in the encoder or decoder.
"""
from __future__ import annotations

import math

import numpy as np
import torch

#: The tones of the faithfulness check (Hz) and their amplitude (a full-scale sine is 1.0).
TONE_FREQUENCIES = (100, 200, 300, 500, 1000, 2000, 3000, 4000)
TONE_AMPLITUDE = 0.3


def decode_through(model, x: np.ndarray, n_q: int | None = None) -> np.ndarray:
    """Mono float audio [T] at the model's rate -> decode(encode(x)) [T] (``n_q`` stages, all by
    default), float32, offline."""
    with torch.inference_mode():
        wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
        y = model.decode(model.encode(wav, n_q))
    return y[0, 0, : len(x)].numpy()


class Unquantized:
    """A ``Codec`` seen through its quantizer-bypassed path, with the encode / decode interface
    the functions here use: ``encode`` keeps the audio float [B, 1, T] as it is and ``decode``
    runs encoder -> decoder on it with no stage in between (``Codec.forward(quantize=False)``,
    the path the unquantized validation score takes) -> float [B, 1, T]."""

    def __init__(self, model) -> None:
        self.model = model
        self.sample_rate = model.sample_rate

    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Audio float [B, 1, T] -> the same tensor (``n_q`` is ignored: there is no stage)."""
        return wav

    def decode(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio float [B, 1, T] -> decoder(encoder(audio)) float [B, 1, T], in eval mode (the
        model's own mode restored after)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(wav, quantize=False).audio
        finally:
            self.model.train(was_training)


def level_db(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (-inf for silence)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def speech_faithfulness(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Input and decoded audio [T] each -> {"dc_in", "dc_out": means, "dc_error": dc_out - dc_in,
    "level_error_db": level(y) - level(x)}."""
    dc_in, dc_out = float(np.mean(x, dtype=np.float64)), float(np.mean(y, dtype=np.float64))
    return {"dc_in": dc_in, "dc_out": dc_out, "dc_error": dc_out - dc_in, "level_error_db": level_db(y) - level_db(x)}


def tone(freq: float, sample_rate: int, seconds: float = 1.0, amplitude: float = TONE_AMPLITUDE) -> np.ndarray:
    """A sine of ``freq`` Hz, float32 [seconds x sample_rate]."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def tone_gains(model, frequencies=TONE_FREQUENCIES, seconds: float = 1.0, settle: float = 0.2) -> dict[float, float]:
    """Per frequency (Hz): output level minus input level in dB of a ``TONE_AMPLITUDE`` sine of
    ``seconds`` through ``decode_through``, measured after the first ``settle`` seconds (the
    causal layers' start-up)."""
    sr = model.sample_rate
    skip = int(settle * sr)
    out = {}
    for f in frequencies:
        x = tone(f, sr, seconds)
        y = decode_through(model, x)
        out[f] = level_db(y[skip:]) - level_db(x[skip:])
    return out
