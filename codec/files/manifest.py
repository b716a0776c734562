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

Which outputs of a run count as done (a resumed run skips them): ``Existing`` (an output file
that exists: .rvq and audio files are written whole or not at all) and ``Manifest`` (an
array that exists and has its manifest line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from codec.bitstream.atomic import atomic_output
from codec.files.jobs import Outcome

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


class Existing:
    """The done outputs of a run whose files are written whole or not at all: those that exist.
    A context manager (nothing to keep)."""

    def done(self, output: str) -> bool:
        """Whether the output file ``output`` (a path) counts as done: it exists."""
        return os.path.exists(output)

    def add(self, outcome: Outcome) -> None:
        """Record a job done (nothing to record: its file exists)."""

    def __enter__(self) -> Existing:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class Manifest(Existing):
    """The done arrays of a folder of code arrays: an array counts as done only with its line in
    ``folder``/manifest.jsonl (an array written just before a run was stopped, whose line was
    not, is written again). ``add`` appends a job's line at once; leaving the context rewrites
    the manifest sorted, keeping the lines of arrays that exist."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.listed = read(self.path)
        self._log: IO[str] | None = None

    def _relative(self, output: str) -> str:
        return Path(output).relative_to(self.folder).as_posix()

    def done(self, output: str) -> bool:
        """Whether the array at ``output`` (a path in the folder) exists and is listed."""
        return super().done(output) and self._relative(output) in self.listed

    def add(self, outcome: Outcome) -> None:
        """Append the line of an array just written (``outcome`` of a job done)."""
        rel = self._relative(outcome.output)
        self.listed[rel] = entry(rel, os.path.abspath(outcome.source), outcome.frames, outcome.stages,
                                 outcome.samples, outcome.sample_rate, outcome.fingerprint)
        if self._log is None:
            self._log = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self._log.write(line(self.listed[rel]))
        self._log.flush()

    def __exit__(self, *exc: object) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
            write(self.path, [e for e in self.listed.values() if (self.folder / e["path"]).exists()])
