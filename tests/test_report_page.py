"""report.html, the page `codec eval` writes to read and to listen to: escaping, relative links
to clips that exist, the choice of utterances, and (where Debian's chromium and chromedriver
are installed, as in CI) the page loaded in headless chromium: no console error, every player
knows its clip's length, both served over HTTP and opened from a copied folder."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import os
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import data_root

from codec.cli import main
from codec.eval import clips
from codec.eval.page import linked_files, listening_sections, render
from codec.eval.report import aggregate
from codec.eval.sweep import System

HAVE_OPUS = shutil.which("opusenc") is not None and shutil.which("opusdec") is not None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900"]
STAGES = (1, 12)


class Tags(HTMLParser):
    """Every start tag's attributes and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def attr(self, tag: str, name: str) -> list[str]:
        return [a[name] for t, a in self.tags if t == tag and name in a]


def assert_self_contained(page: str) -> None:
    """No script and no link outside the page's folder: images are data: URIs, everything
    else a relative path (or an anchor)."""
    tags = Tags(page)
    assert not [t for t, _ in tags.tags if t in ("script", "iframe", "object", "embed")]
    for _, attrs in tags.tags:
        for name in ("src", "href"):
            link = attrs.get(name)
            if link is None:
                continue
            assert link.startswith(("data:", "#")) or ("://" not in link and not link.startswith(("/", "\\"))), link
    assert "Content-Security-Policy" in page


# ----- the page without a browser -------------------------------------------------------------
def row(system: str, stages: int | str, utterance: str, nominal: float, pesq: float) -> dict:
    return {"system": system, "stages": stages, "utterance": utterance, "duration_s": 3.0,
            "nominal_kbps": nominal, "kbps": nominal + 0.1, "payload_kbps": nominal, "file_bytes": 1000,
            "payload_bytes": 950, "pesq": pesq, "stoi": 0.9, "mel_distance": 0.5, "si_sdr": -3.0}


def test_page_escapes_every_text_and_links_only_inside_its_folder() -> None:
    evil = '<script>alert("x")</script>&m'
    utts = ["spk<1>/a&b.flac", "spk2/c'd.flac"]
    systems = [System(evil, "codec", (1, 2), "/nowhere", entropy=True), System("opus", "opus", (6.0,))]
    rows = [row(evil, n, u, 0.5 * n, 1.5 + n / 10) for n in (1, 2) for u in utts]
    rows += [row("opus", "", u, 6.0, 2.0 + i) for i, u in enumerate(utts)]
    sections = listening_sections(utts, systems, rows)
    figures = {"rate_quality.png": b"\x89PNG fake", "codebooks.png": b"\x89PNG other"}
    page = render(aggregate(rows), [], figures, sections, "/data/<x>&y", 2, 6.0, ["note <b>bold</b>"])

    assert "<script" not in page.lower() and "<b>" not in page and "spk<1>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;m" in page
    assert "spk&lt;1&gt;/a&amp;b.flac" in page and "/data/&lt;x&gt;&amp;y" in page and "c&#x27;d.flac" in page
    assert_self_contained(page)
    tags = Tags(page)
    # both figures inline, byte for byte
    assert [base64.b64decode(s.split(",", 1)[1]) for s in tags.attr("img", "src")] == list(figures.values())
    # a player per utterance for the original, each stage count and the Opus bitrate, linked
    # relatively under listen/ by the names the sweep writes (system numbers from 1)
    srcs = tags.attr("audio", "src")
    assert len(srcs) == 2 * (1 + 2 + 1) and all(s.startswith(clips.LISTEN_DIR + "/") for s in srcs)
    assert "listen/u1_original.flac" in srcs and "listen/u2_s2_opus_6kbps.flac" in srcs
    assert f"listen/u1_s1_{clips._slug(evil)}_2st.flac" in srcs
    assert {Path(s).name for s in srcs} == linked_files(sections)
    text = " ".join(tags.text)
    assert "0.60 kbit/s · PESQ 1.60" in text  # this utterance's own numbers under its player
    assert "range-coded" in text  # the +entropy system is the same audio: said, not repeated


