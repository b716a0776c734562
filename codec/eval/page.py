"""report.html: the evaluation on one self-contained page, to read and to listen to.

The page holds the rate-quality and codebook plots (PNG as data: URIs), the summary table with
the 95% intervals of every score, and an HTML5 player for each listening clip (the original,
each system at each setting; ``codec.eval.clips``). It loads nothing from elsewhere: no script,
no web font, a Content-Security-Policy that allows only inline styles, data: images and media
from its own folder. The clips are linked relatively (listen/...), so the output folder can be
copied, zipped or served as it is. Every piece of text is HTML-escaped: system names come from
folder names, utterance names from file names.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from codec.eval.clips import CLIP_SECONDS, LISTEN_DIR, clip_file, original_file, speaker
from codec.eval.report import Point, fmt, fmt_ci, stage_usage
from codec.eval.sweep import ENTROPY_SUFFIX, System

FIGURES = (("rate_quality.png", "Rate-quality: mean PESQ against the real bitrate"),
           ("codebooks.png", "Codebook utilisation and perplexity per stage"))
# Scores in the table: (metric, heading, decimals).
SCORES = (("pesq", "PESQ", 3), ("stoi", "STOI", 3), ("mel_distance", "mel dist.", 3),
          ("si_sdr", "SI-SDR dB", 2))
EXPLANATION = (
    "Real kbps = 8 · file bytes / duration over the whole set (header and trailer included; payload kbps"
    " leaves them out; for Opus, the Ogg container vs the Opus packets alone). Scores are means over"
    " utterances with their 95% interval (mean ± 1.96·sd/√n): PESQ wide-band, STOI in [0, 1], mel distance"
    " the L1 of log-mel spectrograms (lower is better), SI-SDR in dB.")
# Only inline styles, data: images and the page's own folder's media; no scripts at all.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; media-src 'self'"
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-bottom: .3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
thead th { background: #f3f3f3; }
.clips { display: flex; flex-wrap: wrap; gap: .6em 1.2em; }
.clip { font-size: .85em; } .clip audio { display: block; width: 15em; height: 2.2em; }
.muted { color: #666; font-size: .9em; }
"""


@dataclass(frozen=True)
class Clip:
    """One player: what it plays (label, e.g. '4 stages'), its link and this utterance's numbers."""

    label: str
    src: str  # relative to the page, e.g. listen/u1_s1_speech16k_4st.flac
    detail: str = ""  # e.g. '2.07 kbit/s · PESQ 1.83' on this utterance


@dataclass(frozen=True)
class ClipRow:
    """One system's players, one per setting evaluated."""

    system: str
    clips: tuple[Clip, ...]
    note: str = ""


@dataclass(frozen=True)
class Listening:
    """One chosen utterance: its original and every system's decoded clips."""

    utterance: str
    seconds: float  # length of the clips
    original: Clip
    rows: tuple[ClipRow, ...]


def _src(name: str) -> str:
    return f"{LISTEN_DIR}/{name}"


def listening_sections(listen: Sequence[str], systems: Sequence[System], rows: Sequence[dict],
                       clip_seconds: float = CLIP_SECONDS) -> list[Listening]:
    """The players of the utterances in ``listen`` (in that order, numbered from 1 as by
    ``sweep``), with each clip's real bitrate and PESQ on that utterance from ``rows``."""
    def key(system: str, utterance: str, setting: float | str) -> tuple:
        return system, utterance, round(float(setting), 6)

    by_key = {key(r["system"], r["utterance"], r["stages"] if r["stages"] != "" else r["nominal_kbps"]): r
              for r in rows}
    sections = []
    for k, utt in enumerate(listen, start=1):
        table = []
        duration = clip_seconds
        for j, s in enumerate(systems, start=1):
            clips = []
            for v in s.settings:
                r = by_key.get(key(s.name, utt, v))
                if r is not None:
                    duration = min(duration, r["duration_s"])
                detail = "" if r is None else f"{r['kbps']:.2f} kbit/s · PESQ {fmt(r['pesq'], 2)}"
                label = (f"{int(v)} stage{'s' * (int(v) != 1)}" if s.kind == "codec" else f"{v:g} kbit/s")
                clips.append(Clip(label, _src(clip_file(k, j, s.name, s.kind, v)), detail))
            note = (f"{s.name}{ENTROPY_SUFFIX} is the same audio in a range-coded file" if s.entropy else "")
            table.append(ClipRow(s.name, tuple(clips), note))
        sections.append(Listening(utt, duration, Clip("", _src(original_file(k))), tuple(table)))
    return sections


