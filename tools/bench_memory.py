#!/usr/bin/env python
"""Peak memory of the codec: the RSS growth of a fresh process running one offline encode +
decode of a ``--seconds`` clip (one thread).

    python tools/bench_memory.py --recipe recipes/speech16k.yaml
    python tools/bench_memory.py --json out.json      # also write the numbers as JSON

``ru_maxrss`` is no use for this: Linux carries the parent's high-water mark across fork and
exec, so a child of a large process reports the parent's peak. The probe process reads its
own VmHWM instead, reset after a warm-up through /proc/self/clear_refs. Shared conventions:
``tools/bench_common.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import bench_common as common
import torch

from codec import Codec


def peak_memory(recipe: str, seconds: float) -> dict[str, float]:
    """RSS growth (MiB) of a fresh process for one offline encode + decode of ``seconds``:
    {"baseline_mib", "peak_mib", "growth_mib"}."""
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
    """Print the peak RSS growth of one offline encode + decode, as JSON (MiB): this process's
    own VmHWM, reset after the warm-up (see the module docstring)."""
    torch.set_num_threads(1)
    model = Codec.from_config(recipe).eval()
    wav = 0.1 * torch.randn(1, 1, int(seconds * model.sample_rate))
    with torch.no_grad():
        model.decode(model.encode(wav[..., : model.hop_length]))  # lazy inits
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


def run(args: argparse.Namespace) -> dict:
    """The measurement of the module docstring."""
    res = common.machine(args)
    res["memory"] = peak_memory(args.recipe, args.seconds)
    res["load_after"] = os.getloadavg()
    return res


def markdown(res: dict) -> str:
    mem = res["memory"]
    return "\n".join([common.conditions(res), "", (f"Peak memory of an offline encode + decode: "
                      f"+{mem['growth_mib']:.0f} MiB over {mem['baseline_mib']:.0f} MiB (RSS).")])


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.split("\n")[0], threads="1")
    p.add_argument("--_memprobe", nargs=2, help=argparse.SUPPRESS)
    args = common.quick(p.parse_args(argv))
    if args._memprobe:
        _memprobe(args._memprobe[0], float(args._memprobe[1]))
        return {}
    return common.measure(args, run, markdown)


if __name__ == "__main__":
    main()
