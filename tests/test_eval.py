"""`codec eval`: real bitstreams and their bitrates, the Opus baseline, the four outputs,
determinism across process counts, and one-line errors on bad input. Tiny untrained models
on crops of real LibriSpeech speech."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, speech

from codec import Codec
from codec.bitstream.container import parse
from codec.bitstream.priors import Priors
from codec.cli import main
from codec.eval.metrics import score
from codec.eval.opus import ogg_packet_bytes, opus_roundtrip
from codec.eval.sweep import System, Task, codec_task
from codec.files.coding import decode_audio, encode_stream, make_header
from codec.files.estimate import estimate_priors

CROPS = [(2.0, 0), (1.5, 1), (2.5, 2)]  # (seconds, LibriSpeech index)
HAVE_OPUS = shutil.which("opusenc") is not None and shutil.which("opusdec") is not None


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Two tiny models (with priors) and a data folder of three speech crops in sub-folders."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    for i, (seconds, index) in enumerate(CROPS):
        (data / f"spk{i}").mkdir(parents=True)
        sf.write(data / f"spk{i}" / f"utt{i}.flac", speech(seconds, index)[0, 0].numpy(), 16000)
    (data / "spk0" / "notes.txt").write_text("not audio\n")
    files = sorted(data.rglob("*.flac"))
    models = {}
    for seed, name in enumerate(["tiny_a", "tiny_b"]):
        torch.manual_seed(seed)
        model = Codec.from_config(REPO / "recipes" / "tiny.yaml").eval()
        model.save_pretrained(root / name)
        estimate_priors(model, files).save(root / name)
        models[name] = str(root / name)
    return {"root": root, "data": str(data), "files": files, **models}


@pytest.fixture
def one_thread():
    """As in the evaluation's workers (and cheaper on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("codec: error: "), err
    return lines[0]


