"""``codec eval``: check the inputs, run the sweep, write the outputs (tables, plots, report.html
and its listening clips).

Everything the user can get wrong (a model directory that is missing or not a model, a data
folder without audio, a bad stage list) raises EvalError with a one-line message before any
work starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from codec.eval.clips import LISTEN_UTTERANCES
from codec.eval.sweep import INT8_SUFFIX, System

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STAGES = "1,2,4,8,12"
DEFAULT_OPUS = "6,8,12,16"
OPUS_NAME = "opus"
OUTPUTS = ("results.csv", "summary.md", "rate_quality.png", "codebooks.png", "report.html")


class EvalError(ValueError):
    """Bad input to the evaluation (one line)."""


def default_data() -> Path:
    """LibriSpeech test-other: $CODEC_DATA/LibriSpeech/test-other, else ../shared/data beside the repository."""
    root = Path(os.environ.get("CODEC_DATA", REPO_ROOT.parent / "shared" / "data"))
    return root / "LibriSpeech" / "test-other"


def parse_list(text: str, what: str, kind: type = int) -> tuple:
    """'1,2,4' -> (1, 2, 4): positive, distinct, sorted; 'none' or '' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise EvalError(f"{what} {text!r}: expected a comma-separated list of numbers, e.g. "
                        f"{DEFAULT_STAGES if kind is int else DEFAULT_OPUS}") from None
    if any(not v > 0 for v in values):
        raise EvalError(f"{what} {text!r}: values must be positive")
    return tuple(sorted(set(values)))


def system_names(model_dirs: Sequence[str]) -> list[str]:
    """Each model's directory name; where two share one, their last two path parts."""
    paths = [Path(m).resolve() for m in model_dirs]
    names = [p.name for p in paths]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    if len(set(names)) != len(names):
        raise EvalError(f"model directories given twice or not told apart by name: {' '.join(model_dirs)}")
    if OPUS_NAME in names:
        raise EvalError(f"a model directory may not be named {OPUS_NAME!r} (the name of the baseline)")
    return names


def load_systems(model_dirs: Sequence[str], stages: Sequence[int], entropy: bool,
                 warn: Callable[[str], None], int8: bool = False) -> list[System]:
    """Check every model (and its priors with ``entropy``) and the stage counts it can run;
    with ``int8`` each model is also evaluated with int8 weights as system NAME+int8."""
    from codec.bitstream.errors import BitstreamError
    from codec.bitstream.priors import Priors
    from codec.model import Codec

    systems = []
    for name, model_dir in zip(system_names(model_dirs), model_dirs):
        if not Path(model_dir).is_dir():
            raise EvalError(f"model {model_dir}: no such directory")
        try:
            model = Codec.from_pretrained(model_dir)
        except Exception as e:  # noqa: BLE001 - any failure to load is one line for the user
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise EvalError(f"cannot load model from {model_dir}: {first}") from None
        if entropy:
            try:
                priors = Priors.load(model_dir)
            except BitstreamError as e:
                raise EvalError(str(e)) from None
            if priors.fingerprint != model.fingerprint():
                raise EvalError(f"entropy priors in {model_dir} belong to another model; run `codec priors` again")
        fits = tuple(n for n in stages if n <= model.num_stages)
        if not fits:
            raise EvalError(f"--stages {','.join(map(str, stages))}: model {name} has only {model.num_stages} stages")
        if len(fits) < len(stages):
            skipped = ",".join(str(n) for n in stages if n > model.num_stages)
            warn(f"{name} has {model.num_stages} stages; skipping --stages {skipped} for it")
        systems.append(System(name, "codec", fits, str(Path(model_dir).resolve()), entropy))
        if int8:
            systems.append(System(name + INT8_SUFFIX, "codec", fits, str(Path(model_dir).resolve()), False, True))
    return systems


def spread(files: Sequence[Path], root: Path, limit: int | None) -> list[Path]:
    """``limit`` of ``files`` (sorted paths under ``root``), taken round-robin over their
    top-level folders (LibriSpeech: speakers), so a subset still covers every speaker; the
    result is in sorted order. All files when ``limit`` is None."""
    if limit is None or limit >= len(files):
        return list(files)
    groups: dict[str, list[Path]] = {}
    for f in files:
        parts = f.relative_to(root).parts
        groups.setdefault(parts[0] if len(parts) > 1 else "", []).append(f)
    queues = [list(g) for g in groups.values()]
    picked: list[Path] = []
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return sorted(picked)


