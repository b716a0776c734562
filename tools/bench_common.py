"""What the benchmark scripts share (``tools/bench_*.py``): timing, thread counts, the command
line every one of them takes, the machine's description, EnCodec for the side-by-side rows, and
the multiply-add counter.

Each script measures one thing and prints a Markdown summary; ``--json FILE`` keeps every
number. Every timing is the median of ``--repeats`` runs after ``--warmup`` runs; RTF
(real-time factor) = seconds of compute per second of audio. The model is the recipe's with
random weights: speed does not depend on them. No script checks results: correctness belongs
to the tests.

EnCodec (the ``encodec`` package, random weights) imports torchaudio for file I/O only;
torchaudio cannot load beside the CPU torch used here, so ``load_encodec`` puts an empty stub
module in its place before importing encodec (nothing here uses it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from codec import Codec
from codec.nn.conv import CausalConv1d

ALL = "all"


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
    """Set torch's intra-op threads to ``n`` (an int, or ALL: every core); returns the count."""
    count = os.cpu_count() or 1 if n == ALL else int(n)
    torch.set_num_threads(count)
    return count


def parser(description: str, threads: str = f"1,{ALL}") -> argparse.ArgumentParser:
    """The options every script takes: --recipe, --seconds (clip length), --repeats, --warmup,
    --threads (a comma list, ``all`` = every core), --quick (a smoke run) and --json FILE."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--recipe", default=str(REPO / "recipes" / "base.yaml"))
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", default=threads, help="comma list of thread counts, 'all' = every core")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    return p


def quick(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick``: a 1 s clip, one repeat, no warm-up (the scripts shrink their own options too)."""
    if args.quick:
        args.seconds, args.repeats, args.warmup = 1.0, 1, 0
    return args


def machine(args: argparse.Namespace) -> dict:
    """The run's conditions: recipe, clip seconds, CPU, cores, torch version, load average."""
    return {"recipe": args.recipe, "seconds": args.seconds, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "load_before": os.getloadavg()}


def conditions(res: dict) -> str:
    """One Markdown line describing ``machine(args)``'s fields (and the load after, if recorded)."""
    after = f" / {res['load_after'][0]:.2f}" if "load_after" in res else ""
    return (f"Recipe `{res['recipe']}` (random weights), {res['seconds']:g} s clip, torch {res['torch']}, "
            f"{res['cpus']} CPUs; load average before{' / after' if after else ''}: {res['load_before'][0]:.2f}{after}.")


def model_and_clip(args: argparse.Namespace) -> tuple[Codec, torch.Tensor]:
    """The recipe's model (seed 0, eval mode) and a ``--seconds`` clip of noise, float [1, 1, T]."""
    torch.manual_seed(0)
    model = Codec.from_config(args.recipe).eval()
    gen = torch.Generator().manual_seed(0)
    return model, 0.1 * torch.randn(1, 1, int(args.seconds * model.sample_rate), generator=gen)


def measure(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict],
            markdown: Callable[[dict], str]) -> dict:
    """A script's whole run: ``res = run(args)``, its Markdown ``markdown(res)`` printed, ``res``
    written as JSON to ``args.json`` (if given); returns ``res``."""
    res = run(args)
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


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
    """EnCodec's multiply-adds per second of audio: encoder, code search, decoder."""
    wav = torch.zeros(1, 1, int(seconds * model.sample_rate))
    enc = count_macs(model.encoder, lambda: model.encoder(wav))
    frames = model.frame_rate * seconds
    n_q = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, model.bandwidth)
    search = frames * n_q * model.quantizer.bins * model.quantizer.dimension
    z = torch.zeros(1, model.quantizer.dimension, int(frames))
    dec = count_macs(model.decoder, lambda: model.decoder(z))
    return {"encoder": enc / seconds, "search": search / seconds, "decoder": dec / seconds}
