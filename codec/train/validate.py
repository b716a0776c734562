"""Validation: reconstruction losses through the real inference path (encode -> decode), PESQ on
a few utterances, and per-stage code statistics over the whole validation set.

The utterances are split over the ranks and the sums all-reduced, so every rank returns the
same numbers. Codes come from ``Codec.encode`` (the float64 path the bitstream uses), so the
statistics equal a recount made later with the exported model.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import soxr
import torch
from accelerate import Accelerator
from torch import Tensor

from codec.model import Codec
from codec.quant.stats import perplexity, utilisation
from codec.train.losses import CodecLoss

PESQ_RATE = 16000  # wide-band PESQ is defined at 16 kHz


def pesq_score(ref: np.ndarray, deg: np.ndarray, rate: int) -> float:
    """Wide-band PESQ (MOS-LQO) of ``deg`` against ``ref`` (float [L] at ``rate``); NaN when
    the pesq package is missing or the signal has no speech PESQ can find."""
    try:
        from pesq import pesq
    except ImportError:
        return math.nan
    if rate != PESQ_RATE:
        ref, deg = soxr.resample(ref, rate, PESQ_RATE), soxr.resample(deg, rate, PESQ_RATE)
    try:
        return float(pesq(PESQ_RATE, ref.astype(np.float64), deg.astype(np.float64), "wb"))
    except Exception:  # noqa: BLE001 - pesq raises its own types for silent / too-short audio
        return math.nan


def code_statistics(counts: list[Tensor]) -> list[dict[str, float]]:
    """Per stage: perplexity, utilisation and dead codes (codes never used) of counts [K_i]."""
    return [{"perplexity": float(perplexity(c)), "utilisation": float(utilisation(c)),
             "dead_codes": float((c <= 0).sum())} for c in counts]


@torch.no_grad()
def validate(accelerator: Accelerator, codec: Codec, loss_fn: CodecLoss,
             valid: list[tuple[str, Tensor]], pesq_utterances: int, quantized: bool = True) -> dict[str, object]:
    """Returns {"losses": {name: mean over utterances}, "pesq": mean (NaN if none),
    "stages": per-stage statistics (none when not ``quantized``)}. ``quantized`` False scores
    the decoder of the encoder's unquantized latents (a quantizer warm-up). Call on every rank
    (it all-reduces)."""
    was_training = codec.training
    codec.eval()
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    # the SPECTRA_TERMS need the decoder's own spectra: only the unquantized pass has them
    names = ["loss", *loss_fn.reported(with_quantizer=False, with_spectra=not quantized)]
    sums = torch.zeros(len(names) + 2, dtype=torch.float64, device=device)  # + pesq sum, pesq count
    counts = [torch.zeros(k, dtype=torch.float64, device=device) for k in codec.codebook_sizes]
    for j in range(rank, len(valid), world):
        _, wav = valid[j]
        wav = wav.to(device)
        if quantized:
            codes = codec.encode(wav)  # [1, N, F]
            audio, spectra = codec.decode(codes)[..., : wav.shape[-1]], None
        else:
            codes = torch.zeros(1, 0, 0, dtype=torch.long, device=device)
            out = codec(wav, quantize=False, spectra=loss_fn.wants_spectra)
            audio, spectra = out.audio, out.spectra
        total, parts = loss_fn(audio, wav, None, spectra)
        values = {"loss": total, **parts}
        for i, n in enumerate(names):
            sums[i] += float(values[n])
        for s in range(codes.shape[1]):
            counts[s] += torch.bincount(codes[0, s], minlength=counts[s].numel()).to(counts[s])
        if j < pesq_utterances:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                score = pesq_score(wav[0, 0].cpu().numpy(), audio[0, 0].float().cpu().numpy(), codec.sample_rate)
            if not math.isnan(score):
                sums[-2] += score
                sums[-1] += 1
    sums = accelerator.reduce(sums, reduction="sum")
    counts = [accelerator.reduce(c, reduction="sum") for c in counts]
    codec.train(was_training)
    n = max(1, len(valid))
    losses = {name: float(sums[i]) / n for i, name in enumerate(names)}
    return {
        "losses": losses,
        "pesq": float(sums[-2] / sums[-1]) if sums[-1] > 0 else math.nan,
        "stages": code_statistics([c.float().cpu() for c in counts]) if quantized else [],
    }