def linked_files(sections: Sequence[Listening]) -> set[str]:
    """File names (in the listening folder) of every clip the page plays."""
    return {Path(c.src).name for s in sections for c in (s.original, *(c for r in s.rows for c in r.clips))}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _audio(clip: Clip) -> str:
    # preload="metadata": the browser reads each clip's header (its length) but not the audio
    # until it is played, so a page of many players opens fast
    detail = f'<div class="muted">{_e(clip.detail)}</div>' if clip.detail else ""
    label = f"<div>{_e(clip.label)}</div>" if clip.label else ""
    return (f'<div class="clip">{label}'
            f'<audio controls preload="metadata" src="{_e(quote(clip.src))}"></audio>{detail}</div>')


def _summary_table(points: Sequence[Point], codebooks: Sequence[dict]) -> list[str]:
    head = ["system", "stages", "nominal kbps", "real kbps", "payload kbps",
            *(f"{h} (95% CI)" for _, h, _ in SCORES), "utilisation per stage"]
    out = ['<h2 id="summary">Summary</h2>', "<table>",
           "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for p in points:
        cells = [p.stages if p.stages != "" else "-", f"{p.nominal_kbps:.2f}", f"{p.kbps:.2f}",
                 f"{p.payload_kbps:.2f}", *(fmt_ci(p.means[m], d) for m, _, d in SCORES)]
        out.append(f"<tr><th>{_e(p.system)}</th>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells)
                   + f"<td>{_e(stage_usage(p, codebooks) or '-')}</td></tr>")
    return [*out, "</tbody>", "</table>"]


def _listening(sections: Sequence[Listening]) -> list[str]:
    if not sections:
        return []
    seconds = max(s.seconds for s in sections)
    intro = (f"The first {seconds:g} s of {len(sections)} utterance{'s' * (len(sections) != 1)} (one per"
             " speaker where there are enough): the original, and exactly the audio each system's file"
             f" decoded to and was scored on, as 16-bit FLAC in the folder {LISTEN_DIR}/ beside this page."
             " Under each player: that file's real bitrate and PESQ on this utterance.")
    out = ['<h2 id="listen">Listen</h2>', f'<p class="muted">{_e(intro)}</p>']
    for s in sections:
        who = speaker(s.utterance)
        out += [f"<section><h3>{_e(s.utterance)}</h3>",
                f'<p class="muted">{"speaker " + _e(who) + ", " if who else ""}first {s.seconds:.1f} s</p>',
                "<table><tbody>",
                f'<tr><th>original</th><td><div class="clips">{_audio(s.original)}</div></td></tr>']
        for row in s.rows:
            note = f'<div class="muted">{_e(row.note)}</div>' if row.note else ""
            out.append(f"<tr><th>{_e(row.system)}{note}</th><td><div class=\"clips\">"
                       + "".join(_audio(c) for c in row.clips) + "</div></td></tr>")
        out += ["</tbody></table>", "</section>"]
    return out


def render(points: Sequence[Point], codebooks: Sequence[dict], figures: Mapping[str, bytes],
           sections: Sequence[Listening], data: str, num_files: int, seconds: float,
           notes: Sequence[str] = ()) -> str:
    """The page's HTML: ``figures`` (file name in FIGURES -> PNG bytes) inline, the summary
    table of ``points``, the players of ``sections``, ``notes`` at the end."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<link rel="icon" href="data:,">',  # no request for /favicon.ico
           "<title>Rate-quality evaluation</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           "<h1>Rate-quality evaluation</h1>",
           (f"<p>{num_files} utterance{'s' * (num_files != 1)} ({seconds / 60:.1f} min) from"
            f" <code>{_e(data)}</code>, written by <code>codec eval</code>.</p>"),
           f'<p class="muted">{_e(EXPLANATION)}</p>']
    shown = [(name, alt) for name, alt in FIGURES if name in figures]
    links = [("plots", "Plots")] if shown else []
    links += [("summary", "Summary")] + ([("listen", "Listen")] if sections else [])
    out.append("<nav>" + " · ".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>")
    if shown:
        out.append('<h2 id="plots">Plots</h2>')
        for name, alt in shown:
            b64 = base64.b64encode(figures[name]).decode("ascii")
            out.append(f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'
                       f'<figcaption class="muted">{_e(alt)} ({_e(name)})</figcaption></figure>')
    out += [*_summary_table(points, codebooks), *_listening(sections)]
    if notes:
        out += ["<h2>Notes</h2>", "<ul>", *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
    return "\n".join([*out, "</body>", "</html>", ""])


def write_page(path: Path, text: str) -> None:
    """``text`` to ``path`` (UTF-8), atomically: a reader never sees half a page."""
    from codec.bitstream.atomic import atomic_output

    with atomic_output(str(path)) as f:
        f.write(text.encode("utf-8"))
