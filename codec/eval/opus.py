"""The Opus baseline through Debian's opus-tools: opusenc --bitrate N, opusdec --rate R.

The bitrate is taken from the real ``.opus`` file (Ogg container included); the payload
bitrate counts only the Opus packets (no Ogg page headers, no OpusHead / OpusTags pages).
Runs are reproducible: a fixed Ogg serial number and float output (no dither).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

OGG_PAGE = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, segments


class OpusError(RuntimeError):
    """opusenc / opusdec failed (one line, with the tool's own message)."""


def missing_tools() -> list[str]:
    """Names of the opus-tools programs not found on PATH."""
    return [tool for tool in ("opusenc", "opusdec") if shutil.which(tool) is None]


def ogg_packet_bytes(data: bytes) -> int:
    """Bytes of the audio packets in an Ogg Opus file: every page's segment data except the
    first two pages (OpusHead, OpusTags)."""
    pos, page, total = 0, 0, 0
    while pos + OGG_PAGE.size <= len(data):
        capture, *_, segments = OGG_PAGE.unpack_from(data, pos)
        if capture != b"OggS":
            raise OpusError("opusenc wrote a file that is not a plain Ogg stream")
        lacing = data[pos + OGG_PAGE.size : pos + OGG_PAGE.size + segments]
        body = sum(lacing)
        if page >= 2:
            total += body
        pos += OGG_PAGE.size + segments + body
        page += 1
    return total


@dataclass(frozen=True)
class OpusResult:
    audio: np.ndarray  # float32 [T'] decoded at ``rate``
    file_size: int  # bytes of the .opus file
    payload_size: int  # bytes of the Opus packets alone


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, check=False)
    if r.returncode != 0:
        msg = (r.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        raise OpusError(f"{Path(cmd[0]).name} failed: {msg}")


def opus_roundtrip(audio: np.ndarray, rate: int, kbps: float, workdir: str | Path) -> OpusResult:
    """Encode mono float ``audio`` at ``rate`` Hz with opusenc at ``kbps`` kbit/s, decode it
    with opusdec at the same rate; files live in ``workdir``."""
    workdir = Path(workdir)
    src, coded, out = workdir / "input.wav", workdir / f"opus_{kbps:g}k.opus", workdir / "decoded.wav"
    sf.write(src, np.asarray(audio, dtype=np.float32), rate, subtype="PCM_16")
    _run(["opusenc", "--quiet", "--serial", "1", "--bitrate", f"{kbps:g}", str(src), str(coded)])
    _run(["opusdec", "--quiet", "--float", "--rate", str(rate), str(coded), str(out)])
    data = coded.read_bytes()
    decoded, out_rate = sf.read(out, dtype="float32", always_2d=True)
    if out_rate != rate:
        raise OpusError(f"opusdec wrote {out_rate} Hz audio, expected {rate}")
    return OpusResult(decoded.mean(axis=1, dtype=np.float32), len(data), ogg_packet_bytes(data))