# ----- one utterance, directly ----------------------------------------------------------------
def test_codec_task_writes_real_files_and_takes_the_bitrate_from_them(env, tmp_path, one_thread):
    model = Codec.from_pretrained(env["tiny_a"])
    priors = Priors.load(env["tiny_a"])
    path = env["files"][0]
    system = System("tiny_a", "codec", (1, 4), str(Path(env["tiny_a"]).resolve()), entropy=True)
    result = codec_task(Task(system, str(path), "utt"), tmp_path)
    audio, _ = sf.read(path, dtype="float32")
    rows = {(r["system"], r["stages"]): r for r in result.rows}
    assert len(rows) == 4
    for n in (1, 4):
        # The file the evaluation scored is byte-identical to what `codec encode --stages n` writes.
        files: dict[str, bytes] = {}
        for name, pri, stored in (("tiny_a", None, f"stages_{n}.rvq"), ("tiny_a+entropy", priors, f"stages_{n}_range.rvq")):
            expected = io.BytesIO()
            encode_stream(model.streamer(), [audio], expected, make_header(model, n, pri), pri)
            files[name] = expected.getvalue()
            assert (tmp_path / stored).read_bytes() == expected.getvalue()
            row = rows[(name, n)]
            size = len(expected.getvalue())
            assert row["file_bytes"] == size
            assert row["payload_bytes"] == size - (44 + 2 * n) - 16
            assert row["duration_s"] == len(audio) / 16000
            assert row["kbps"] * 1000 * row["duration_s"] == pytest.approx(8 * size, rel=1e-12)
            assert row["payload_kbps"] * 1000 * row["duration_s"] == pytest.approx(8 * row["payload_bytes"], rel=1e-12)
            assert row["nominal_kbps"] == pytest.approx(model.bitrate(n) / 1000)
        # ... and the scores are those of the model's own decode of those codes.
        # (decoded from the very file: eval scores what a user of `codec decode` gets)
        reference = decode_audio(model.streamer(), parse(files["tiny_a"]))
        expected_scores = score(audio, reference)
        for name in ("tiny_a", "tiny_a+entropy"):
            for metric, value in expected_scores.items():
                assert rows[(name, n)][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, n, metric)
    frames = -(-len(audio) // model.hop_length)
    assert result.frames == frames
    assert [int(c.sum()) for c in result.counts] == [frames] * model.num_stages


@pytest.mark.skipif(not HAVE_OPUS, reason="opusenc/opusdec not installed (apt-get install opus-tools)")
def test_opus_roundtrip_bitrate_from_the_real_file(env, tmp_path):
    audio, _ = sf.read(env["files"][2], dtype="float32")
    out = opus_roundtrip(audio, 16000, 16, tmp_path)
    data = (tmp_path / "opus_16k.opus").read_bytes()
    assert out.file_size == len(data) and data[:4] == b"OggS"
    assert 0 < out.payload_size < out.file_size == len(data)
    assert ogg_packet_bytes(data) == out.payload_size
    seconds = len(audio) / 16000
    assert 12 < 8 * out.payload_size / seconds / 1000 < 20  # near the requested 16 kbit/s
    assert len(out.audio) == len(audio)
    s = score(audio, out.audio)
    assert s["pesq"] > 2.5 and s["stoi"] > 0.85
    again = opus_roundtrip(audio, 16000, 16, tmp_path)
    assert np.array_equal(again.audio, out.audio) and again.file_size == out.file_size


# ----- the command ----------------------------------------------------------------------------
def test_eval_end_to_end_writes_all_outputs_deterministically(env, tmp_path, capsys):
    args = ["eval", env["tiny_a"], env["tiny_b"], "--data", env["data"], "--stages", "1,2,8",
            "--opus", "8", "--entropy"]
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "tiny_a has 4 stages; skipping --stages 8" in err
    out = tmp_path / "out"
    for name in ("results.csv", "summary.md", "rate_quality.png", "codebooks.png", "codebooks.csv", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # the page's players: 3 utterances x (original, stages 1 and 2 of tiny_a and of tiny_b, Opus)
    assert len(list((out / "listen").glob("*.flac"))) == 3 * (1 + 2 + 2 + HAVE_OPUS)
    for png in ("rate_quality.png", "codebooks.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = read_rows(out / "results.csv")
    systems = ["tiny_a", "tiny_a+entropy", "tiny_b", "tiny_b+entropy"] + (["opus"] if HAVE_OPUS else [])
    assert list(dict.fromkeys(r["system"] for r in rows)) == systems
    assert len(rows) == 3 * (4 * 2 + (1 if HAVE_OPUS else 0))
    assert [r["utterance"] for r in rows[:3]] == ["spk0/utt0.flac", "spk1/utt1.flac", "spk2/utt2.flac"]
    for r in rows:
        assert float(r["kbps"]) == pytest.approx(8 * int(r["file_bytes"]) / float(r["duration_s"]) / 1000)
        assert 1.0 <= float(r["pesq"]) <= 4.65 and 0 <= float(r["stoi"]) <= 1
        if r["system"] == "tiny_a" and r["stages"] == "2":
            assert int(r["file_bytes"]) - int(r["payload_bytes"]) == 44 + 2 * 2 + 16

    summary = (out / "summary.md").read_text()
    for s in systems:
        assert f"| {s} |" in summary
    assert "PESQ (95% CI)" in summary and "Codebook usage" in summary
    book = read_rows(out / "codebooks.csv")
    assert [(r["system"], r["stage"]) for r in book] == [(m, str(i)) for m in ("tiny_a", "tiny_b") for i in (1, 2, 3, 4)]
    for r in book:
        assert 1.0 <= float(r["perplexity"]) <= 64 and 0 < float(r["utilisation"]) <= 1

    # Same numbers with one process as with two.
    assert main([*args, "--jobs", "1", "--out", str(tmp_path / "again")]) == 0
    for name in ("results.csv", "summary.md", "codebooks.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_eval_goes_on_without_opusenc(env, tmp_path, capsys, monkeypatch):
    from codec.eval import opus

    monkeypatch.setattr(opus.shutil, "which", lambda name: None)
    assert main(["eval", env["tiny_a"], "--data", env["data"], "--stages", "1", "--limit", "1",
                 "--jobs", "1", "--out", str(tmp_path)]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "opusenc and opusdec not found" in warnings[0]
    assert {r["system"] for r in read_rows(tmp_path / "results.csv")} == {"tiny_a"}
    assert (tmp_path / "rate_quality.png").is_file() and (tmp_path / "codebooks.png").is_file()


@pytest.mark.parametrize("case", [
    "missing_model", "not_a_model", "empty_data", "missing_data", "bad_stages", "zero_stage",
    "too_many_stages", "bad_opus", "bad_limit", "no_priors", "bad_listen",
])
def test_eval_bad_input_is_one_line_and_exit_2(env, tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_a_model").mkdir()
    shutil.copytree(env["tiny_a"], tmp_path / "nopriors", ignore=shutil.ignore_patterns("priors.json"))
    base = {"model": env["tiny_a"], "data": env["data"], "extra": []}
    base.update({
        "missing_model": {"model": str(tmp_path / "nope")},
        "not_a_model": {"model": str(tmp_path / "not_a_model")},
        "empty_data": {"data": str(tmp_path / "empty")},
        "missing_data": {"data": str(tmp_path / "nowhere")},
        "bad_stages": {"extra": ["--stages", "1,two"]},
        "zero_stage": {"extra": ["--stages", "0,1"]},
        "too_many_stages": {"extra": ["--stages", "5,12"]},
        "bad_opus": {"extra": ["--opus", "6,fast"]},
        "bad_limit": {"extra": ["--limit", "0"]},
        "no_priors": {"model": str(tmp_path / "nopriors"), "extra": ["--entropy"]},
        "bad_listen": {"extra": ["--listen", "-1"]},
    }[case])
    code = main(["eval", base["model"], "--data", base["data"], *base["extra"], "--out", str(tmp_path / "out")])
    assert code == 2
    line = one_error_line(capsys)
    assert "Traceback" not in line
    assert not (tmp_path / "out" / "results.csv").exists()


def test_limit_spreads_over_speakers(tmp_path: Path) -> None:
    """--limit takes files in turn from each top-level folder: 5 of 3 speakers x 3 files give
    2 + 2 + 1, the first files of each, in sorted order; a flat folder gives the first N."""
    from codec.eval.evaluate import spread

    files = sorted(tmp_path / spk / f"{spk}-{i}.flac" for spk in ("a", "b", "c") for i in range(3))
    picked = spread(files, tmp_path, 5)
    assert [p.relative_to(tmp_path).as_posix() for p in picked] == ["a/a-0.flac", "a/a-1.flac", "b/b-0.flac",
                                                                      "b/b-1.flac", "c/c-0.flac"]
    flat = sorted(tmp_path / f"{i}.flac" for i in range(4))
    assert spread(flat, tmp_path, 2) == flat[:2]
    assert spread(files, tmp_path, None) == files


def test_int8_system_scores_the_int8_model(tmp_path, one_thread):
    """``codec eval --int8`` adds MODEL+int8, whose files are what the model's "int8" streamer
    writes (ConvNeXt layers; the int8 weights change its codes)."""
    from codec.eval.evaluate import load_systems
    from codec.recipe import deep_merge, load_recipe
    torch.manual_seed(0)
    recipe = deep_merge(load_recipe(REPO / "recipes" / "tiny_convnext.yaml"), {"model": {"quantizer": {"kind": "ema"}}})
    model = Codec.from_config(recipe)
    model.train()
    with torch.no_grad():
        model(speech(2.0))
    model.eval().save_pretrained(tmp_path / "tc")
    systems = load_systems([str(tmp_path / "tc")], [1, 4], False, print, int8=True)
    assert [(s.name, s.int8) for s in systems] == [("tc", False), ("tc+int8", True)]
    path = tmp_path / "utt.flac"
    sf.write(path, speech(1.5, 1)[0, 0].numpy(), 16000)
    audio, _ = sf.read(path, dtype="float32")
    files = {}
    for system in systems:
        work = tmp_path / f"work_{system.name}"
        work.mkdir()
        result = codec_task(Task(system, str(path), "utt"), work)
        assert [(r["system"], r["stages"]) for r in result.rows] == [(system.name, 1), (system.name, 4)]
        files[system.name] = (work / "stages_4.rvq").read_bytes()
    loaded = Codec.from_pretrained(tmp_path / "tc")
    expected = io.BytesIO()
    encode_stream(loaded.streamer("int8"), [audio], expected, make_header(loaded, 4))
    assert files["tc+int8"] == expected.getvalue()
    assert files["tc+int8"] != files["tc"]


def test_unquantized_quality_tool_scores_the_decoder_of_the_latents(tmp_path, capsys):
    """tools/unquantized_quality.py: decoder(encoder(x)) scored like a bitstream decode."""
    import importlib.util
    import json

    from codec.eval.metrics import score

    spec = importlib.util.spec_from_file_location("uq", REPO / "tools" / "unquantized_quality.py")
    uq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(uq)
    torch.manual_seed(0)
    model = Codec.from_config(REPO / "recipes" / "tiny_convnext.yaml").eval()
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "data").mkdir()
    x = speech(1.5)[0, 0].numpy()
    sf.write(tmp_path / "data" / "a.wav", x, 16000, subtype="FLOAT")
    assert uq.main([str(tmp_path / "m"), "--data", str(tmp_path / "data"), "--json", str(tmp_path / "s.json")]) == 0
    with torch.no_grad():
        y = model.decoder(model.encoder(torch.from_numpy(x)[None, None]))[0, 0, : len(x)].numpy()
    expected = score(x, y)
    got = json.loads((tmp_path / "s.json").read_text())[str(tmp_path / "m")]
    assert got["files"] == 1 and got["stoi"] == pytest.approx(expected["stoi"], abs=1e-6)
    assert got["si_sdr"] == pytest.approx(expected["si_sdr"], abs=1e-4)
    assert "unquantized PESQ" in capsys.readouterr().out
    assert uq.main([str(tmp_path / "nosuch")]) == 2
    assert capsys.readouterr().err.startswith("unquantized_quality: error: ")


def test_paired_bootstrap_interval_holds_the_mean_and_excludes_zero_only_for_a_real_difference() -> None:
    from codec.eval.report import paired_bootstrap

    rng = np.random.default_rng(1)
    shifted = list(0.1 + 0.05 * rng.standard_normal(100))
    mean, lo, hi = paired_bootstrap(shifted)
    assert lo < mean < hi and lo > 0.08 and hi < 0.12
    mean, lo, hi = paired_bootstrap(list(0.05 * rng.standard_normal(100)) + [float("nan")])
    assert lo < 0 < hi and hi - lo < 0.03
    assert paired_bootstrap(shifted) == paired_bootstrap(shifted)  # seeded


def test_compare_report_merges_kinds_and_pairs_them_per_utterance(tmp_path: Path) -> None:
    import importlib.util

    from codec.eval.report import read_results, write_results

    spec = importlib.util.spec_from_file_location("compare_report", REPO / "tools" / "compare_report.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    base = {"duration_s": 2.0, "nominal_kbps": 6.0, "kbps": 6.1, "payload_kbps": 6.0, "file_bytes": 1525,
            "payload_bytes": 1500, "stoi": 0.9, "mel_distance": 0.5, "si_sdr": -10.0}
    for kind, offset in (("ema", 0.0), ("simvq", 0.25)):
        (tmp_path / kind).mkdir()
        rows = [{**base, "system": f"{kind}/model", "stages": 12, "utterance": f"u{i}.flac", "pesq": 2.0 + i / 10 + offset}
                for i in range(8)]
        write_results(tmp_path / kind / "results.csv", rows)
        (tmp_path / kind / "codebooks.csv").write_text(
            f"system,stage,codebook_size,frames,used_codes,utilisation,perplexity\n{kind}/model,1,1024,800,900,0.88,500\n")
    # EMA's log: 12 train rows (speeds 10 and 20, terms falling) and a validation row
    rows = [f"{50 * i},train,1.0,{1.0 - i / 100},{2.0 - i / 100},{10 + 10 * (i % 2)}," for i in range(1, 13)]
    (tmp_path / "ema" / "train_log.csv").write_text(
        "step,split,loss,stft,mel,audio_s_per_s,pesq\n" + "\n".join(rows) + "\n600,valid,1.0,0.5,0.5,,9.9\n")
    assert tool.main([str(tmp_path)]) == 0
    merged = read_results(tmp_path / "results.csv")
    assert len(merged) == 16 and {r["system"] for r in merged} == {"ema/model", "simvq/model"}
    paired = tool.paired_rows(merged, "ema")
    assert len(paired) == 1 and paired[0]["better"] == 8 and paired[0]["n"] == 8
    assert paired[0]["lo"] == pytest.approx(0.25) and paired[0]["hi"] == pytest.approx(0.25)
    summary = (tmp_path / "summary.md").read_text()
    assert "| simvq | 12 | +0.250 |" in summary and "Not evaluated yet: ste, diveq, sf_diveq, hybrid" in summary
    # steps from the last row; speed over the train rows; terms over the last 10 train rows (3..12)
    assert "| ema | 600 | 15.0 | 0.9250 | 1.9250 |" in summary
    assert (tmp_path / "rate_quality.png").stat().st_size > 1000 and (tmp_path / "codebooks.png").is_file()
