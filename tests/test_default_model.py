"""The shipped-model registry (codec.pretrained), Codec.default(), --model NAME|DIR, the
shipped sample and `codec demo`. Tiny untrained models stand in for shipped ones: the
registry root and the default name are monkeypatched, so nothing here depends on whether a
real default model is shipped. Everything runs in process (seconds)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, one_error_line, tiny_model

from codec import Codec, pretrained
from codec.bitstream.container import parse
from codec.cli import main
from codec.cli.demo import SAMPLE, SAMPLE_ID
from codec.cli.eval import shipped_names_to_dirs
from codec.recipe import ConfigError

DEFAULT, OTHER = "tiny16k", "other"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A fake pretrained root with two tiny models (DEFAULT, seed 0, and OTHER, seed 1), a
    trained model outside it (seed 2), and 1 s of the shipped sample."""
    root = tmp_path_factory.mktemp("default_model")
    (root / "pretrained").mkdir()
    tiny_model("ste", seed=0).save_pretrained(root / "pretrained" / DEFAULT)
    tiny_model("ema", seed=1).save_pretrained(root / "pretrained" / OTHER)
    (root / "pretrained" / "__pycache__").mkdir()  # not a model: ignored by list_models
    tiny_model("ste", seed=2).save_pretrained(root / "trained")
    audio, rate = sf.read(SAMPLE, dtype="float32", frames=16000)
    sf.write(root / "speech.wav", audio, rate)
    return {"root": root, "speech": str(root / "speech.wav"), "audio": audio}


@pytest.fixture
def shipped(store, monkeypatch, one_thread) -> dict:
    """The registry pointed at the fake root, with DEFAULT as the default model."""
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", store["root"] / "pretrained")
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", DEFAULT)
    return store


def fingerprint_of(rvq: Path) -> bytes:
    return parse(rvq.read_bytes()).header.fingerprint


def reference(model_dir: Path, audio: np.ndarray) -> np.ndarray:
    model = Codec.from_pretrained(model_dir)
    exact = model.streamer("exact")  # the encodes compared with this pass --exact
    return model.decode(exact.encode_offline(torch.from_numpy(audio)[None, None]))[0, 0, : len(audio)].numpy()


# ----- registry -------------------------------------------------------------------------------
def test_list_and_resolve(shipped, tmp_path, monkeypatch):
    root = shipped["root"] / "pretrained"
    assert pretrained.list_models() == sorted([DEFAULT, OTHER])
    assert pretrained.resolve(None) == root / DEFAULT
    assert pretrained.resolve(OTHER) == root / OTHER
    assert pretrained.resolve(shipped["root"] / "trained") == shipped["root"] / "trained"
    assert pretrained.shipped_name(root / OTHER) == OTHER
    assert pretrained.shipped_name(shipped["root"] / "trained") is None
    with pytest.raises(pretrained.ModelNotFoundError, match=f"shipped models: {OTHER}, {DEFAULT}"):
        pretrained.resolve("nosuchmodel")
    with pytest.raises(ConfigError, match="no such directory"):
        pretrained.resolve(str(tmp_path / "missing"))
    # An existing directory wins over a shipped name.
    monkeypatch.chdir(tmp_path)
    tiny_model("ste", seed=3).save_pretrained(tmp_path / OTHER)
    assert pretrained.resolve(OTHER) == Path(OTHER)


def test_default_and_from_pretrained_by_name(shipped):
    by_dir = Codec.from_pretrained(shipped["root"] / "pretrained" / DEFAULT)
    default, by_name = Codec.default(), Codec.from_pretrained(DEFAULT)
    assert default.fingerprint() == by_name.fingerprint() == by_dir.fingerprint()
    assert not default.training and not by_name.training
    wav = torch.from_numpy(shipped["audio"])[None, None]
    codes = default.encode(wav)
    assert torch.equal(by_name.encode(wav), codes)
    assert torch.equal(by_name.decode(codes), default.decode(codes))
    assert Codec.from_pretrained(OTHER).fingerprint() != default.fingerprint()
    with pytest.raises(ConfigError, match=DEFAULT):
        Codec.from_pretrained("nosuchmodel")


