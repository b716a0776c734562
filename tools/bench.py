#!/usr/bin/env python
"""Speed benchmark of the codec, side by side with EnCodec's 24 kHz model at 6 kbps.

    python tools/bench.py                       # the full table (base recipe, random weights)
    python tools/bench.py --quick               # seconds, not minutes (smoke test settings)
    python tools/bench.py --json out.json       # also write every number as JSON

Every timing is the median of ``--repeats`` runs after ``--warmup`` runs. RTF (real-time
factor) = seconds of compute per second of audio; "x EnCodec" = our time / EnCodec's time.

What it measures (each with 1 thread and with all threads, ``--threads``):
- offline encode / decode of a ``--seconds`` clip (default 10 s);
- streaming encode / decode in 20 ms and 320 ms chunks (``--chunks``), with float32 weights
  and, for models with linear layers (ConvNeXt), with int8 weights (``Codec.int8``); batch-1
  streams run in the native frame engine (``codec.runtime.native``), and the "PyTorch layers" rows
  repeat the float32 ones with it switched off (``Codec.native = False``); the "onnxruntime"
  rows stream 20 ms chunks through the model's ONNX export (``codec export``) instead;
- per-chunk cost over a ``--stream-seconds`` stream (default 60 s, 20 ms chunks, encode +
  decode of each chunk): the mean and the median of the last 10 s over those of the first
  10 s, float32 and int8;
- peak memory (RSS growth of a fresh process running one offline encode + decode);
- bitstream pack / unpack (fixed-width) and range coding / decoding (constriction) of the
  clip's codes, also as a share of the encode time;
- nearest-neighbour search time per stage for K = 1024 ... 65536 (fp32, the default encode
  path, and fp64, exact mode);
- a training step of the recipe on the CPU (batch and crop from the recipe) and seconds of
  audio trained per second;
- multiply-adds per second of audio (convolutions, LSTMs, linear layers, code search)
  for our model and for EnCodec's.

EnCodec (the ``encodec`` package, random weights: speed does not depend on them) imports
torchaudio for file I/O only; torchaudio cannot load beside the CPU torch used here, so this
script puts an empty stub module in its place before importing encodec (nothing here uses it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from codec import Codec
from codec.nn.conv import CausalConv1d
from codec.runtime import native
from codec.runtime.native.engine import unsupported

ALL = "all"


# ----- timing helpers ---------------------------------------------------------------------------
def timeit(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def set_threads(n: int | str) -> int:
    count = os.cpu_count() or 1 if n == ALL else int(n)
    torch.set_num_threads(count)
    return count


# ----- EnCodec --------------------------------------------------------------------------------------
def load_encodec(bandwidth: float = 6.0):
    """EnCodec 24 kHz (random weights) at ``bandwidth`` kbps, or None if not installed."""
    if "torchaudio" not in sys.modules:
        # encodec imports torchaudio only for audio file I/O; stub it (see the module docstring).
        stub = types.ModuleType("torchaudio")
        stub.__dict__["__bench_stub__"] = True
        sys.modules["torchaudio"] = stub
    try:
        import warnings

        from encodec import EncodecModel
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = EncodecModel.encodec_model_24khz(pretrained=False)
    except ImportError:
        return None
    model.set_target_bandwidth(bandwidth)
    return model.eval()


# ----- multiply-add counting ------------------------------------------------------------------------
def count_macs(model: nn.Module, run: Callable[[], object]) -> int:
    """Multiply-adds of ``run()`` in ``model``'s convolutions, LSTMs and linear layers, from
    the shapes the layers actually see (forward hooks on the conv and LSTM modules; every
    ``torch.nn.functional.linear`` call, module or not, since the ConvNeXt blocks call it
    directly). Our CausalConv1d is counted as a whole (its inner Conv1d is skipped so
    nothing counts twice). Element-wise work (activations, norms, additions) and FFTs (the
    ConvNeXt model's STFTs: ~0.6 M real multiply-adds per second of audio each way) are not
    counted."""
    total = [0]
    inner = {id(m.conv) for m in model.modules() if isinstance(m, CausalConv1d)}

    def conv_hook(mod, inp, out):
        conv = mod.conv if isinstance(mod, CausalConv1d) else mod
        k = conv.kernel_size[0]
        total[0] += out.numel() * (conv.in_channels // conv.groups) * k

    def tconv_hook(mod, inp, out):
        x = inp[0]
        total[0] += x.numel() * (mod.out_channels // mod.groups) * mod.kernel_size[0]


    def lstm_hook(mod, inp, out):
        x = inp[0]
        steps = x.numel() // x.shape[-1]  # time x batch
        dirs = 2 if mod.bidirectional else 1
        h = mod.hidden_size
        for layer in range(mod.num_layers):
            i = mod.input_size if layer == 0 else h * dirs
            total[0] += steps * dirs * 4 * h * (i + h)

    handles = []
    for m in model.modules():
        if isinstance(m, CausalConv1d) or isinstance(m, nn.Conv1d) and id(m) not in inner:
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.ConvTranspose1d):
            handles.append(m.register_forward_hook(tconv_hook))
        elif isinstance(m, nn.LSTM):
            handles.append(m.register_forward_hook(lstm_hook))
    functional_linear = nn.functional.linear

    def counted_linear(x, weight, bias=None):
        out = functional_linear(x, weight, bias)
        total[0] += out.numel() * weight.shape[1]
        return out

    nn.functional.linear = counted_linear
    try:
        with torch.no_grad():
            run()
    finally:
        nn.functional.linear = functional_linear
        for h in handles:
            h.remove()
    return total[0]


def our_macs(model: Codec, seconds: float = 1.0) -> dict[str, float]:
    """Multiply-adds per second of audio: encoder, code search (with its projections),
    decoder."""
    wav = torch.zeros(1, 1, int(seconds * model.sample_rate))
    enc = count_macs(model.encoder, lambda: model.encoder(wav))
    frames = model.frame_rate * seconds
    # per stage: the distance matmul in the code space, plus the projection into it
    search = frames * sum(st.codebook_size * st.quantizer.dim + (model.cfg.latent_dim * st.quantizer.dim
                                                                 if st.projected else 0)
                          for st in model.quantizer.stages)
    z = torch.zeros(1, model.cfg.latent_dim, int(frames))
    dec = count_macs(model.decoder, lambda: model.decoder(z))
    return {"encoder": enc / seconds, "search": search / seconds, "decoder": dec / seconds}


def encodec_macs(model, seconds: float = 1.0) -> dict[str, float]:
    wav = torch.zeros(1, 1, int(seconds * model.sample_rate))
    enc = count_macs(model.encoder, lambda: model.encoder(wav))
    frames = model.frame_rate * seconds
    n_q = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, model.bandwidth)
    search = frames * n_q * model.quantizer.bins * model.quantizer.dimension
    z = torch.zeros(1, model.quantizer.dimension, int(frames))
    dec = count_macs(model.decoder, lambda: model.decoder(z))
    return {"encoder": enc / seconds, "search": search / seconds, "decoder": dec / seconds}


# ----- our model ---------------------------------------------------------------------------------------
def stream_encode(model: Codec, wav: torch.Tensor, chunk: int) -> torch.Tensor:
    with model.streaming():
        parts = [model.encode(wav[..., i : i + chunk]) for i in range(0, wav.shape[-1], chunk)]
        parts.append(model.flush())
    return torch.cat(parts, dim=-1)


def export_for_bench(model: Codec, folder: str) -> str | None:
    """``model``'s ONNX streaming steps in ``folder`` (codec.runtime.export), or None where
    onnxruntime / onnx are missing or the architecture has no per-frame step."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from codec.runtime.export import ExportError, export_onnx

    try:
        export_onnx(model, folder)
    except ExportError:
        return None
    return folder


def onnx_stream_times(folder: str, wav: torch.Tensor, codes: torch.Tensor, threads: int, repeats: int,
                      warmup: int, seconds: float) -> dict[str, float]:
    """RTF of onnxruntime streaming (codec.runtime.onnx_stream) in 20 ms chunks with ``threads``
    intra-op threads: {"stream_encode_20ms_onnxruntime", "stream_decode_20ms_onnxruntime"}."""
    from codec.runtime.onnx_stream import OnnxStream

    stream = OnnxStream(folder, threads=threads)
    x, c = wav[0, 0].numpy(), codes[0].numpy()
    hop = stream.hop

    def encode() -> None:
        stream.reset()
        for i in range(0, len(x), hop):
            stream.encode(x[i:i + hop])
        stream.flush()

    def decode() -> None:
        stream.reset()
        for i in range(c.shape[1]):
            stream.decode(c[:, i:i + 1])
        stream.flush_decoder()

    return {"stream_encode_20ms_onnxruntime": timeit(encode, repeats, warmup) / seconds,
            "stream_decode_20ms_onnxruntime": timeit(decode, repeats, warmup) / seconds}


def stream_decode(model: Codec, codes: torch.Tensor, frames: int) -> torch.Tensor:
    with model.streaming():
        return torch.cat([model.decode(codes[..., t : t + frames])
                          for t in range(0, codes.shape[-1], frames)], dim=-1)


def flatness(model: Codec, seconds: float, chunk: int, window: float = 10.0) -> dict[str, float]:
    """Stream ``seconds`` of audio in ``chunk``-sample chunks (encode, then decode the frames
    it completed); per-chunk times of the first and last ``window`` seconds.

    Also a paired measurement that a slowly changing machine (another tenant, memory
    bandwidth drifting over the minute the stream takes) cannot bias: the last ``window``
    seconds of a ``seconds``-long stream and the first ``window`` seconds of a fresh stream
    (a second copy of the model), chunk by chunk in alternation, so both windows run at the
    same time; ``paired_ratio`` is the ratio of their median chunk times."""
    sr = model.sample_rate
    gen = torch.Generator().manual_seed(1)
    wav = 0.1 * torch.randn(1, 1, int(seconds * sr), generator=gen)
    times = []
    with torch.no_grad(), model.streaming():
        for i in range(0, wav.shape[-1], chunk):
            t0 = time.perf_counter()
            codes = model.encode(wav[..., i : i + chunk])
            model.decode(codes)
            times.append(time.perf_counter() - t0)
    n = max(1, int(min(window, seconds / 2) * sr / chunk))
    first, last = statistics.mean(times[:n]), statistics.mean(times[-n:])
    # The median per window as well: on a shared machine a few slow chunks (another tenant,
    # a page fault) move the mean by more than the code's own per-chunk cost changes.
    first_med, last_med = statistics.median(times[:n]), statistics.median(times[-n:])

    fresh_model = type(model)(model.cfg).eval()
    fresh_model.load_state_dict(model.state_dict())
    fresh_model.int8, fresh_model.native = model.int8, model.native
    starts = list(range(0, wav.shape[-1], chunk))
    late, fresh = [], []
    with torch.no_grad(), model.streaming(), fresh_model.streaming():
        for i in starts[:-n]:  # the long stream up to its last window, untimed
            model.decode(model.encode(wav[..., i : i + chunk]))
        for i, j in zip(starts[-n:], starts[:n]):
            t0 = time.perf_counter()
            model.decode(model.encode(wav[..., i : i + chunk]))
            t1 = time.perf_counter()
            fresh_model.decode(fresh_model.encode(wav[..., j : j + chunk]))
            late.append(t1 - t0)
            fresh.append(time.perf_counter() - t1)
    return {"first_ms": 1e3 * first, "last_ms": 1e3 * last, "ratio": last / first,
            "first_median_ms": 1e3 * first_med, "last_median_ms": 1e3 * last_med,
            "median_ratio": last_med / first_med, "rtf": sum(times) / seconds, "chunks": len(times),
            "seconds": seconds, "paired_late_median_ms": 1e3 * statistics.median(late),
            "paired_fresh_median_ms": 1e3 * statistics.median(fresh),
            "paired_ratio": statistics.median(late) / statistics.median(fresh)}


def peak_memory(recipe: str, seconds: float) -> dict[str, float]:
    """RSS growth (MiB) of a fresh process for one offline encode + decode of ``seconds``."""
    out = subprocess.run([sys.executable, __file__, "--_memprobe", recipe, str(seconds)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _memprobe(recipe: str, seconds: float) -> None:
    """Print the peak RSS growth of one offline encode + decode, as JSON (MiB).

    ``ru_maxrss`` is no use here: Linux carries the parent's high-water mark across fork and
    exec, so a child of the (large) benchmark process reports the parent's peak. VmHWM,
    reset after the warm-up through /proc/self/clear_refs, is this process's own peak.
    """
    torch.set_num_threads(1)
    model = Codec.from_config(recipe).eval()
    wav = 0.1 * torch.randn(1, 1, int(seconds * model.sample_rate))
    with torch.no_grad():
        model.decode(model.encode(wav[..., : model.hop_length]))  # lazy inits, caches
    base = _proc_status_mib("VmRSS")
    if base is None or not _reset_peak():
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with torch.no_grad():
            model.decode(model.encode(wav))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        with torch.no_grad():
            model.decode(model.encode(wav))
        peak = _proc_status_mib("VmHWM") or base
    print(json.dumps({"baseline_mib": base, "peak_mib": peak, "growth_mib": peak - base}))


def bitstream_times(model: Codec, codes: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Pack / unpack and range-code / decode ``codes`` [1, N, F]; seconds per call."""
    from codec.bitstream import entropy
    from codec.bitstream.packing import pack_codes, unpack_codes
    from codec.bitstream.priors import Priors

    c = codes[0].numpy()
    n, f = c.shape
    widths = tuple(math.ceil(math.log2(k)) for k in model.codebook_sizes[:n])
    data = pack_codes(c, widths)
    assert np.array_equal(unpack_codes(data, f, widths), c)
    counts = [np.bincount(row, minlength=k) for row, k in zip(c, model.codebook_sizes)]
    priors = Priors.from_counts(counts, b"\0" * 16, f)
    blocks = [c[:, i : i + 256] for i in range(0, f, 256)]  # the container's records
    records = [entropy.encode_record(b, priors) for b in blocks]
    return {
        "pack": timeit(lambda: pack_codes(c, widths), repeats, warmup),
        "unpack": timeit(lambda: unpack_codes(data, f, widths), repeats, warmup),
        "range_encode": timeit(lambda: [entropy.encode_record(b, priors) for b in blocks], repeats, warmup),
        "range_decode": timeit(lambda: [entropy.decode_record(r, b.shape[1], n, priors)
                                        for r, b in zip(records, blocks)], repeats, warmup),
        "bytes_fixed": len(data), "bytes_range": sum(len(r) + 4 for r in records),
    }


def search_times(ks: list[int], dim: int, rows: int, repeats: int, warmup: int,
                 dtype: torch.dtype = torch.float32) -> dict[int, float]:
    """Seconds per call of one stage's nearest-neighbour search over ``rows`` rows, in ``dtype``
    (float32: the default encode; float64: exact mode), codebook terms precomputed as the
    model caches them."""
    from codec.quant.search import codebook_norms, nearest

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=gen, dtype=dtype)
    out = {}
    for k in ks:
        book = torch.randn(k, dim, generator=gen)
        norms = codebook_norms(book, dtype)  # cached per codebook in the model
        out[k] = timeit(lambda b=book, n=norms: nearest(x, b, n), repeats, warmup)
    return out


def train_step_time(recipe: str, repeats: int, warmup: int, batch: int | None, crop: float | None) -> dict[str, float]:
    """One optimizer step (forward, losses, backward, AdamW) on random audio, fp32 on the CPU:
    the training loop's own ``train_step`` and ``CodecLoss``, one process, one micro-batch; and
    the same step under bf16 autocast (``train.mixed_precision: bf16``: the model's layers in
    bfloat16, the losses and the quantizer in float32), "bf16_step_s" / "bf16_audio_s_per_s";
    the two kinds of step alternate, medians of ``repeats`` each."""
    from codec.train.config import load_training_recipe
    from codec.train.losses import CodecLoss
    from codec.train.optim import build_optimizer
    from codec.train.step import TrainStep, train_step

    _, model_cfg, cfg = load_training_recipe(recipe)
    batch = batch or cfg.batch_size
    crop = crop or cfg.data.crop_seconds
    torch.manual_seed(0)
    codec = Codec(model_cfg).train()
    step = TrainStep(codec)
    opt, sched = build_optimizer(step, cfg)
    loss_fn = CodecLoss(codec.sample_rate, cfg.loss)
    wav = 0.1 * torch.randn(batch, 1, int(crop * codec.sample_rate))

    def one() -> None:
        train_step(step, loss_fn, opt, sched, [wav], cfg.clip_grad_norm)

    def one_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            one()

    # fp32 and bf16 steps alternate, so that a drift of the host's speed hits both alike
    for _ in range(warmup):
        one()
        one_bf16()
    pairs = [(timeit(one, 1, 0), timeit(one_bf16, 1, 0)) for _ in range(max(1, repeats))]
    t, t_bf16 = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    parts = train_step_parts(codec, loss_fn, wav, repeats, warmup)
    parts["backward and optimizer (the rest)"] = max(0.0, t - sum(parts.values()))
    # The FLOP limit: a training step costs about 3 forward passes (the backward two), 2 FLOPs
    # per multiply-add, at the float32 matrix-product peak this process reaches.
    macs = sum(our_macs(codec.eval()).values())
    codec.train()
    peak = matmul_peak_flops(repeats, warmup)
    limit = peak / (3 * 2 * macs)
    return {"step_s": t, "batch": batch, "crop_s": crop, "audio_s_per_s": batch * crop / t, "parts": parts,
            "bf16_step_s": t_bf16, "bf16_audio_s_per_s": batch * crop / t_bf16,
            "forward_macs_per_audio_s": macs, "peak_gflops": peak / 1e9, "flop_limit_audio_s_per_s": limit}


def stream_floor(model: Codec, repeats: int, warmup: int) -> dict[str, float]:
    """An estimate of the memory floor of a batch-1 stream in the native frame engine (one
    thread): every frame reads the engines' weights in full (``FrameEngine.weight_bytes``), so
    a 20 ms frame through encoder and decoder costs at least the time one thread takes to read
    that many bytes; here two buffers of the encoder's and the decoder's sizes, read one after
    the other by a float32 dot product (BLAS, the fastest full read PyTorch offers), best of
    at least 20 runs. The engine reads 8 weight streams side by side, which can beat one
    stream's rate, so this is an estimate, not a bound. Returns {"bytes", "bytes_int8": per
    frame; "read_gb_s", "read_gb_s_int8"; "rtf", "rtf_int8": reading seconds per second of
    audio, float32 and int8 weights}."""
    from codec.runtime.native.engine import FrameEngine

    lib, out = native.load(), {}
    frame_s = model.hop_length / model.sample_rate
    for suffix, int8 in (("", False), ("_int8", True)):
        sizes = [FrameEngine(lib, getattr(model, part), model.quantizer, part, int8).weight_bytes
                 for part in ("encoder", "decoder")]
        bufs = [torch.ones(n // 4) for n in sizes]
        n = sum(sizes)

        def read(bufs: list = bufs) -> None:
            for b in bufs:
                torch.dot(b, b)
        for _ in range(max(1, warmup)):
            read()
        best = min(timeit(read, 1, 0) for _ in range(max(20, repeats)))
        out.update({f"bytes{suffix}": n, f"read_gb_s{suffix}": n / best / 1e9, f"rtf{suffix}": best / frame_s})
    return out


def matmul_peak_flops(repeats: int, warmup: int, n: int = 1024) -> float:
    """FLOP/s of a float32 n x n matrix product at the current thread count (the machine's
    practical peak for the dense layers)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timeit(lambda: a @ b, max(3, repeats), warmup)


def train_step_parts(codec: Codec, loss_fn, wav: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Seconds per training step spent in: the encoder, quantizer and decoder forward passes
    (training mode, without building the autograd graph, whose cost the remainder of the step
    carries; the quantizer's EMA statistics move as in a step) and each loss term's forward and
    backward (on a detached reconstruction, so the model's own backward is not counted twice)."""
    out: dict[str, float] = {}
    with torch.no_grad():
        out["encoder forward"] = timeit(lambda: codec.encoder(wav), repeats, warmup)
        z = codec.encoder(wav)
        out["quantizer forward (search, EMA, restarts, statistics)"] = timeit(lambda: codec.quantizer(z), repeats, warmup)
        out["decoder forward"] = timeit(lambda: codec.decoder(z), repeats, warmup)
        res = codec(wav, spectra=loss_fn.wants_spectra)
    pred = res.audio.detach()
    for name in loss_fn.reported(with_quantizer=False):
        def term(name: str = name) -> None:
            p = pred.clone().requires_grad_(True)
            spectra = None
            if res.spectra is not None:
                spec = res.spectra.predicted.detach().clone().requires_grad_(True)
                spectra = type(res.spectra)(spec, res.spectra.target, p, res.spectra.grid)
            single = {k: (v if k == name else 0.0) for k, v in loss_fn.weights.items()}
            saved, loss_fn.weights = loss_fn.weights, single
            try:
                loss_fn(p, wav, None, spectra)[0].backward()
            finally:
                loss_fn.weights = saved
        out[f"loss {name} (forward + backward)"] = timeit(term, repeats, warmup)
    return out


# ----- the run ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    """Every measurement of the module docstring; torch's thread count is restored after."""
    threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict:
    res: dict = {"recipe": args.recipe, "seconds": args.seconds, "machine": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "torch": torch.__version__, "load_before": os.getloadavg()}
    torch.manual_seed(0)
    model = Codec.from_config(args.recipe).eval()
    sr = model.sample_rate
    gen = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(1, 1, int(args.seconds * sr), generator=gen)
    enc = None if args.no_encodec else load_encodec(6.0)
    res["encodec"] = enc is not None
    if enc is not None:
        ewav = 0.1 * torch.randn(1, 1, int(args.seconds * enc.sample_rate), generator=gen)
    rep, warm, sec = args.repeats, args.warmup, args.seconds

    res["macs"] = {"ours": our_macs(model)}
    if enc is not None:
        res["macs"]["encodec"] = encodec_macs(enc)

    # int8 weights (Codec.int8) only change the ConvNeXt layers' linear products.
    int8 = not args.no_int8 and any(isinstance(m, nn.Linear) for m in model.encoder.modules())
    res["int8"] = int8
    res["native"] = native.load() is not None and unsupported(model.encoder, model.quantizer, "encoder") is None
    res["threads"] = {}
    onnx_tmp = tempfile.TemporaryDirectory(prefix="bench-onnx-") if not args.no_onnx else None
    onnx_dir = export_for_bench(model, onnx_tmp.name) if onnx_tmp is not None else None
    res["onnxruntime"] = onnx_dir is not None
    for spec in args.threads.split(","):
        n = set_threads(spec)
        r: dict = {"threads": n}
        with torch.no_grad():
            codes = model.encode(wav)
            r["encode"] = timeit(lambda: model.encode(wav), rep, warm) / sec
            r["decode"] = timeit(lambda c=codes: model.decode(c), rep, warm) / sec
            model.exact = True
            r["encode_exact"] = timeit(lambda: model.encode(wav), rep, warm) / sec
            model.exact = False
            # Streams of batch 1 run in the native frame engine when it is available; the
            # "_pytorch" rows switch it off (model.native = False) to show what it replaces.
            modes = ["", "_int8"] if int8 else [""]
            if res["native"]:
                modes.append("_pytorch")
            for precision in modes:
                model.int8 = precision == "_int8"
                model.native = precision != "_pytorch"
                ref = codes if not model.int8 else model.encode(wav)
                for chunk in args.chunks:
                    frames = max(1, chunk // model.hop_length)
                    ms = round(1000 * chunk / sr)
                    # A near-tie may flip a code between chunked and whole (fp32 and int8 alike);
                    # int8's bf16 rounding makes that more frequent (tests/test_frame_engine.py).
                    agree = (stream_encode(model, wav, chunk) == ref).float().mean().item()
                    floor = 0.9 if model.int8 else 0.95
                    assert agree > floor, f"streamed codes agree with offline codes on only {agree:.1%}"
                    r[f"stream_encode_{ms}ms{precision}"] = timeit(
                        lambda n=chunk: stream_encode(model, wav, n), rep, warm) / sec
                    r[f"stream_decode_{ms}ms{precision}"] = timeit(
                        lambda c=ref, f=frames: stream_decode(model, c, f), rep, warm) / sec
            model.int8, model.native = False, True
            if onnx_dir is not None:
                r.update(onnx_stream_times(onnx_dir, wav, codes, n, rep, warm, sec))
            if enc is not None:
                frames_e = enc.encode(ewav)
                r["encodec_encode"] = timeit(lambda: enc.encode(ewav), rep, warm) / sec
                r["encodec_decode"] = timeit(lambda fe=frames_e: enc.decode(fe), rep, warm) / sec
                r["ratio_vs_encodec"] = (r["encode"] + r["decode"]) / (r["encodec_encode"] + r["encodec_decode"])
        res["threads"][str(spec)] = r

    set_threads(1)
    if res["native"] and unsupported(model.decoder, model.quantizer, "decoder") is None:
        res["stream_floor"] = stream_floor(model, rep, warm)
    with torch.no_grad():
        codes = model.encode(wav)
        encode_s = timeit(lambda: model.encode(wav), rep, warm)
    bs = bitstream_times(model, codes, max(rep, 5), warm)
    bs["fixed_share_of_encode"] = (bs["pack"] + bs["unpack"]) / encode_s
    bs["range_share_of_encode"] = (bs["range_encode"] + bs["range_decode"]) / encode_s
    bs["per_audio_second"] = {k: bs[k] / sec for k in ("pack", "unpack", "range_encode", "range_decode")}
    res["bitstream"] = bs

    rows = round(model.frame_rate * sec)
    for name, dtype in (("search_per_stage", torch.float32), ("search_per_stage_exact", torch.float64)):
        st = search_times(args.ks, model.cfg.latent_dim, rows, rep, warm, dtype)
        res[name] = {str(k): v / sec for k, v in st.items()}  # seconds per audio second

    if args.stream_seconds > 0:
        res["flatness"] = flatness(model, args.stream_seconds, args.flat_chunk)
        if int8:
            model.int8 = True
            res["flatness_int8"] = flatness(model, args.stream_seconds, args.flat_chunk)
            model.int8 = False
    if not args.no_memory:
        res["memory"] = peak_memory(args.recipe, sec)
    if not args.no_train:
        set_threads(ALL)
        res["train"] = train_step_time(args.recipe, max(1, rep // 2), 1, args.train_batch, args.train_crop)
        res["train"]["threads"] = torch.get_num_threads()
    res["load_after"] = os.getloadavg()
    return res


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(res: dict) -> str:
    lines = [(f"Recipe `{res['recipe']}` (random weights), {res['seconds']:g} s clip, torch {res['torch']}, "
             f"{res['cpus']} CPUs; load average before / after: {res['load_before'][0]:.2f} / {res['load_after'][0]:.2f}."),
             "", ("Streams of batch 1 ran in the native frame engine (`codec.runtime.native`, single-threaded C)."
                  if res.get("native") else "The native frame engine was not available: streams ran in PyTorch."),
             "", "Real-time factor (seconds of compute per second of audio; lower is faster):", ""]
    specs = list(res["threads"])
    lines.append("| | " + " | ".join(f"{res['threads'][s]['threads']} thread(s)" for s in specs) + " |")
    lines.append("| --- |" + " --- |" * len(specs))
    keys = ["encode", "encode_exact", "decode"] + [k for k in res["threads"][specs[0]] if k.startswith("stream_")]
    if res["encodec"]:
        keys += ["encodec_encode", "encodec_decode", "ratio_vs_encodec"]
    names = {"encode_exact": "encode, exact mode (fp64)", "ratio_vs_encodec": "ours / EnCodec (encode + decode)", "encodec_encode": "EnCodec 24 kHz 6 kbps encode",
             "encodec_decode": "EnCodec 24 kHz 6 kbps decode"}
    for k in keys:
        label = names.get(k, k.replace("_", " "))
        if label.endswith(" int8"):
            label = label[: -len(" int8")] + ", int8 weights"
        if label.endswith(" onnxruntime"):
            label = label[: -len(" onnxruntime")] + ", onnxruntime (codec export)"
        if label.endswith(" pytorch"):
            label = label[: -len(" pytorch")] + ", PyTorch layers (engine off)"
        lines.append(f"| {label} | " + " | ".join(fmt(res["threads"][s].get(k)) for s in specs) + " |")
    if "stream_floor" in res:
        f, one = res["stream_floor"], next((r for r in res["threads"].values() if r["threads"] == 1), {})

        def measured(suffix: str) -> str:
            keys = [f"stream_encode_20ms{suffix}", f"stream_decode_20ms{suffix}"]
            return f", measured {sum(one[k] for k in keys):.4f}" if all(k in one for k in keys) else ""
        lines += ["", (f"Memory floor of 20 ms streaming (encode + decode, one thread): a frame reads "
                  f"{f['bytes'] / 1e6:.1f} MB of engine weights in float32, {f['bytes_int8'] / 1e6:.1f} MB with int8 "
                  f"weights; one thread reads buffers of those sizes at {f['read_gb_s']:.1f} / {f['read_gb_s_int8']:.1f} GB/s "
                  f"here (a float32 dot product, best of 20), so reading them alone takes RTF {f['rtf']:.4f}"
                  f"{measured('')} (float32) and {f['rtf_int8']:.4f}{measured('_int8')} (int8).")]
    m = res["macs"]
    lines += ["", "Multiply-adds per second of audio (millions):", "",
              "| model | encoder | code search | decoder | total |", "| --- | --- | --- | --- | --- |"]
    for name, d in m.items():
        lines.append(f"| {name} | {d['encoder'] / 1e6:.0f} | {d['search'] / 1e6:.0f} | {d['decoder'] / 1e6:.0f} | "
                     f"{sum(d.values()) / 1e6:.0f} |")
    for key, what in (("flatness", "float32"), ("flatness_int8", "int8 weights")):
        if key in res:
            f = res[key]
            lines += ["", (f"Streaming {f['chunks']} chunks, {what} (encode + decode each): first 10 s "
                      f"{f['first_ms']:.3f} ms/chunk, last 10 s {f['last_ms']:.3f} ms/chunk (mean ratio {f['ratio']:.3f}; "
                      f"medians {f['first_median_ms']:.3f} / {f['last_median_ms']:.3f} ms, ratio {f['median_ratio']:.3f}), "
                      f"RTF {f['rtf']:.3f}. Paired (the last 10 s of a {f['seconds']:g} s stream and the first 10 s of a "
                      f"fresh one, chunks alternating): medians {f['paired_late_median_ms']:.3f} / "
                      f"{f['paired_fresh_median_ms']:.3f} ms, ratio {f['paired_ratio']:.3f}.")]
    b = res["bitstream"]
    lines += ["", (f"Bitstream (1 thread, per second of audio): pack {1e3 * b['per_audio_second']['pack']:.3f} ms, "
              f"unpack {1e3 * b['per_audio_second']['unpack']:.3f} ms ({100 * b['fixed_share_of_encode']:.2f}% of "
              f"encoding); range encode {1e3 * b['per_audio_second']['range_encode']:.3f} ms, decode "
              f"{1e3 * b['per_audio_second']['range_decode']:.3f} ms ({100 * b['range_share_of_encode']:.2f}% of encoding).")]
    lines += ["", "Nearest-neighbour search, one stage, ms per second of audio (fp32 default / fp64 exact): " +
              ", ".join(f"K={k}: {1e3 * v:.2f} / {1e3 * res['search_per_stage_exact'][k]:.2f}"
                        for k, v in res["search_per_stage"].items()) + "."]
    if "memory" in res:
        mem = res["memory"]
        lines += ["", (f"Peak memory of an offline encode + decode: +{mem['growth_mib']:.0f} MiB over "
                  f"{mem['baseline_mib']:.0f} MiB (RSS).")]
    if "train" in res:
        t = res["train"]
        lines += ["", (f"Training step on the CPU ({t['threads']} threads, batch {t['batch']} x {t['crop_s']:g} s): "
                  f"{t['step_s']:.2f} s, {t['audio_s_per_s']:.2f} s of audio per second "
                  f"({t['audio_s_per_s'] / t['flop_limit_audio_s_per_s']:.2f} of the FLOP limit, "
                  f"{t['flop_limit_audio_s_per_s']:.0f} s/s: 3 x {t['forward_macs_per_audio_s'] / 1e6:.0f} M multiply-adds "
                  f"per second of audio at the {t['peak_gflops']:.0f} GFLOP/s of a 1024^2 float32 matmul); "
                  f"under bf16 autocast (`train.mixed_precision: bf16`) {t['bf16_step_s']:.2f} s, "
                  f"{t['bf16_audio_s_per_s']:.2f} s/s. GPU: not measured (no GPU lent to this run)."), "",
                  "| part of the training step | seconds | share |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v:.3f} | {100 * v / t['step_s']:.0f}% |" for k, v in t["parts"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=str(REPO / "recipes" / "base.yaml"))
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", default=f"1,{ALL}", help="comma list of thread counts, 'all' = every core")
    p.add_argument("--chunks", type=lambda s: [int(v) for v in s.split(",")], default=[320, 5120],
                   help="streaming chunk sizes in samples (default 320,5120 = 20 and 320 ms)")
    p.add_argument("--stream-seconds", type=float, default=60.0, help="length of the flatness stream (0: skip)")
    p.add_argument("--flat-chunk", type=int, default=320)
    p.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")],
                   default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--train-batch", type=int, default=None)
    p.add_argument("--train-crop", type=float, default=None)
    p.add_argument("--no-encodec", action="store_true")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-int8", action="store_true", help="skip the int8-weight (Codec.int8) streaming rows")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime streaming rows (codec export)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--_memprobe", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats, args.warmup, args.stream_seconds = 1.0, 1, 0, 2.0
        args.ks, args.train_batch, args.train_crop = [1024, 2048], 2, 0.2
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args._memprobe:
        _memprobe(args._memprobe[0], float(args._memprobe[1]))
        return {}
    res = run(args)
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
