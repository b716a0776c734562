"""The package's one build step (everything else is in pyproject.toml): the native frame engine
(codec/runtime/native/frame_engine.c), compiled when the package is installed, as two shared
libraries: ``_frame_engine_avx2`` (AVX2 + FMA loops, x86-64 only) and ``_frame_engine_base``
(the plain-C loops, any CPU). ``codec.runtime.native`` loads the one the CPU runs through
ctypes. No machine-specific flags (-march=native): an installed tree moved to another CPU of
the same architecture still runs. Without a working C compiler the install still succeeds,
with a warning, and streams run in the PyTorch layers.
"""
import hashlib
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = Path("codec/runtime/native")
#: Recorded in each build (codec_source_hash()): the loader refuses a library built from another source.
SOURCE_HASH = hashlib.sha256((NATIVE / "frame_engine.c").read_bytes()).hexdigest()
#: IEEE float arithmetic as written (no -ffast-math), so the kernels round as the PyTorch path.
FLAGS = ["-O3", "-fno-math-errno"]
VARIANTS = {"base": []}
if platform.machine().lower() in ("x86_64", "amd64"):
    VARIANTS["avx2"] = ["-mavx2", "-mfma"]


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not a failed install (the extensions are optional)."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            print(f"warning: {ext.name} not built ({exc}); streams will run in the PyTorch layers", file=sys.stderr)


setup(
    # One source file per build (build_<variant>.c includes the engine), so that the builds
    # never share an object file, parallel builds included.
    ext_modules=[Extension(f"codec.runtime.native._frame_engine_{name}", [str(NATIVE / f"build_{name}.c")],
                           define_macros=[("CODEC_MODULE", f"_frame_engine_{name}"),
                                          ("CODEC_SOURCE_HASH", f'"{SOURCE_HASH}"')],
                           extra_compile_args=FLAGS + extra, libraries=["m"], optional=True,
                           depends=[str(NATIVE / "frame_engine.c"), str(NATIVE / "module.c")])
                 for name, extra in VARIANTS.items()],
    cmdclass={"build_ext": OptionalBuildExt},
)
