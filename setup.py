"""The package's one build step (everything else is in pyproject.toml): the native frame engine
(codec/runtime/native/frame_engine.c), compiled when the package is installed, as two shared
libraries: ``_frame_engine_avx2`` (AVX2 + FMA loops, x86-64 only) and ``_frame_engine_base``
(the plain-C loops, any CPU). ``codec.runtime.native`` loads the one the CPU runs through
ctypes. No machine-specific flags (-march=native): an installed tree moved to another CPU of
the same architecture still runs. Without a working C compiler the install still succeeds,
with a warning, and streams run in the PyTorch layers.
"""
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["codec/runtime/native/frame_engine.c", "codec/runtime/native/module.c"]
#: IEEE float arithmetic as written (no -ffast-math), so the kernels round as the PyTorch path.
FLAGS = ["-O3", "-fno-math-errno"]
VARIANTS = {"base": []}
if platform.machine().lower() in ("x86_64", "amd64"):
    VARIANTS["avx2"] = ["-mavx2", "-mfma"]


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not a failed install."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            print(f"warning: {ext.name} not built ({exc}); streams will run in the PyTorch layers", file=sys.stderr)


setup(
    ext_modules=[Extension(f"codec.runtime.native._frame_engine_{name}", SOURCES,
                           define_macros=[("CODEC_MODULE", f"_frame_engine_{name}")],
                           extra_compile_args=FLAGS + extra, libraries=["m"])
                 for name, extra in VARIANTS.items()],
    cmdclass={"build_ext": OptionalBuildExt},
)