def test_default_missing(shipped, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", "notshipped")
    with pytest.raises(pretrained.ModelNotFoundError, match="no default model is shipped yet"):
        Codec.default()
    out = shipped["root"] / "missing.rvq"
    assert main(["encode", shipped["speech"], str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no default model is shipped yet" in line and "--model" in line
    assert not out.exists()
    assert main(["demo"]) == 2
    assert "no default model is shipped yet" in one_error_line(capsys.readouterr().err)


def test_nothing_shipped(shipped, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", tmp_path / "empty")
    assert pretrained.list_models() == []
    assert main(["encode", shipped["speech"], str(tmp_path / "x.rvq"), "--model", DEFAULT]) == 2
    assert "no models are shipped yet" in one_error_line(capsys.readouterr().err)


# ----- command line ---------------------------------------------------------------------------
def test_encode_decode_default(shipped, tmp_path):
    rvq, wav = tmp_path / "a.rvq", tmp_path / "a.wav"
    assert main(["encode", shipped["speech"], str(rvq), "-q", "--exact"]) == 0
    assert fingerprint_of(rvq) == Codec.from_pretrained(DEFAULT).fingerprint()
    assert main(["decode", str(rvq), str(wav), "--subtype", "FLOAT"]) == 0
    decoded, rate = sf.read(wav, dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(decoded, reference(shipped["root"] / "pretrained" / DEFAULT, shipped["audio"]))


@pytest.mark.parametrize("which", ["name", "dir"])
def test_encode_decode_model_option(shipped, tmp_path, capsys, which):
    model = OTHER if which == "name" else str(shipped["root"] / "trained")
    model_dir = shipped["root"] / "pretrained" / OTHER if which == "name" else shipped["root"] / "trained"
    rvq, wav = tmp_path / "b.rvq", tmp_path / "b.wav"
    assert main(["encode", shipped["speech"], str(rvq), "--model", model, "-q", "--exact"]) == 0
    assert fingerprint_of(rvq) == Codec.from_pretrained(model_dir).fingerprint()
    assert main(["decode", str(rvq), str(wav)]) == 2  # the default model did not write it
    assert "another model" in one_error_line(capsys.readouterr().err)
    assert main(["decode", str(rvq), str(wav), "--model", model, "--subtype", "FLOAT"]) == 0
    np.testing.assert_array_equal(sf.read(wav, dtype="float32")[0], reference(model_dir, shipped["audio"]))


def test_unknown_model_name_lists_shipped(shipped, tmp_path, capsys):
    assert main(["encode", shipped["speech"], str(tmp_path / "ok.rvq"), "-q"]) == 0
    decode = ["decode", str(tmp_path / "ok.rvq"), str(tmp_path / "c.wav")]
    for argv in (["encode", shipped["speech"], str(tmp_path / "c.rvq")], decode, ["demo"]):
        assert main([*argv, "--model", "speeech16k"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "--model speeech16k" in line and f"shipped models: {OTHER}, {DEFAULT}" in line
    assert not (tmp_path / "c.rvq").exists() and not (tmp_path / "c.wav").exists()


def test_eval_takes_shipped_names(shipped, tmp_path):
    trained = str(shipped["root"] / "trained")
    assert shipped_names_to_dirs([OTHER, trained, "nosuch"]) == [
        str(shipped["root"] / "pretrained" / OTHER), trained, "nosuch"]


# ----- sample and demo -----------------------------------------------------------------------
def test_sample_is_shipped():
    info = sf.info(SAMPLE)
    assert (info.samplerate, info.channels) == (16000, 1)
    assert 3.0 <= info.duration <= 5.0
    assert SAMPLE.stat().st_size < 200_000
    credits = (SAMPLE.parent / "README.md").read_text()
    assert SAMPLE_ID in credits and "CC BY 4.0" in credits and "Panayotov" in credits


def parse_demo(stdout: str) -> dict[str, str]:
    return dict(re.match(r"([^:]+):\s+(.*)", ln).groups() for ln in stdout.strip().splitlines())


def test_demo_default(shipped, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    fields = parse_demo(capsys.readouterr().out)
    assert fields["model"].startswith(DEFAULT)
    rvq, wav = out / f"{SAMPLE_ID}.rvq", out / f"{SAMPLE_ID}.wav"
    assert fields["bitstream"] == str(rvq) and fields["decoded"] == str(wav)
    duration = sf.info(SAMPLE).frames / 16000
    real = float(re.match(r"([0-9.]+) kbit/s real", fields["bitrate"]).group(1))
    assert real == pytest.approx(8 * rvq.stat().st_size / duration / 1000, abs=6e-4)
    nominal = float(re.search(r"([0-9.]+) kbit/s nominal", fields["bitrate"]).group(1))
    assert nominal == pytest.approx(Codec.default().bitrate() / 1000, abs=6e-4)
    assert 1.0 <= float(fields["PESQ (wide-band)"].split()[0]) <= 4.65
    decoded, rate = sf.read(wav)
    assert rate == 16000 and len(decoded) == sf.info(SAMPLE).frames
    # Never overwrites silently; --force does.
    before = rvq.read_bytes()
    assert main(["demo", "--out", str(out), "--stages", "1"]) == 2
    assert "--force" in one_error_line(capsys.readouterr().err)
    assert rvq.read_bytes() == before
    assert main(["demo", "--out", str(out), "--stages", "1", "--force"]) == 0
    assert rvq.stat().st_size < len(before)


def test_demo_model_dir_and_errors(shipped, tmp_path, capsys):
    trained = str(shipped["root"] / "trained")
    assert main(["demo", "--model", trained, "--stages", "2", "--out", str(tmp_path / "d")]) == 0
    fields = parse_demo(capsys.readouterr().out)
    assert fields["model"] == trained and fields["stages"].startswith("2 of 4")
    assert fingerprint_of(tmp_path / "d" / f"{SAMPLE_ID}.rvq") == Codec.from_pretrained(trained).fingerprint()
    assert main(["demo", "--model", trained, "--stages", "9", "--out", str(tmp_path / "e")]) == 2
    assert "out of range" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "e").exists()
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 2
    assert "not a directory" in one_error_line(capsys.readouterr().err)
    assert main(["demo", "--model", trained, "--entropy", "--out", str(tmp_path / "f")]) == 2
    assert "priors" in one_error_line(capsys.readouterr().err)


def test_demo_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--model NAME|DIR" in text and "PESQ" in text and "--out DIR" in text


# ----- shipping a trained model ---------------------------------------------------------------
def test_ship_model_writes_a_lean_shipped_model(shipped, capsys):
    import sys

    sys_path = str(REPO / "tools")
    sys.path.insert(0, sys_path)
    try:
        import ship_model
    finally:
        sys.path.remove(sys_path)
    root = shipped["root"]
    target = root / "pretrained" / "fresh"
    target.mkdir()
    (target / "MODEL_CARD.md").write_text("card")
    (target / "priors.json").write_text("{}")  # stale: belonged to other weights
    assert ship_model.main([str(root / "trained"), "fresh"]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    assert "fresh" in pretrained.list_models()
    trained, lean = Codec.from_pretrained(root / "trained"), Codec.from_pretrained("fresh")
    wav = torch.from_numpy(shipped["audio"])[None, None]
    assert torch.equal(lean.encode(wav), trained.encode(wav))
    assert ship_model.main([str(root / "trained"), "half", "--float16"]) == 0
    half = Codec.from_pretrained("half")
    stored = (root / "pretrained" / "half" / "model.safetensors").stat().st_size
    assert stored < 0.55 * (target / "model.safetensors").stat().st_size
    for key, value in lean.state_dict().items():  # every float rounded to half precision, read back as float32
        got = half.state_dict()[key]
        assert got.dtype == value.dtype
        assert torch.equal(got, value.half().float()) if value.is_floating_point() else torch.equal(got, value)
    assert ship_model.main([str(root / "missing"), "fresh"]) == 2
    assert ship_model.main([str(root / "trained"), "../bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0:2] for line in err[-2:]] == [["ship_model", " error"]] * 2
