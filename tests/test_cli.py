"""The `codec` command line, run as a real executable in a subprocess (plus in-process
runs of every bad-input case, which are fast; their subprocess twins are marked slow)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import data_root, one_error_line

from codec import Codec
from codec.cli import main
from codec.files.estimate import estimate_priors

REPO = Path(__file__).resolve().parents[1]
EXE = [shutil.which("codec")] if shutil.which("codec") else [sys.executable, "-m", "codec"]


def data_dir() -> Path:
    return data_root() / "test-other"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    # One thread, like the in-process references: oneDNN's rounding depends on the thread count.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*EXE, *args], input=stdin, capture_output=True, timeout=300, env=env, cwd=REPO, check=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A saved tiny model (with priors), a 2.5 s speech FLAC, and the reference decode."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = Codec.from_config(REPO / "recipes" / "tiny.yaml").eval()
    model.save_pretrained(root / "model")
    files = sorted(data_dir().rglob("*.flac"))
    if not files:
        pytest.skip(f"no LibriSpeech FLAC under {data_dir()}")
    audio, _ = sf.read(files[0], dtype="float32", frames=40_007)
    (root / "data").mkdir()
    sf.write(root / "data" / "speech.flac", audio, 16000)
    estimate_priors(model, [root / "data" / "speech.flac"]).save(root / "model")
    shutil.copytree(root / "model", root / "model_nopriors", ignore=shutil.ignore_patterns("priors.json"))
    torch.manual_seed(1)
    Codec.from_config(REPO / "recipes" / "tiny.yaml").save_pretrained(root / "other_model")
    model = Codec.from_pretrained(root / "model")
    exact = model.streamer("exact")  # the CLI runs below pass --exact: file codes == offline codes

    def reference(n_q: int) -> np.ndarray:
        x = torch.from_numpy(audio)[None, None]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the executable runs (see run)
        try:
            return model.decode(exact.encode_offline(x, n_q=n_q))[0, 0, : len(audio)].numpy()
        finally:
            torch.set_num_threads(threads)

    return {"root": root, "model": str(root / "model"), "speech": str(root / "data" / "speech.flac"), "ref": reference}


# ----- the real executable --------------------------------------------------------------------
def test_encode_info_decode(env):
    root, m = env["root"], env["model"]
    out, wav = root / "a.rvq", root / "a.wav"
    r = run("encode", env["speech"], str(out), "--model", m, "--stages", "2", "--exact")
    assert r.returncode == 0, r.stderr
    r = run("info", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    size_bits = 8 * out.stat().st_size
    assert info["file_bits"] == size_bits == info["header_bits"] + info["payload_bits"] + info["trailer_bits"]
    assert info["stages"] == 2 and info["num_samples"] == 40_007 and info["num_frames"] == 126
    assert info["nominal_bitrate"] == pytest.approx(50 * 2 * 6)
    assert info["total_bitrate"] == pytest.approx(size_bits / (40_007 / 16000))
    r = run("decode", str(out), str(wav), "--model", m, "--subtype", "FLOAT")
    assert r.returncode == 0, r.stderr
    decoded, rate = sf.read(wav, dtype="float32")
    assert rate == 16000 and np.array_equal(decoded, env["ref"](2))


def test_pipes_with_entropy_coding(env):
    m = env["model"]
    cmd = (f"{' '.join(EXE)} encode - - --model {m} --entropy --exact < {env['speech']}"
           f" | {' '.join(EXE)} decode - - --model {m} --subtype FLOAT")
    r = subprocess.run(cmd, shell=True, capture_output=True, timeout=300, check=False,
                       env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert b"range coding saved" in r.stderr
    decoded, _ = sf.read(__import__("io").BytesIO(r.stdout), dtype="float32")
    assert np.array_equal(decoded, env["ref"](4))


def test_bad_input_subprocess_crc(env):
    root = env["root"]
    good = root / "g.rvq"
    assert main(["encode", env["speech"], str(good), "--model", env["model"], "-q"]) == 0
    data = bytearray(good.read_bytes())
    data[60] ^= 4
    r = run("decode", "-", str(root / "x.wav"), "--model", env["model"], stdin=bytes(data))
    assert r.returncode == 2 and "CRC" in one_error_line(r.stderr)
    assert r.stdout == b"" and not (root / "x.wav").exists()


def test_unknown_model_is_one_line(env):
    r = run("encode", env["speech"], str(env["root"] / "y.rvq"), "--model", "no-such-model")
    assert r.returncode == 2 and "no-such-model" in one_error_line(r.stderr)
    assert not (env["root"] / "y.rvq").exists()


# ----- every bad-input case -------------------------------------------------------------------
def fix_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def make_case(env: dict, case: str) -> tuple[list[str], bytes | None, str]:
    """-> (argv, stdin, expected message fragment). Output path is root/out.*."""
    root, m, speech = env["root"], env["model"], env["speech"]
    enc = lambda src, *extra: ["encode", str(src), str(root / "out.rvq"), "--model", m, *extra]
    dec = lambda src, model=m: ["decode", str(src), str(root / "out.wav"), "--model", model]
    good_path = root / "good.rvq"
    if not good_path.exists():
        assert main(enc(speech, "-q")[:2] + [str(good_path), "--model", m, "-q"]) == 0
        assert main(["encode", speech, str(root / "good_ent.rvq"), "--model", m, "--entropy", "-q"]) == 0
    good = good_path.read_bytes()
    bad = root / f"bad_{case}"
    tone = 0.1 * np.sin(np.arange(100_000) / 10).astype(np.float32)
    if case == "missing_input":
        return enc(root / "nope.wav"), None, "no such file"
    if case == "input_is_dir":
        return enc(root), None, "directory"
    if case == "not_audio":
        bad.write_text("this is not audio\n" * 50)
        return enc(bad), None, "not a readable audio file"
    if case == "empty_audio":
        sf.write(f"{bad}.wav", np.zeros(0, np.float32), 16000)
        return enc(f"{bad}.wav"), None, "empty audio"
    if case in ("nan", "inf"):
        tone[-10] = np.nan if case == "nan" else -np.inf  # in the last block: output already begun
        sf.write(f"{bad}.wav", tone, 16000, subtype="FLOAT")
        return enc(f"{bad}.wav"), None, "NaN or Inf"
    if case == "stages_out_of_range":
        return enc(speech, "--stages", "9"), None, "out of range"
    if case == "bitrate_too_low":
        return enc(speech, "--bitrate", "100"), None, "below"
    if case == "entropy_without_priors":
        return ["encode", speech, str(root / "out.rvq"), "--model", str(root / "model_nopriors"), "--entropy"], \
            None, "codec priors"
    if case == "model_dir_missing":
        return ["encode", speech, str(root / "out.rvq"), "--model", str(root / "nomodel")], None, "no such directory"
    if case == "model_dir_not_a_model":
        return ["encode", speech, str(root / "out.rvq"), "--model", str(root)], None, "cannot load model"
    if case == "output_dir_missing":
        return ["encode", speech, str(root / "no" / "out.rvq"), "--model", m], None, "no/out.rvq: the folder"
    if case == "decode_missing":
        return dec(root / "nope.rvq"), None, "no such file"
    if case == "decode_empty":
        return dec("-"), b"", "wrong magic"
    if case == "decode_audio_file":
        return dec(speech), None, "wrong magic"
    if case == "truncated":
        return dec("-"), good[: len(good) // 2], "CRC"
    if case == "flipped_bit":
        return dec("-"), good[:100] + bytes([good[100] ^ 1]) + good[101:], "CRC"
    if case == "unknown_version":
        return dec("-"), fix_crc(good[:4] + b"\x09" + good[5:]), "version"
    if case == "sample_rate_zero":
        return dec("-"), fix_crc(good[:8] + bytes(4) + good[12:]), "sample rate"
    if case == "too_many_frames":
        b = bytearray(good)
        struct.pack_into("<IQ", b, len(b) - 16, 1 << 30, (1 << 30) * 320)
        return dec("-"), fix_crc(bytes(b)), "payload"
    if case == "other_model":
        return dec(good_path, str(root / "other_model")), None, "another model"
    if case == "entropy_file_without_priors":
        return dec(root / "good_ent.rvq", str(root / "model_nopriors")), None, "codec priors"
    if case == "info_damaged":
        return ["info", "-"], good[:-1] + bytes([good[-1] ^ 0x80]), "CRC"
    raise AssertionError(case)


CASES = ["missing_input", "input_is_dir", "not_audio", "empty_audio", "nan", "inf", "stages_out_of_range",
         "bitrate_too_low", "entropy_without_priors", "model_dir_missing", "model_dir_not_a_model",
         "output_dir_missing", "decode_missing", "decode_empty", "decode_audio_file", "truncated",
         "flipped_bit", "unknown_version", "sample_rate_zero", "too_many_frames", "other_model",
         "entropy_file_without_priors", "info_damaged"]


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(("out.", ".codec-"))]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_in_process(env, case, capsys, monkeypatch):
    argv, stdin, fragment = make_case(env, case)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": __import__("io").BytesIO(stdin)})())
    assert main(argv) == 2
    assert fragment in one_error_line(capsys.readouterr().err)
    assert leftovers(env["root"]) == []


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_input_subprocess(env, case):
    argv, stdin, fragment = make_case(env, case)
    r = run(*argv, stdin=stdin)
    assert r.returncode == 2 and fragment in one_error_line(r.stderr)
    assert r.stdout == b"" and leftovers(env["root"]) == []


# ----- other behaviour (in process) ----------------------------------------------------------
def test_stereo_44k_input_is_resampled_with_warning(env, capsys):
    root = env["root"]
    t = np.arange(44100) / 44100
    x = 0.3 * np.sin(2 * np.pi * 200 * t).astype(np.float32)
    sf.write(root / "st.wav", np.stack([x, -0.5 * x], 1), 44100, subtype="PCM_24")
    assert main(["encode", str(root / "st.wav"), str(root / "st.rvq"), "--model", env["model"],
                 "--bitrate", "0.7k"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "downmixed" in err
    assert main(["info", str(root / "st.rvq")]) == 0
    out = capsys.readouterr().out
    assert "stages:          2," in out and "(16000 samples)" in out


def test_priors_command(env, tmp_path, capsys):
    shutil.copytree(env["model"], tmp_path / "m")
    (tmp_path / "m" / "priors.json").unlink()
    assert main(["priors", "--model", str(tmp_path / "m"), "--data", str(env["root"] / "data")]) == 0
    assert (tmp_path / "m" / "priors.json").is_file()
    assert "bits/frame" in capsys.readouterr().err


def test_help():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
