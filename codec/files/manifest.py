"""The manifest of a folder of code arrays (``codec encode --format npy``): ``manifest.jsonl``,
one JSON object a line, one line per array:

    {"path": "1688/142285/1688-142285-0000.npy", "source": "/data/.../1688-142285-0000.flac",
     "frames": 750, "stages": 12, "samples": 240000, "sample_rate": 16000,
     "fingerprint": "3f2a..."}

``path``: the array, relative to the manifest's folder (an int16 [stages, frames] .npy);
``source``: the audio it came from (absolute); ``samples``: the signal's length at
``sample_rate`` (the model's), so a decode can be cut to it; ``fingerprint``: the model's
(``Codec.fingerprint``, hex). Lines are appended as arrays are written, so a stopped run's
manifest still lists every array it finished; ``write`` rewrites it sorted by path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from codec.bitstream.atomic import atomic_output

MANIFEST_NAME = "manifest.jsonl"
FIELDS = ("path", "source", "frames", "stages", "samples", "sample_rate", "fingerprint")


def entry(path: str, source: str, frames: int, stages: int, samples: int, sample_rate: int,
          fingerprint: str) -> dict:
    """One manifest line's fields (see the module's docstring), in FIELDS order."""
    return dict(zip(FIELDS, (path, source, frames, stages, samples, sample_rate, fingerprint), strict=True))


def line(item: dict) -> str:
    """``item`` as one manifest line (with its newline)."""
    return json.dumps(item, ensure_ascii=False) + "\n"


def read(path: str | Path) -> dict[str, dict]:
    """The entries of a manifest by their ``path`` (a later line wins); {} when there is none.
    Lines that are not a JSON object with a ``path`` (a line cut short by a stopped run) are
    skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    found = {}
    for row in text.splitlines():
        try:
            item = json.loads(row)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            found[item["path"]] = item
    return found


def write(path: str | Path, entries: Iterable[dict]) -> None:
    """Replace the manifest at ``path`` with ``entries``, sorted by path (all or nothing)."""
    with atomic_output(str(path)) as out:
        out.write("".join(line(e) for e in sorted(entries, key=lambda e: e["path"])).encode("utf-8"))
