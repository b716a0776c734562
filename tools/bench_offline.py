#!/usr/bin/env python
"""Offline speed of the codec, side by side with EnCodec's 24 kHz model at 6 kbps.

    python tools/bench_offline.py                      # base recipe, 1 thread and all threads
    python tools/bench_offline.py --quick              # a smoke run
    python tools/bench_offline.py --json out.json      # also write every number as JSON

Measures (each with every ``--threads`` count): the offline encode and decode of a
``--seconds`` clip (float32, and the exact precision's float64 encode: ``Codec.streamer("exact")``)
and EnCodec's; with one thread: the bitstream's pack / unpack (fixed width) and range coding /
decoding (constriction) of the clip's codes, also as a share of the encode time, and one
stage's nearest-neighbour search for K = ``--ks`` (float32, and float64 as the exact precision
searches); and multiply-adds per second of audio (convolutions, LSTMs, linear layers, code
search) for our model and EnCodec's. Shared conventions: ``tools/bench_common.py``.
"""
from __future__ import annotations

import argparse
import math
import os

import bench_common as common
import numpy as np
import torch

from codec import Codec


def bitstream_times(model: Codec, codes: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Pack / unpack and range-code / decode ``codes`` int64 [1, N, F]: seconds per call, and
    the payload bytes of each ("bytes_fixed", "bytes_range")."""
    from codec.bitstream import entropy
    from codec.bitstream.packing import pack_codes, unpack_codes
    from codec.bitstream.priors import Priors

    c = codes[0].numpy()
    n, f = c.shape
    widths = tuple(math.ceil(math.log2(k)) for k in model.codebook_sizes[:n])
    data = pack_codes(c, widths)
    counts = [np.bincount(row, minlength=k) for row, k in zip(c, model.codebook_sizes)]
    priors = Priors.from_counts(counts, b"\0" * 16, f)
    blocks = [c[:, i : i + 256] for i in range(0, f, 256)]  # the container's records
    records = [entropy.encode_record(b, priors) for b in blocks]
    return {
        "pack": common.timeit(lambda: pack_codes(c, widths), repeats, warmup),
        "unpack": common.timeit(lambda: unpack_codes(data, f, widths), repeats, warmup),
        "range_encode": common.timeit(lambda: [entropy.encode_record(b, priors) for b in blocks], repeats, warmup),
        "range_decode": common.timeit(lambda: [entropy.decode_record(r, b.shape[1], n, priors)
                                               for r, b in zip(records, blocks)], repeats, warmup),
        "bytes_fixed": len(data), "bytes_range": sum(len(r) + 4 for r in records),
    }


def search_times(ks: list[int], dim: int, rows: int, repeats: int, warmup: int,
                 dtype: torch.dtype = torch.float32) -> dict[int, float]:
    """Seconds per call of one stage's nearest-neighbour search over ``rows`` rows of ``dim``
    values, in ``dtype`` (float32: the default encode; float64: the exact precision), per
    codebook size K in ``ks``; the codebook terms precomputed as a streamer's snapshot keeps them."""
    from codec.quant.search import codebook_norms, nearest

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=gen, dtype=dtype)
    out = {}
    for k in ks:
        book = torch.randn(k, dim, generator=gen)
        norms = codebook_norms(book, dtype)
        out[k] = common.timeit(lambda b=book, n=norms: nearest(x, b, n), repeats, warmup)
    return out


