#!/usr/bin/env python3
"""Write one manifest per LibriSpeech subset: ``<out>/<subset>.tsv`` with ``path<TAB>num_samples``
lines (the format codec/train/data.py reads), reading every FLAC header in parallel.

    python tools/prepare_librispeech.py --out data/manifests                 # every subset found
    python tools/prepare_librispeech.py --root /data/LibriSpeech --subsets train-clean-100 test-other

Then train from them: ``codec train RECIPE --set data.train_manifest=data/manifests/train-clean-100.tsv``.
Bad input ends with one ``prepare_librispeech: error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from codec.train.config import DEFAULT_LIBRISPEECH
from codec.train.data import DataError, Utterance, utterance_info, write_manifest


def default_root() -> Path:
    return Path(os.environ["LIBRISPEECH"]) if os.environ.get("LIBRISPEECH") else DEFAULT_LIBRISPEECH


def subset_utterances(root: Path, subset: str, jobs: int, progress: bool = True) -> list[Utterance]:
    """Every ``<root>/<subset>/<speaker>/<chapter>/*.flac`` with its length, sorted by path.
    Header reads run on ``jobs`` threads (libsndfile releases the GIL)."""
    from tqdm import tqdm

    files = sorted((root / subset).glob("*/*/*.flac"))
    if not files:
        raise DataError(f"{root / subset}: no FLAC files in <speaker>/<chapter>/ folders")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        it = pool.map(utterance_info, files)
        return list(tqdm(it, total=len(files), desc=subset, unit="file", disable=not progress, file=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prepare_librispeech", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=default_root(),
                        help="LibriSpeech root holding <subset>/ folders (default: $LIBRISPEECH, else "
                             "../shared/data/LibriSpeech)")
    parser.add_argument("--subsets", nargs="+", help="subsets to index (default: every subset folder found)")
    parser.add_argument("--out", type=Path, default=Path("data/manifests"), help="output folder (default data/manifests)")
    parser.add_argument("--jobs", type=int, default=min(16, (os.cpu_count() or 2) * 2), help="parallel header reads")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if not args.root.is_dir():
            raise DataError(f"--root {args.root}: no such directory")
        subsets = args.subsets or sorted(p.name for p in args.root.iterdir() if p.is_dir())
        if not subsets:
            raise DataError(f"--root {args.root}: no subset folders")
        args.out.mkdir(parents=True, exist_ok=True)
        for subset in subsets:
            if not (args.root / subset).is_dir():
                raise DataError(f"subset {args.root / subset}: no such directory")
            utts = subset_utterances(args.root, subset, max(1, args.jobs), not args.quiet)
            path = args.out / f"{subset}.tsv"
            write_manifest(path, utts)
            hours = sum(u.num_samples for u in utts) / 16000 / 3600  # LibriSpeech is 16 kHz
            speakers = len({u.speaker for u in utts})
            print(f"{path}: {len(utts)} utterances, {speakers} speakers, {hours:.2f} h", file=sys.stderr)
    except (DataError, OSError) as exc:
        print(f"prepare_librispeech: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