def test_clip_names_keep_systems_apart_and_are_safe() -> None:
    a = clips.clip_file(1, 1, "ema/model", "codec", 12)
    b = clips.clip_file(1, 2, "ema_model", "codec", 12)
    assert a != b and "/" not in a + b and a.endswith("_12st.flac")
    assert clips.clip_file(3, 4, "opus", "opus", 6.5) == "u3_s4_opus_6.5kbps.flac"
    assert Path(clips.original_file(2)).match(clips.CLIP_PATTERN)


def _write(root: Path, name: str, seconds: float) -> tuple[str, str]:
    """A silent file ``root/name`` of ``seconds``; its (path, utterance name)."""
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    sf.write(root / name, np.zeros(int(seconds * 8000), dtype=np.float32), 8000)
    return str(root / name), name


def test_utterances_one_per_speaker_spread_evenly_long_enough_first(tmp_path: Path) -> None:
    # 6 speakers, each a short file first and a long one second
    files = [_write(tmp_path, f"s{i}/{n}.wav", seconds) for i in range(6) for n, seconds in (("a", 0.2), ("b", 0.6))]
    chosen = clips.choose_utterances(files, 3, min_seconds=0.5)
    assert [u for _, u in chosen] == ["s0/b.wav", "s2/b.wav", "s4/b.wav"]
    assert clips.choose_utterances(list(reversed(files)), 3, min_seconds=0.5) == list(reversed(chosen))
    # fewer speakers than wanted: every speaker, then their next utterances in turn
    two = [f for f in files if f[1].startswith(("s0/", "s1/"))]
    assert [u for _, u in clips.choose_utterances(two, 3, min_seconds=0.5)] == ["s0/a.wav", "s0/b.wav", "s1/b.wav"]
    # nothing long enough: the longest first
    assert [u for _, u in clips.choose_utterances(two, 1, min_seconds=5)] == ["s0/b.wav"]
    assert clips.choose_utterances(files, 0) == []


