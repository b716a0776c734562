"""``codec encode`` / ``codec decode`` with several inputs, a folder or a @LIST: the output is a
folder that mirrors the inputs' tree. Outputs that exist are skipped (a stopped run resumes)
unless --force; ``--jobs N`` worker processes do groups of files (``codec.files.batch``); one
progress bar counts files and audio seconds; a file that fails is one ``codec: error: PATH:
reason`` line and the others go on; a summary ends the run, whose exit code is 2 when any
file failed."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from codec.cli.common import CLIError, int_in, note, plural, warn

MANY_TITLE = "several files (several INPUTs, a folder or a @LIST; OUTPUT is then a folder)"
MANY_OPTIONS = ("jobs", "batch", "format", "ext")


def add_options(p: argparse.ArgumentParser, batch_default: int) -> argparse._ArgumentGroup:
    """The options of the multi-file form (--jobs, --batch); returns their group for more."""
    many = p.add_argument_group(MANY_TITLE)
    many.add_argument("-j", "--jobs", type=int_in(1, 256), metavar="N",
                      help="worker processes, each with the model loaded once and one thread (default 1: this"
                           " process, one thread)")
    many.add_argument("--batch", type=int_in(1, 256), metavar="N",
                      help="files of similar length run through the model together in one padded batch, each cut"
                           f" to its own length (default {batch_default}: on a CPU, batches measured no faster)")
    return many


def is_many(inputs: list[str]) -> bool:
    """Whether the command line is the multi-file form: several inputs, a folder or a @LIST."""
    from codec.files.tree import is_list

    return len(inputs) > 1 or any(is_list(a) or os.path.isdir(a) for a in inputs)


def single_input(args: argparse.Namespace) -> str:
    """The one input of the single-file form; CLIError for an option of the multi-file form."""
    for name in MANY_OPTIONS:
        if getattr(args, name, None) is not None:
            raise CLIError(f"--{name} applies only to several inputs, a folder or a @LIST")
    return args.input[0]


def check_output_folder(args: argparse.Namespace, single_suffixes: Iterable[str], verb: str) -> None:
    """Refuse, before any work, an OUTPUT that cannot be the output folder of several inputs."""
    out = args.output
    if "-" in args.input:
        raise CLIError("- (stdin) cannot be one of several inputs")
    if out == "-":
        raise CLIError("the output of several inputs is a folder, not - (stdout)")
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CLIError(f"{out} exists and is not a folder (several inputs need an output folder)")
    if not p.exists() and p.suffix.lower() in single_suffixes:
        folders = [a for a in args.input if os.path.isdir(a)]
        if len(args.input) == 1 and folders:
            raise CLIError(f"{folders[0]}: is a directory; to {verb} the files in it give an output folder,"
                           f" not a file name like {out}")
        raise CLIError(f"{out}: several inputs need an output folder, not a file name (make the folder"
                       " first to use this name)")


def run_many(args: argparse.Namespace, settings, find: set[str], suffix: str,
             seconds: Callable[[str], float | None], verb: str, manifest: bool = False) -> int:
    """Do every input file the command line names into the output folder; the exit code.

    ``settings``: a ``codec.files.batch`` EncodeSettings or DecodeSettings; ``find``: the
    extensions taken from folders; ``suffix``: the outputs' extension; ``seconds``: a file's
    length in seconds, None if unknown (batching and the bar); ``verb``: "encode" or "decode";
    ``manifest``: keep ``manifest.jsonl`` (code arrays; ``codec.files.manifest``), where an
    output counts as done only with its line (an array written just before a run was stopped,
    whose line was not, is written again).
    """
    from codec.files import manifest as mf
    from codec.files.batch import Job, groups
    from codec.files.tree import InputError, expand, mirror

    out_dir = args.output
    try:
        planned = mirror(expand(args.input, find, exclude=out_dir), out_dir, suffix)
    except InputError as e:
        raise CLIError(str(e)) from None
    if not planned:
        raise CLIError(f"no input files: the folders hold no {' / '.join(sorted(find))} files")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise CLIError(f"{out_dir}: cannot write in this folder (permission denied)")
    manifest_path = Path(out_dir) / mf.MANIFEST_NAME
    listed = mf.read(manifest_path) if manifest else {}
    report = Report(verb, len(planned), args)
    jobs, owner = [], {}
    for plan in planned:
        problem = _output_problem(plan, owner)
        if problem:
            report.fail(problem)
            continue
        exists = os.path.exists(plan.output) and (not manifest or plan.relative in listed)
        if exists and not args.force:
            report.skipped += 1
            continue
        try:
            Path(plan.output).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            report.fail(f"{plan.source}: cannot make the folder for {plan.output} ({e.strerror or e})")
            continue
        jobs.append(Job(plan.source, plan.output, seconds(plan.source)))
    relative = {p.output: p.relative for p in planned}
    batches = groups(jobs, args.batch or 1)
    log = open(manifest_path, "a", encoding="utf-8") if manifest and jobs else None  # noqa: SIM115
    try:
        with report.bar(len(jobs), sum(j.seconds or 0.0 for j in jobs)):
            for outcomes in _results(settings, batches, args.jobs or 1):
                for o in outcomes:
                    report.add(o)
                    if o.error is None and log is not None:
                        rel = relative[o.output]
                        listed[rel] = mf.entry(rel, os.path.abspath(o.source), o.frames, o.stages, o.samples,
                                               o.sample_rate, o.fingerprint)
                        log.write(mf.line(listed[rel]))
                        log.flush()
    finally:
        if log is not None:
            log.close()
            mf.write(manifest_path, [e for e in listed.values() if (Path(out_dir) / e["path"]).exists()])
    return report.finish()


def _output_problem(plan, owner: dict[str, str]) -> str | None:
    """Why ``plan``'s output cannot be written (another input's output, the input itself, a
    folder), or None; ``owner`` records the outputs planned so far."""
    key = os.path.abspath(plan.output)
    if key in owner:
        return f"{plan.source}: its output {plan.output} is also the output of {owner[key]}"
    owner[key] = plan.source
    if key == os.path.abspath(plan.source):
        return f"{plan.source}: the output is the input file"
    if os.path.isdir(plan.output):
        return f"{plan.source}: its output {plan.output} is a directory"
    return None


def _results(settings, batches: list, jobs: int) -> Iterable[list]:
    """Each group's Outcomes as they finish: in this process (``jobs`` 1) or in ``jobs`` worker
    processes (spawned: a fresh interpreter each; ended with SIGTERM if the run stops)."""
    from codec.files import batch

    if jobs == 1 or len(batches) <= 1:
        yield from batch.run_here(settings, batches)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    pool = context.Pool(min(jobs, len(batches)), initializer=batch.init_process, initargs=(settings,))
    try:
        yield from pool.imap_unordered(batch.run_in_process, batches)
    except BaseException:  # stopped (a signal, the consumer): SIGTERM unwinds the running jobs
        pool.terminate()
        pool.join()
        raise
    pool.close()  # all done: the workers end on their own
    pool.join()


class Report:
    """Counts, error lines and the progress bar of a multi-file run."""

    def __init__(self, verb: str, total: int, args: argparse.Namespace) -> None:
        self.verb, self.total, self.quiet = verb, total, getattr(args, "quiet", False)
        self.done = self.failed = self.skipped = self.downmixed = 0
        self.seconds = 0.0
        self._bar = None
        self._start = time.monotonic()

    def bar(self, files: int, seconds: float):
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

    def add(self, outcome) -> None:
        """One finished job (a ``codec.files.batch.Outcome``)."""
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
                parts.append(f"{self.skipped} skipped (the output exists; --force redoes it)")
            if self.failed:
                parts.append(f"{self.failed} failed")
            note(", ".join(parts))
        return 2 if self.failed else 0
