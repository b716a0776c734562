#!/usr/bin/env python
"""Streaming speed of the codec: chunks through the streamer, its precisions and backends.

    python tools/bench_streaming.py                     # base recipe, 1 thread and all threads
    python tools/bench_streaming.py --quick             # a smoke run
    python tools/bench_streaming.py --json out.json     # also write every number as JSON

Measures (each with every ``--threads`` count): streaming encode and decode of a ``--seconds``
clip in chunks of ``--chunks`` samples (default 20 and 320 ms) through ``Codec.streamer``:
float32 on the native backend (batch-1 chunks in the C frame engine where it applies), int8
weights (models with linear layers: ConvNeXt), and float32 on the "torch" backend (the
"PyTorch layers" rows, where the engine applies: what it replaces); and 20 ms chunks through
onnxruntime from the model's ONNX export (``codec export``). With one thread: the memory floor
of a 20 ms stream (the engines' weight bytes over a measured read rate), and the per-chunk
cost over a ``--stream-seconds`` stream (default 60 s, 20 ms chunks, encode + decode of each),
float32 and int8: the first 10 s against the last 10 s, and a paired measurement. Every
streamer is made before its timings (a streamer prepares its weights once). Shared
conventions: ``tools/bench_common.py``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import bench_common as common
import torch
from torch import nn

from codec import Codec
from codec.runtime import native
from codec.runtime.native.engine import unsupported
from codec.runtime.streamer import Streamer


def stream_encode(streamer: Streamer, wav: torch.Tensor, chunk: int) -> torch.Tensor:
    """Codes int64 [1, n, F] of ``wav`` [1, 1, T] through a fresh stream in ``chunk``-sample pieces."""
    with streamer:
        parts = [streamer.encode(wav[..., i : i + chunk]) for i in range(0, wav.shape[-1], chunk)]
        parts.append(streamer.flush())
    return torch.cat(parts, dim=-1)


def stream_decode(streamer: Streamer, codes: torch.Tensor, frames: int) -> torch.Tensor:
    """Audio [1, 1, <= F hop] of ``codes`` [1, n, F] through a fresh stream, ``frames`` at a time."""
    with streamer:
        return torch.cat([streamer.decode(codes[..., t : t + frames]) for t in range(0, codes.shape[-1], frames)],
                         dim=-1)


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

    return {"stream_encode_20ms_onnxruntime": common.timeit(encode, repeats, warmup) / seconds,
            "stream_decode_20ms_onnxruntime": common.timeit(decode, repeats, warmup) / seconds}


def flatness(model: Codec, precision: str, seconds: float, chunk: int, window: float = 10.0) -> dict[str, float]:
    """Stream ``seconds`` of noise in ``chunk``-sample chunks through ``model.streamer(precision)``
    (encode, then decode the frames it completed); per-chunk times (ms) of the first and last
    ``window`` seconds, their means, medians and ratios, and the RTF.

    Also a paired measurement that a slowly changing machine (another tenant, memory
    bandwidth drifting over the minute the stream takes) cannot bias: the last ``window``
    seconds of a ``seconds``-long stream and the first ``window`` seconds of a fresh stream
    (a second streamer), chunk by chunk in alternation, so both windows run at the same time;
    ``paired_ratio`` is the ratio of their median chunk times."""
    sr = model.sample_rate
    gen = torch.Generator().manual_seed(1)
    wav = 0.1 * torch.randn(1, 1, int(seconds * sr), generator=gen)
    streamer, fresh = model.streamer(precision), model.streamer(precision)
    times = []
    with streamer:
        for i in range(0, wav.shape[-1], chunk):
            t0 = time.perf_counter()
            streamer.decode(streamer.encode(wav[..., i : i + chunk]))
            times.append(time.perf_counter() - t0)
    n = max(1, int(min(window, seconds / 2) * sr / chunk))
    first, last = statistics.mean(times[:n]), statistics.mean(times[-n:])
    # The median per window as well: on a shared machine a few slow chunks (another tenant,
    # a page fault) move the mean by more than the code's own per-chunk cost changes.
    first_med, last_med = statistics.median(times[:n]), statistics.median(times[-n:])
    starts = list(range(0, wav.shape[-1], chunk))
    late, early = [], []
    with streamer, fresh:
        for i in starts[:-n]:  # the long stream up to its last window, untimed
            streamer.decode(streamer.encode(wav[..., i : i + chunk]))
        for i, j in zip(starts[-n:], starts[:n]):
            t0 = time.perf_counter()
            streamer.decode(streamer.encode(wav[..., i : i + chunk]))
            t1 = time.perf_counter()
            fresh.decode(fresh.encode(wav[..., j : j + chunk]))
            late.append(t1 - t0)
            early.append(time.perf_counter() - t1)
    return {"first_ms": 1e3 * first, "last_ms": 1e3 * last, "ratio": last / first,
            "first_median_ms": 1e3 * first_med, "last_median_ms": 1e3 * last_med,
            "median_ratio": last_med / first_med, "rtf": sum(times) / seconds, "chunks": len(times),
            "seconds": seconds, "paired_late_median_ms": 1e3 * statistics.median(late),
            "paired_fresh_median_ms": 1e3 * statistics.median(early),
            "paired_ratio": statistics.median(late) / statistics.median(early)}


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
    out = {}
    frame_s = model.hop_length / model.sample_rate
    for suffix, precision in (("", "fp32"), ("_int8", "int8")):
        streamer = model.streamer(precision)
        sizes = [streamer.engine(part).weight_bytes for part in ("encoder", "decoder")]
        bufs = [torch.ones(n // 4) for n in sizes]
        n = sum(sizes)

        def read(bufs: list = bufs) -> None:
            for b in bufs:
                torch.dot(b, b)
        for _ in range(max(1, warmup)):
            read()
        best = min(common.timeit(read, 1, 0) for _ in range(max(20, repeats)))
        out.update({f"bytes{suffix}": n, f"read_gb_s{suffix}": n / best / 1e9, f"rtf{suffix}": best / frame_s})
    return out


def streamers(model: Codec, int8: bool, engine: bool) -> dict[str, Streamer]:
    """The streamers timed, by row suffix: "" float32 (native backend), "_int8" int8 weights
    (when ``int8``), "_pytorch" float32 on the torch backend (when the ``engine`` applies)."""
    out = {"": model.streamer("fp32")}
    if int8:
        out["_int8"] = model.streamer("int8")
    if engine:
        out["_pytorch"] = model.streamer("fp32", "torch")
    return out


def run(args: argparse.Namespace) -> dict:
    """Every measurement of the module docstring (torch's thread count restored after)."""
    threads = torch.get_num_threads()
    res = common.machine(args)
    model, wav = common.model_and_clip(args)
    rep, warm, sec = args.repeats, args.warmup, args.seconds
    # int8 weights only change the ConvNeXt layers' linear products.
    res["int8"] = not args.no_int8 and any(isinstance(m, nn.Linear) for m in model.encoder.modules())
    res["native"] = native.load() is not None and unsupported(model.encoder, model.quantizer, "encoder") is None
    onnx_tmp = tempfile.TemporaryDirectory(prefix="bench-onnx-") if not args.no_onnx else None
    onnx_dir = export_for_bench(model, onnx_tmp.name) if onnx_tmp is not None else None
    res["onnxruntime"] = onnx_dir is not None
    timed = streamers(model, res["int8"], res["native"])
    res["threads"] = {}
    try:
        with torch.no_grad():
            for spec in args.threads.split(","):
                n = common.set_threads(spec)
                r: dict = {"threads": n}
                for suffix, streamer in timed.items():
                    codes = streamer.encode_offline(wav)
                    for chunk in args.chunks:
                        ms, frames = round(1000 * chunk / model.sample_rate), max(1, chunk // model.hop_length)
                        r[f"stream_encode_{ms}ms{suffix}"] = common.timeit(
                            lambda s=streamer, c=chunk: stream_encode(s, wav, c), rep, warm) / sec
                        r[f"stream_decode_{ms}ms{suffix}"] = common.timeit(
                            lambda s=streamer, c=codes, f=frames: stream_decode(s, c, f), rep, warm) / sec
                if onnx_dir is not None:
                    r.update(onnx_stream_times(onnx_dir, wav, model.encode(wav), n, rep, warm, sec))
                res["threads"][str(spec)] = r
            common.set_threads(1)
            if res["native"] and unsupported(model.decoder, model.quantizer, "decoder") is None:
                res["stream_floor"] = stream_floor(model, rep, warm)
            if args.stream_seconds > 0:
                res["flatness"] = flatness(model, "fp32", args.stream_seconds, args.flat_chunk)
                if res["int8"]:
                    res["flatness_int8"] = flatness(model, "int8", args.stream_seconds, args.flat_chunk)
    finally:
        torch.set_num_threads(threads)
        if onnx_tmp is not None:
            onnx_tmp.cleanup()
    res["load_after"] = os.getloadavg()
    return res


def _label(key: str) -> str:
    """A row name for a result key, e.g. "stream_encode_20ms_int8" -> "stream encode 20ms, int8 weights"."""
    label = key.replace("_", " ")
    for suffix, said in ((" int8", "int8 weights"), (" onnxruntime", "onnxruntime (codec export)"),
                         (" pytorch", "PyTorch layers (engine off)")):
        if label.endswith(suffix):
            return f"{label[: -len(suffix)]}, {said}"
    return label


def markdown(res: dict) -> str:
    """The results as Markdown: an RTF table per thread count, the memory floor, the flatness lines."""
    lines = [common.conditions(res), "",
             ("Streams of batch 1 ran in the native frame engine (`codec.runtime.native`, single-threaded C)."
              if res.get("native") else "The native frame engine was not available: streams ran in PyTorch."),
             "", "Real-time factor (seconds of compute per second of audio; lower is faster):", ""]
    specs = list(res["threads"])
    lines.append("| | " + " | ".join(f"{res['threads'][s]['threads']} thread(s)" for s in specs) + " |")
    lines.append("| --- |" + " --- |" * len(specs))
    for k in (k for k in res["threads"][specs[0]] if k.startswith("stream_")):
        lines.append(f"| {_label(k)} | " + " | ".join(common.fmt(res["threads"][s].get(k)) for s in specs) + " |")
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
    for key, what in (("flatness", "float32"), ("flatness_int8", "int8 weights")):
        if key in res:
            f = res[key]
            lines += ["", (f"Streaming {f['chunks']} chunks, {what} (encode + decode each): first 10 s "
                      f"{f['first_ms']:.3f} ms/chunk, last 10 s {f['last_ms']:.3f} ms/chunk (mean ratio {f['ratio']:.3f}; "
                      f"medians {f['first_median_ms']:.3f} / {f['last_median_ms']:.3f} ms, ratio {f['median_ratio']:.3f}), "
                      f"RTF {f['rtf']:.3f}. Paired (the last 10 s of a {f['seconds']:g} s stream and the first 10 s of a "
                      f"fresh one, chunks alternating): medians {f['paired_late_median_ms']:.3f} / "
                      f"{f['paired_fresh_median_ms']:.3f} ms, ratio {f['paired_ratio']:.3f}.")]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--chunks", type=lambda s: [int(v) for v in s.split(",")], default=[320, 5120],
                   help="streaming chunk sizes in samples (default 320,5120 = 20 and 320 ms)")
    p.add_argument("--stream-seconds", type=float, default=60.0, help="length of the flatness stream (0: skip)")
    p.add_argument("--flat-chunk", type=int, default=320)
    p.add_argument("--no-int8", action="store_true", help="skip the int8-weight rows (the streamer's int8 precision)")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows (codec export)")
    args = common.quick(p.parse_args(argv))
    if args.quick and args.stream_seconds > 0:
        args.stream_seconds = 2.0
    return args


def main(argv: list[str] | None = None) -> dict:
    return common.measure(parse_args(argv), run, markdown)


if __name__ == "__main__":
    main()