def test_stale_clips_are_removed_and_nothing_else(tmp_path: Path) -> None:
    for name in ("u1_original.flac", "u2_original.flac", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    clips.remove_stale(tmp_path, {"u1_original.flac"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "u1_original.flac"]


# ----- a real evaluation ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """`codec eval` of the shipped model on 3 test-other utterances (3 speakers), Opus at 6 kbit/s."""
    out = tmp_path_factory.mktemp("report") / "eval"
    data = data_root() / "test-other"
    if not data.is_dir():
        pytest.fail(f"no LibriSpeech test-other under {data}")
    args = ["eval", "speech16k", "--data", str(data), "--limit", "3", "--stages", ",".join(map(str, STAGES)),
            "--opus", "6" if HAVE_OPUS else "none", "--jobs", "1", "--out", str(out)]
    assert main(args) == 0
    return out


def test_report_links_clips_that_exist_beside_it(evaluated: Path) -> None:
    page = (evaluated / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    tags = Tags(page)
    srcs = tags.attr("audio", "src")
    per_utterance = 1 + len(STAGES) + HAVE_OPUS
    assert len(srcs) == 3 * per_utterance == len(set(srcs))
    for src in srcs:
        path = evaluated / src
        assert path.is_file() and path.stat().st_size > 0, src
        info = sf.info(path)
        assert info.format == "FLAC" and info.subtype == "PCM_16" and info.channels == 1, src
        assert 0 < info.duration <= clips.CLIP_SECONDS, src
    # the folder holds exactly what the page plays
    assert sorted(p.name for p in (evaluated / clips.LISTEN_DIR).iterdir()) == sorted(Path(s).name for s in srcs)
    # one utterance per speaker
    headings = [t for t in tags.text if t.endswith(".flac")]
    assert len({h.split("/")[0] for h in headings}) == 3
    images = [base64.b64decode(s.split(",", 1)[1]) for s in tags.attr("img", "src")]
    assert images == [(evaluated / "rate_quality.png").read_bytes(), (evaluated / "codebooks.png").read_bytes()]
    assert "± " in page  # the intervals


def test_clip_is_the_start_of_what_was_scored(evaluated: Path) -> None:
    """The 12-stage clip is the model's decode of the 12-stage file (as 16-bit samples), not a
    second, different decode."""
    import torch

    from codec import Codec
    from codec.bitstream.container import parse
    from codec.files.coding import decode_audio, encode_stream, make_header
    from codec.pretrained import resolve

    page = (evaluated / "report.html").read_text(encoding="utf-8")
    utterance = next(t for t in Tags(page).text if t.endswith(".flac"))
    model = Codec.from_pretrained(resolve("speech16k")).eval()
    audio, _ = sf.read(data_root() / "test-other" / utterance, dtype="float32")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        buf = io.BytesIO()
        streamer = model.streamer()
        encode_stream(streamer, [audio], buf, make_header(model, 12))
        decoded = decode_audio(streamer, parse(buf.getvalue()))
    finally:
        torch.set_num_threads(before)
    clip, rate = sf.read(evaluated / clips.LISTEN_DIR / "u1_s1_speech16k_12st.flac", dtype="float32")
    n = int(clips.CLIP_SECONDS * rate)
    assert rate == model.sample_rate and len(clip) == n
    assert np.abs(clip - np.clip(decoded[:n], -1, 1)).max() <= 1.5 / 32768


# ----- in a browser ---------------------------------------------------------------------------
WAIT_FOR_PLAYERS = """
const done = arguments[arguments.length - 1];
const players = Array.from(document.querySelectorAll('audio'));
const ready = a => a.readyState >= 1 || a.error ? Promise.resolve() : new Promise(r => {
  a.addEventListener('loadedmetadata', r); a.addEventListener('error', r); });
Promise.all(players.map(ready)).then(() => done(players.map(a => ({
  src: a.getAttribute('src'), duration: a.duration, error: a.error ? a.error.code : null}))));
"""


class _Recorder(http.server.SimpleHTTPRequestHandler):
    """Serves the folder quietly and records each request's path and status."""

    requests: list[tuple[str, int]]

    def log_request(self, code: object = "-", size: object = "-") -> None:
        self.requests.append((self.path, int(code) if isinstance(code, int) else 0))

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
def test_report_page_plays_in_headless_chromium(evaluated: Path, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    # a copy elsewhere: the folder must work as it is, wherever it is put
    folder = tmp_path / "copied"
    shutil.copytree(evaluated, folder)
    requests: list[tuple[str, int]] = []
    handler = type("Handler", (_Recorder,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # chromedriver named explicitly: selenium then never tries to download one
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_script_timeout(60)
        expected = sorted(Tags((folder / "report.html").read_text(encoding="utf-8")).attr("audio", "src"))
        for url in (f"http://127.0.0.1:{server.server_address[1]}/report.html", (folder / "report.html").as_uri()):
            driver.get(url)
            players = driver.execute_async_script(WAIT_FOR_PLAYERS)
            assert sorted(p["src"] for p in players) == expected, url
            for p in players:
                assert p["error"] is None and p["duration"] > 0, (url, p)
                assert p["duration"] == pytest.approx(sf.info(folder / p["src"]).duration, abs=0.05), (url, p)
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert errors == [], (url, errors)
            assert driver.execute_script("return document.title") == "Rate-quality evaluation"
        # over HTTP it asked for the page and its clips only, and got each
        assert all(code == 200 for _, code in requests), requests
        assert {path for path, _ in requests} <= {"/report.html", *("/" + s for s in expected)}

        # the whole page as one image, for a look (CODEC_REPORT_SCREENSHOT=path keeps a copy)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        png = tmp_path / "report.png"
        png.write_bytes(base64.b64decode(shot["data"]))
        if os.environ.get("CODEC_REPORT_SCREENSHOT"):
            shutil.copyfile(png, os.environ["CODEC_REPORT_SCREENSHOT"])
        height = int.from_bytes(png.read_bytes()[20:24], "big")  # PNG IHDR
        assert height > 900  # longer than the window: the plots, the table and the players
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