def find_data(data: str | Path, limit: int | None) -> list[tuple[str, str]]:
    """(path, utterance name) of the audio files under ``data`` (recursive, sorted); with
    ``limit``, that many, spread over the top-level folders (``spread``)."""
    from codec.files.estimate import audio_files

    root = Path(data)
    if not root.is_dir():
        raise EvalError(f"--data {data}: no such directory")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit {limit}: must be at least 1")
    files = spread(audio_files(root), root, limit)
    if not files:
        raise EvalError(f"--data {data}: no audio files (.wav .flac .ogg) found")
    return [(str(f), f.relative_to(root).as_posix()) for f in files]


def run_evaluation(models: Sequence[str], out: str | Path, data: str | Path | None = None,
                   stages: str = DEFAULT_STAGES, opus: str = DEFAULT_OPUS, entropy: bool = False,
                   limit: int | None = None, jobs: int | None = None, progress: bool | None = None,
                   int8: bool = False, listen: int = LISTEN_UTTERANCES,
                   warn: Callable[[str], None] = print, note: Callable[[str], None] = print,
                   ) -> dict[str, Path]:
    """Evaluate ``models`` (directories from save_pretrained) and Opus; returns the output paths.
    report.html has players for ``listen`` utterances (clips in OUT/listen/; 0: none)."""
    if not models:
        raise EvalError("no model directories given")
    stage_list = parse_list(stages, "--stages")
    if not stage_list:
        raise EvalError("--stages: give at least one stage count")
    opus_rates = parse_list(opus, "--opus", float)
    if jobs is not None and jobs < 1:
        raise EvalError(f"--jobs {jobs}: must be at least 1")
    if listen < 0:
        raise EvalError(f"--listen {listen}: must be 0 or more")
    data = default_data() if data is None else Path(data)
    files = find_data(data, limit)
    systems = load_systems(models, stage_list, entropy, warn, int8)
    notes = []
    if opus_rates:
        from codec.eval.opus import missing_tools

        missing = missing_tools()
        if missing:
            msg = f"{' and '.join(missing)} not found (install opus-tools); the Opus baseline is skipped"
            warn(msg)
            notes.append(msg)
        else:
            systems.append(System(OPUS_NAME, "opus", opus_rates))

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    from codec.eval import clips, page, plots, report
    from codec.eval.sweep import sweep

    start = time.monotonic()
    chosen = clips.choose_utterances(files, listen)
    clip_dir = out / clips.LISTEN_DIR
    if chosen:
        clip_dir.mkdir(exist_ok=True)
        for k, (path, _) in enumerate(chosen, start=1):
            clips.write_original(clip_dir / clips.original_file(k), path)
    listened = [utt for _, utt in chosen]
    rows, counts = sweep(systems, files, jobs or os.cpu_count() or 1, progress, clip_dir, listened)
    points = report.aggregate(rows)
    codebooks = report.codebook_table(counts)
    seconds = sum(r["duration_s"] for r in rows if r["system"] == systems[0].name) / len(systems[0].settings)
    paths = {name: out / name for name in OUTPUTS}
    report.write_results(paths["results.csv"], rows)
    report.write_csv(out / "codebooks.csv", codebooks, list(codebooks[0]) if codebooks else [])
    paths["summary.md"].write_text(report.summary_markdown(points, codebooks, str(data), len(files), seconds, notes))
    plots.rate_quality(paths["rate_quality.png"], points, OPUS_NAME)
    plots.codebooks(paths["codebooks.png"], codebooks)
    # the page last: it embeds the plots just written and links the clips the sweep wrote
    sections = page.listening_sections(listened, systems, rows)
    figures = {name: (out / name).read_bytes() for name, _ in page.FIGURES}
    page.write_page(paths["report.html"], page.render(points, codebooks, figures, sections, str(data),
                                                      len(files), seconds, notes))
    clips.remove_stale(clip_dir, page.linked_files(sections))
    paths["codebooks.csv"] = out / "codebooks.csv"
    counts = (f"{len(systems)} system{'s' * (len(systems) != 1)} on {len(files)}"
              f" utterance{'s' * (len(files) != 1)}")
    note(f"evaluated {counts} in {time.monotonic() - start:.0f} s;"
         f" wrote {', '.join(paths)} to {out}")
    return paths
