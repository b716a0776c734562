"""Native (C) kernels, compiled on first use with the machine's C compiler and loaded with ctypes.

The only one so far is the frame engine (``frame_engine.c``, wrapped by ``engine.py``): a
streamed frame of the ConvNeXt codec in one call. The shared library is built once per source
version, compiler and CPU into ``$CODEC_CACHE_DIR`` (default ``~/.cache/rvq-codec``; about a
second with gcc -O3) and reused after. No compiler, a failed build or ``CODEC_NATIVE=0`` in
the environment: ``load()`` returns None and the codec runs its PyTorch path, same results.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("frame_engine.c")
#: -O3 and the build machine's instruction set (AVX2 + FMA where there is one); the float
#: arithmetic stays IEEE (no -ffast-math), so the kernels round as written.
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno"]
#: The same without -march=native: baseline x86-64 / the compiler's default target, i.e. the
#: plain-C loops of frame_engine.c instead of its AVX2 ones (``build(portable=True)``).
PORTABLE_FLAGS = [f for f in FLAGS if f != "-march=native"]

_LIB: ctypes.CDLL | None = None
_TRIED = False


def cache_dir() -> Path:
    """Where built libraries are kept: ``$CODEC_CACHE_DIR`` or ``~/.cache/rvq-codec``, + /native."""
    root = os.environ.get("CODEC_CACHE_DIR") or Path.home() / ".cache" / "rvq-codec"
    return Path(root) / "native"


def enabled() -> bool:
    """False when ``CODEC_NATIVE`` is set to 0 / false / no / off in the environment."""
    return os.environ.get("CODEC_NATIVE", "1").strip().lower() not in {"0", "false", "no", "off"}


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """The CPU's feature flags (Linux), so a cache shared between machines never hands one a
    library built for another's instruction set."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def build(force: bool = False, portable: bool = False) -> Path:
    """Compile ``frame_engine.c`` (if not cached) and return the library's path; ``portable``:
    without -march=native (the plain-C fallback loops). Raises RuntimeError with the
    compiler's message when there is no compiler or it fails."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    flags = PORTABLE_FLAGS if portable else FLAGS
    version = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, " ".join(flags), platform.machine(),
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"frame_engine-{key}.so"
    if out.is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builds (parallel tests) never see half a file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE), "-lm"], check=False, capture_output=True,
                             text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE.name}: {res.stderr.strip()[:2000]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


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
    return lib


def load() -> ctypes.CDLL | None:
    """The frame-engine library (built on first use), or None when disabled or unbuildable
    (a warning says why, once per process)."""
    global _LIB, _TRIED
    if not enabled():
        return None
    if not _TRIED:
        _TRIED = True
        try:
            _LIB = open_library(build())
        except (OSError, RuntimeError) as exc:
            warnings.warn(f"native frame engine unavailable, streaming runs in PyTorch: {exc}", stacklevel=2)
            return None
    return _LIB