def run(args: argparse.Namespace) -> dict:
    """Every measurement of the module docstring (torch's thread count restored after)."""
    threads = torch.get_num_threads()
    res = common.machine(args)
    model, wav = common.model_and_clip(args)
    exact = model.streamer("exact")
    enc = None if args.no_encodec else common.load_encodec(6.0)
    res["encodec"] = enc is not None
    rep, warm, sec = args.repeats, args.warmup, args.seconds
    if enc is not None:
        gen = torch.Generator().manual_seed(1)
        ewav = 0.1 * torch.randn(1, 1, int(sec * enc.sample_rate), generator=gen)
    res["macs"] = {"ours": common.our_macs(model)}
    if enc is not None:
        res["macs"]["encodec"] = common.encodec_macs(enc)
    res["threads"] = {}
    try:
        with torch.no_grad():
            for spec in args.threads.split(","):
                r: dict = {"threads": common.set_threads(spec)}
                codes = model.encode(wav)
                r["encode"] = common.timeit(lambda: model.encode(wav), rep, warm) / sec
                r["decode"] = common.timeit(lambda c=codes: model.decode(c), rep, warm) / sec
                r["encode_exact"] = common.timeit(lambda: exact.encode_offline(wav), rep, warm) / sec
                if enc is not None:
                    frames_e = enc.encode(ewav)
                    r["encodec_encode"] = common.timeit(lambda: enc.encode(ewav), rep, warm) / sec
                    r["encodec_decode"] = common.timeit(lambda fe=frames_e: enc.decode(fe), rep, warm) / sec
                    r["ratio_vs_encodec"] = (r["encode"] + r["decode"]) / (r["encodec_encode"] + r["encodec_decode"])
                res["threads"][str(spec)] = r
            common.set_threads(1)
            codes = model.encode(wav)
            encode_s = common.timeit(lambda: model.encode(wav), rep, warm)
        bs = bitstream_times(model, codes, max(rep, 5), warm)
        bs["fixed_share_of_encode"] = (bs["pack"] + bs["unpack"]) / encode_s
        bs["range_share_of_encode"] = (bs["range_encode"] + bs["range_decode"]) / encode_s
        bs["per_audio_second"] = {k: bs[k] / sec for k in ("pack", "unpack", "range_encode", "range_decode")}
        res["bitstream"] = bs
        rows = round(model.frame_rate * sec)
        for name, dtype in (("search_per_stage", torch.float32), ("search_per_stage_exact", torch.float64)):
            st = search_times(args.ks, model.cfg.latent_dim, rows, rep, warm, dtype)
            res[name] = {str(k): v / sec for k, v in st.items()}  # seconds per audio second
    finally:
        torch.set_num_threads(threads)
    res["load_after"] = os.getloadavg()
    return res


def markdown(res: dict) -> str:
    """The results as Markdown: an RTF table per thread count, then multiply-adds, bitstream and search."""
    lines = [common.conditions(res), "", "Real-time factor (seconds of compute per second of audio; lower is faster):", ""]
    specs = list(res["threads"])
    lines.append("| | " + " | ".join(f"{res['threads'][s]['threads']} thread(s)" for s in specs) + " |")
    lines.append("| --- |" + " --- |" * len(specs))
    keys = ["encode", "encode_exact", "decode"]
    if res["encodec"]:
        keys += ["encodec_encode", "encodec_decode", "ratio_vs_encodec"]
    names = {"encode_exact": "encode, exact precision (fp64)", "ratio_vs_encodec": "ours / EnCodec (encode + decode)",
             "encodec_encode": "EnCodec 24 kHz 6 kbps encode", "encodec_decode": "EnCodec 24 kHz 6 kbps decode"}
    for k in keys:
        lines.append(f"| {names.get(k, k)} | " + " | ".join(common.fmt(res["threads"][s].get(k)) for s in specs) + " |")
    lines += ["", "Multiply-adds per second of audio (millions):", "",
              "| model | encoder | code search | decoder | total |", "| --- | --- | --- | --- | --- |"]
    for name, d in res["macs"].items():
        lines.append(f"| {name} | {d['encoder'] / 1e6:.0f} | {d['search'] / 1e6:.0f} | {d['decoder'] / 1e6:.0f} | "
                     f"{sum(d.values()) / 1e6:.0f} |")
    b = res["bitstream"]
    per = b["per_audio_second"]
    lines += ["", (f"Bitstream (1 thread, per second of audio): pack {1e3 * per['pack']:.3f} ms, "
              f"unpack {1e3 * per['unpack']:.3f} ms ({100 * b['fixed_share_of_encode']:.2f}% of "
              f"encoding); range encode {1e3 * per['range_encode']:.3f} ms, decode "
              f"{1e3 * per['range_decode']:.3f} ms ({100 * b['range_share_of_encode']:.2f}% of encoding).")]
    lines += ["", "Nearest-neighbour search, one stage, ms per second of audio (fp32 default / fp64 exact): " +
              ", ".join(f"K={k}: {1e3 * v:.2f} / {1e3 * res['search_per_stage_exact'][k]:.2f}"
                        for k, v in res["search_per_stage"].items()) + "."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")],
                   default=[1024, 2048, 4096, 8192, 16384, 32768, 65536], help="codebook sizes of the search rows")
    p.add_argument("--no-encodec", action="store_true", help="skip EnCodec's rows")
    args = common.quick(p.parse_args(argv))
    if args.quick:
        args.ks = [1024, 2048]
    return args


def main(argv: list[str] | None = None) -> dict:
    return common.measure(parse_args(argv), run, markdown)


if __name__ == "__main__":
    main()
