"""What a multi-file ``codec encode`` / ``decode`` tells the user: one ``codec: error:`` line
per failed file, a progress bar (files, seconds of audio) on a terminal, and a summary."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from codec.cli.common import note, plural, warn

if TYPE_CHECKING:
    from tqdm import tqdm

    from codec.files.jobs import Outcome


class Report:
    """Counts, error lines and the progress bar of a multi-file run: ``verb`` ("encode",
    "decode") over ``total`` files; ``quiet``: no summary; ``skipped_note``: why a skipped file
    was skipped and how to redo it, for the summary."""

    def __init__(self, verb: str, total: int, quiet: bool, skipped_note: str) -> None:
        self.verb, self.total, self.quiet, self.skipped_note = verb, total, quiet, skipped_note
        self.done = self.failed = self.skipped = self.downmixed = 0
        self.seconds = 0.0
        self._bar: tqdm | None = None
        self._audio_total = 0.0
        self._start = time.monotonic()

    def bar(self, files: int, seconds: float) -> tqdm:
        """A context: the tqdm bar over ``files`` files (``seconds`` of audio) on a terminal."""
        from tqdm import tqdm

        self._bar = tqdm(total=files, desc=self.verb, unit="file", disable=None, leave=False, file=sys.stderr)
        self._audio_total = seconds
        return self._bar

    def fail(self, line: str) -> None:
        """One failed file: its ``codec: error:`` line now (above the bar)."""
        self.failed += 1
        text = f"codec: error: {line}"
        if self._bar is not None and not self._bar.disable:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def add(self, outcome: Outcome) -> None:
        """One finished job: counted, or its error line printed."""
        if outcome.error is not None:
            self.fail(outcome.error)
        else:
            self.done += 1
            self.seconds += outcome.seconds
            self.downmixed += outcome.channels > 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.seconds:.0f}/{self._audio_total:.0f} s audio", refresh=False)
            self._bar.update(1)

    def finish(self) -> int:
        """Print the summary (unless quiet); the exit code: 2 when any file failed, else 0."""
        if self.downmixed:
            warn(f"{plural(self.downmixed, 'file')} with several channels downmixed to mono")
        if not self.quiet:
            elapsed = time.monotonic() - self._start
            done = (f"{self.verb}d {self.done} of {plural(self.total, 'file')} ({self.seconds:.1f} s of audio)"
                    f" in {elapsed:.1f} s ({self.done / max(elapsed, 1e-9):.2f} files/s)")
            parts = [done]
            if self.skipped:
                parts.append(f"{self.skipped} skipped ({self.skipped_note})")
            if self.failed:
                parts.append(f"{self.failed} failed")
            note(", ".join(parts))
        return 2 if self.failed else 0
