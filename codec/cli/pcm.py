"""Raw PCM, the live commands' audio on stdin and stdout: mono, little-endian, s16le (signed
16-bit) or f32le (32-bit float), at the model's rate, without any header.
"""

from __future__ import annotations

import numpy as np

from codec.cli.common import CLIError

#: Sample format name -> numpy dtype.
PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
#: s16 <-> float: x / 32768 and round(x * 32768) clipped, as sox converts.
S16_SCALE = 32768.0


class PcmReader:
    """Raw PCM bytes in any pieces -> float32 samples in [-1, 1] (s16le) or as stored (f32le).

    A sample split across two reads is kept until its last byte arrives; ``leftover`` is the
    number of bytes of an incomplete sample held (at end of input: a writer cut off mid-sample).
    """

    def __init__(self, fmt: str) -> None:
        self.dtype = PCM_FORMATS[fmt]
        self._rest = b""
        self.samples = 0

    @property
    def leftover(self) -> int:
        return len(self._rest)

    def feed(self, data: bytes) -> np.ndarray:
        """The next bytes -> float32 [L] of the whole samples completed so far."""
        data = self._rest + data if self._rest else data
        whole = len(data) - len(data) % self.dtype.itemsize
        self._rest = data[whole:]
        raw = np.frombuffer(data, self.dtype, count=whole // self.dtype.itemsize)
        if self.dtype.kind == "i":
            samples = raw.astype(np.float32) / np.float32(S16_SCALE)
        else:
            samples = raw.astype(np.float32)
            if not np.isfinite(samples).all():
                raise CLIError(f"input has NaN or Inf samples (after sample {self.samples}); is it f32le?")
        self.samples += len(samples)
        return samples


def to_pcm(audio: np.ndarray, fmt: str) -> bytes:
    """float32 samples [L] -> raw PCM bytes in ``fmt`` (s16le: clipped to the 16-bit range)."""
    if fmt == "f32le":
        return np.asarray(audio, PCM_FORMATS["f32le"]).tobytes()
    scaled = np.rint(np.asarray(audio, np.float32) * np.float32(S16_SCALE))
    return np.clip(scaled, -32768, 32767).astype(PCM_FORMATS["s16le"]).tobytes()
