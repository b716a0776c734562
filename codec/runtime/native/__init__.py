"""Native (C) kernels, compiled when the package is installed (setup.py) and loaded with ctypes.

The only one so far is the frame engine (``frame_engine.c``, wrapped by ``engine.py``): a
streamed frame of the ConvNeXt codec in one call. Installing builds it twice, as the
extension files ``_frame_engine_avx2`` (AVX2 + FMA loops; x86-64) and ``_frame_engine_base``
(plain C, any CPU); ``load()`` opens the one this CPU runs. Why a C engine and not
onnxruntime: on one thread it streams 20 ms frames about twice as fast as onnxruntime runs the
same model's ONNX export (``codec export``; docs/performance.md). Not built (no compiler at
install time), or ``CODEC_NATIVE=0`` in the environment: ``load()`` returns None and streams
run in the PyTorch layers, same results up to float rounding. ``CODEC_NATIVE=base`` picks
the plain-C build on any CPU.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import platform
import warnings
from pathlib import Path

#: The builds setup.py makes, most capable first.
VARIANTS = ("avx2", "base")
SOURCE = Path(__file__).with_name("frame_engine.c")

_LIB: ctypes.CDLL | None = None
_TRIED = False


def setting() -> str:
    """``CODEC_NATIVE`` from the environment, lower case: "1" (default: the best build this CPU
    runs), "0" / "false" / "no" / "off" (engine off) or "base" (the plain-C build)."""
    return os.environ.get("CODEC_NATIVE", "1").strip().lower()


def enabled() -> bool:
    """False when ``CODEC_NATIVE`` is set to 0 / false / no / off in the environment."""
    return setting() not in {"0", "false", "no", "off"}


def cpu_runs_avx2() -> bool:
    """Whether this CPU has AVX2 and FMA (x86-64 Linux: /proc/cpuinfo's flags; elsewhere no)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return {"avx2", "fma"} <= flags
    except OSError:
        pass
    return False


def library_path(variant: str) -> Path | None:
    """The installed build ``variant`` (VARIANTS), or None when it was not built."""
    spec = importlib.util.find_spec(f"{__name__}._frame_engine_{variant}")
    return Path(spec.origin) if spec is not None and spec.origin else None


def usable_variants() -> list[str]:
    """The builds this CPU runs, most capable first ("base" always; ``CODEC_NATIVE=base``:
    only it)."""
    return ["avx2", "base"] if setting() != "base" and cpu_runs_avx2() else ["base"]


def chosen_variant() -> str | None:
    """The build ``load()`` opens: the most capable one that is installed and that this CPU
    runs, or None when none is installed."""
    return next((v for v in usable_variants() if library_path(v) is not None), None)


def source_hash() -> str:
    """The sha256 (hex) of the installed frame_engine.c, which each build records."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def open_library(path: str | Path) -> ctypes.CDLL:
    """A built frame-engine library with its functions' signatures declared."""
    lib = ctypes.CDLL(str(path))
    for name in ("codec_encode_frames", "codec_decode_frames"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.codec_search.restype = ctypes.c_int
    lib.codec_search.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                 ctypes.c_int]
    lib.codec_group_frames.restype = ctypes.c_int
    lib.codec_group_frames.argtypes = []
    lib.codec_source_hash.restype = ctypes.c_char_p
    lib.codec_source_hash.argtypes = []
    return lib


def load() -> ctypes.CDLL | None:
    """The frame-engine library this CPU runs, or None when disabled, not built, or built from
    another frame_engine.c than the installed one (a source changed since the install: a
    warning says to reinstall; once per process)."""
    global _LIB, _TRIED
    if not enabled():
        return None
    if not _TRIED:
        _TRIED = True
        variant = chosen_variant()
        if variant is None:
            warnings.warn(f"native frame engine not built (no _frame_engine_* library in {SOURCE.parent}: "
                          "reinstall the package with a C compiler), streaming runs in PyTorch", stacklevel=2)
            return None
        try:
            lib = open_library(library_path(variant))
        except (OSError, AttributeError) as exc:
            warnings.warn(f"native frame engine unavailable, streaming runs in PyTorch: {exc}", stacklevel=2)
            return None
        if lib.codec_source_hash().decode() != source_hash():
            warnings.warn("native frame engine built from an older frame_engine.c (reinstall the package: "
                          "pip install -e .), streaming runs in PyTorch", stacklevel=2)
            return None
        _LIB = lib
    return _LIB
