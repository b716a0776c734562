"""``codec encode`` / ``codec decode`` with several inputs, a folder or a @LIST: the output is a
folder that mirrors the inputs' tree. Outputs that count as done are skipped (a stopped run
resumes); ``--jobs N`` worker processes do groups of files (``codec.files.processes``); the
user sees one progress bar, one ``codec: error: PATH: reason`` line per failed file and a
summary (``codec.cli.report``); the exit code is 2 when any file failed."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from codec.cli.common import CLIError, int_in

if TYPE_CHECKING:
    from codec.cli.report import Report
    from codec.files.jobs import Job
    from codec.files.manifest import Existing
    from codec.files.tree import Planned
    from codec.files.workers import Worker

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
                           f" to its own length (default {batch_default}; speeds measured: docs/usage.md)")
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


def run_many(args: argparse.Namespace, worker: Worker, skipped_note: str) -> int:
    """Do every input file the command line names into the output folder ``args.output`` with
    ``worker`` (its model loaded; with ``--jobs N`` it only plans, and worker processes load
    their own); the exit code. ``skipped_note``: the summary's word on skipped files (why,
    and how to redo them)."""
    from codec.cli.report import Report
    from codec.files.planning import groups
    from codec.files.processes import run_groups

    planned = _plan(args, worker)
    report = Report(worker.verb, len(planned), getattr(args, "quiet", False), skipped_note)
    with worker.ledger(args.output) as ledger:
        jobs = _jobs(planned, worker, ledger, args.force, report)
        batches = groups(jobs, args.batch or 1, worker.long_seconds)
        with report.bar(len(jobs), sum(j.seconds or 0.0 for j in jobs)):
            for outcomes in run_groups(worker, batches, args.jobs or 1):
                for outcome in outcomes:
                    report.add(outcome)
                    if outcome.error is None:
                        ledger.add(outcome)
    return report.finish()


def _plan(args: argparse.Namespace, worker: Worker) -> list[Planned]:
    """Every input file and its output (made the output folder, checked writable); CLIError
    when there is none or the folder cannot be written."""
    from codec.files.tree import InputError, expand, mirror

    try:
        planned = mirror(expand(args.input, set(worker.inputs), exclude=args.output), args.output, worker.suffix)
    except InputError as e:
        raise CLIError(str(e)) from None
    if not planned:
        raise CLIError(f"no input files: the folders hold no {' / '.join(sorted(worker.inputs))} files")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    if not os.access(args.output, os.W_OK | os.X_OK):
        raise CLIError(f"{args.output}: cannot write in this folder (permission denied)")
    return planned


def _jobs(planned: list[Planned], worker: Worker, ledger: Existing, force: bool, report: Report) -> list[Job]:
    """The Jobs to do: each planned file whose output can be written and is not done yet
    (``force``: done ones too); the others counted in ``report`` as failed or skipped."""
    from codec.files.jobs import Job

    jobs, owner = [], {}
    for plan in planned:
        problem = _output_problem(plan, owner)
        if problem:
            report.fail(problem)
            continue
        if ledger.done(plan.output) and not force:
            report.skipped += 1
            continue
        try:
            Path(plan.output).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            report.fail(f"{plan.source}: cannot make the folder for {plan.output} ({e.strerror or e})")
            continue
        jobs.append(Job(plan.source, plan.output, worker.seconds(plan.source)))
    return jobs


def _output_problem(plan: Planned, owner: dict[str, str]) -> str | None:
    """Why ``plan``'s output cannot be written (another input's output, the input itself, a
    folder), or None; ``owner`` records the outputs planned so far (absolute path -> source)."""
    key = os.path.abspath(plan.output)
    if key in owner:
        return f"{plan.source}: its output {plan.output} is also the output of {owner[key]}"
    owner[key] = plan.source
    if key == os.path.abspath(plan.source):
        return f"{plan.source}: the output is the input file"
    if os.path.isdir(plan.output):
        return f"{plan.source}: its output {plan.output} is a directory"
    return None
