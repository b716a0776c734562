"""What a new user meets on the command line: a terminal (a pseudo-terminal here), outputs
that must not be replaced or lost, signals, closed pipes, priors of shipped models, range
coding that does not pay, and the help texts. Subprocess runs use the real executable."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, data_root, one_error_line, speech, tiny_model

from codec import Codec
from codec.bitstream.container import parse
from codec.cli import main
from codec.files.estimate import estimate_priors

EXE = [shutil.which("codec")] if shutil.which("codec") else [sys.executable, "-m", "codec"]
README_EXAMPLE = "LibriSpeech/test-other/1688/142285/1688-142285-0000.flac"


def environment(**extra: str) -> dict:
    # One thread: the piped and the terminal runs must compute identically.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def run(*args: str, stdin: bytes | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, *args], input=stdin, capture_output=True, timeout=300, env=environment(**env),
                          cwd=REPO, check=False)


def run_in_terminal(*args: str) -> tuple[int, bytes]:
    """Run codec with stderr on a pseudo-terminal (stdin empty, stdout a pipe):
    -> (exit code, everything written to the terminal)."""
    master, slave = pty.openpty()
    # 24 x 100 characters: a pseudo-terminal starts at 0 x 0, where tqdm draws nothing
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([*EXE, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env=environment(), cwd=REPO)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            screen += data
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), screen


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A tiny model with priors from 8 s of speech; that speech, and 20 s of it repeated."""
    root = tmp_path_factory.mktemp("cli_user")
    model = tiny_model("ema", seed=0).eval()
    model.save_pretrained(root / "model")
    audio = speech(8.0)[0, 0].numpy()
    sf.write(root / "speech.flac", audio, 16000)
    sf.write(root / "long.wav", np.tile(audio, 3)[: 20 * 16000], 16000)
    estimate_priors(model, [root / "speech.flac"]).save(root / "model")
    return {"root": root, "model": str(root / "model"), "speech": str(root / "speech.flac"),
            "long": str(root / "long.wav")}


# ----- a terminal -----------------------------------------------------------------------------
def test_encode_and_decode_in_a_terminal_show_a_bar_and_write_the_piped_bytes(env, tmp_path):
    m = env["model"]
    piped, term = tmp_path / "piped.rvq", tmp_path / "term.rvq"
    assert run("encode", env["long"], str(piped), "--model", m).returncode == 0
    rc, screen = run_in_terminal("encode", env["long"], str(term), "--model", m)
    assert rc == 0, screen
    assert b"encode:" in screen and b"%" in screen and b"internal error" not in screen  # tqdm's bar
    assert term.read_bytes() == piped.read_bytes()

    assert run("decode", str(piped), str(tmp_path / "piped.wav"), "--model", m).returncode == 0
    rc, screen = run_in_terminal("decode", str(piped), str(tmp_path / "term.wav"), "--model", m)
    assert rc == 0, screen
    assert b"decode:" in screen and b"internal error" not in screen
    assert (tmp_path / "term.wav").read_bytes() == (tmp_path / "piped.wav").read_bytes()


def test_readme_example_in_a_terminal_writes_the_piped_bytes(tmp_path):
    """The README's encode/decode example with the default model, stderr a terminal."""
    source = data_root().parent / README_EXAMPLE
    if not source.is_file():
        pytest.fail(f"missing {source}")
    assert run("encode", str(source), str(tmp_path / "piped.rvq")).returncode == 0
    rc, screen = run_in_terminal("encode", str(source), str(tmp_path / "term.rvq"))
    assert rc == 0 and b"encode:" in screen, screen
    assert (tmp_path / "term.rvq").read_bytes() == (tmp_path / "piped.rvq").read_bytes()
    assert run("decode", str(tmp_path / "piped.rvq"), str(tmp_path / "piped.wav")).returncode == 0
    rc, screen = run_in_terminal("decode", str(tmp_path / "piped.rvq"), str(tmp_path / "term.wav"))
    assert rc == 0 and b"decode:" in screen, screen
    assert (tmp_path / "term.wav").read_bytes() == (tmp_path / "piped.wav").read_bytes()


# ----- outputs are never lost, replaced unasked, or left half-written -------------------------
def test_output_that_is_the_input_is_refused_even_with_force(env, tmp_path, capsys):
    wav = tmp_path / "in.wav"
    shutil.copy(env["long"], wav)
    before = wav.read_bytes()
    for extra in ([], ["--force"]):
        assert main(["encode", str(wav), str(wav), "--model", env["model"], *extra]) == 2
        assert "is the input" in one_error_line(capsys.readouterr().err)
    os.symlink(wav, tmp_path / "link.wav")
    assert main(["encode", str(wav), str(tmp_path / "link.wav"), "--model", env["model"], "-f"]) == 2
    assert "is the input" in one_error_line(capsys.readouterr().err)
    assert wav.read_bytes() == before
    rvq = tmp_path / "x.rvq"
    assert main(["encode", str(wav), str(rvq), "--model", env["model"], "-q"]) == 0
    data = rvq.read_bytes()
    assert main(["decode", str(rvq), str(rvq), "--model", env["model"], "-y"]) == 2
    assert "is the input" in one_error_line(capsys.readouterr().err)
    assert rvq.read_bytes() == data


def test_existing_output_is_replaced_only_with_force(env, tmp_path, capsys):
    out = tmp_path / "out.rvq"
    out.write_bytes(b"precious")
    args = ["encode", env["speech"], str(out), "--model", env["model"], "-q"]
    assert main(args) == 2
    assert "exists; pass --force" in one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"precious"
    for flag in ("--force", "-f", "-y"):
        out.write_bytes(b"precious")
        assert main([*args, flag]) == 0
        assert out.read_bytes()[:4] == b"RVQC"
    wav = tmp_path / "out.wav"
    wav.write_bytes(b"precious")
    assert main(["decode", str(out), str(wav), "--model", env["model"]]) == 2
    assert "exists" in one_error_line(capsys.readouterr().err) and wav.read_bytes() == b"precious"
    assert main(["decode", str(out), str(wav), "--model", env["model"], "--force"]) == 0
    assert sf.info(str(wav)).samplerate == 16000


def test_output_problems_are_found_before_the_work_and_name_the_users_path(env, tmp_path, capsys, monkeypatch):
    import tempfile

    from codec.files import coding

    def no_work(*a, **k):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(coding, "encode_stream", no_work)
    monkeypatch.setattr(coding, "decode_blocks", no_work)
    (tmp_path / "adir").mkdir()
    cases = {
        str(tmp_path / "nofolder" / "sub" / "o.rvq"): "nofolder/sub/o.rvq: the folder",
        str(tmp_path / "adir"): "adir: is a directory",
    }
    for out, fragment in cases.items():
        assert main(["encode", env["speech"], out, "--model", env["model"]]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert fragment in line and ".codec-" not in line, line
        assert main(["decode", env["speech"], out, "--model", env["model"]]) == 2
        assert fragment in one_error_line(capsys.readouterr().err)

    def read_only(*a, **k):  # what a read-only folder does to mkstemp (as root, chmod does not)
        raise PermissionError(13, "Permission denied", str(tmp_path / ".codec-abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["encode", env["speech"], str(tmp_path / "o.rvq"), "--model", env["model"]]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"codec: error: {tmp_path / 'o.rvq'}: Permission denied", line


def test_devices_are_written_into_never_replaced(env, tmp_path, capsys):
    """``codec decode f.rvq /dev/null`` (or a FIFO) writes into the device: no --force needed,
    and the device stays a device."""
    import stat

    rvq = tmp_path / "a.rvq"
    assert main(["encode", env["speech"], str(rvq), "--model", env["model"], "-q"]) == 0
    assert main(["decode", str(rvq), "/dev/null", "--model", env["model"]]) == 0
    assert main(["encode", env["speech"], "/dev/null", "--model", env["model"], "-q"]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_unknown_output_extension_is_refused_before_decoding(env, tmp_path, capsys):
    rvq = tmp_path / "a.rvq"
    assert main(["encode", env["speech"], str(rvq), "--model", env["model"], "-q"]) == 0
    assert main(["decode", str(rvq), str(tmp_path / "o.xyz"), "--model", env["model"]]) == 2
    assert "unknown audio format .xyz" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o.xyz").exists()
    assert main(["decode", str(rvq), str(tmp_path / "o.flac"), "--model", env["model"]]) == 0
    assert sf.info(str(tmp_path / "o.flac")).format == "FLAC"


@pytest.mark.parametrize(("command", "sig"), [("encode", signal.SIGTERM), ("decode", signal.SIGHUP),
                                              ("encode", signal.SIGHUP)])
def test_sigterm_and_sighup_leave_no_temporary_file(env, tmp_path, command, sig):
    """The output goes to a stdout pipe of 4 KiB that nobody reads, so codec is certain to be
    blocked writing it (its temporary file in $TMPDIR) when the signal comes."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    src = env["long"]
    if command == "decode":
        src = str(tmp_path / "long.rvq")
        assert main(["encode", env["long"], src, "--model", env["model"], "-q"]) == 0
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ
    # SIGHUP at its default, even under nohup (codec keeps an ignored SIGHUP ignored, as it should)
    proc = subprocess.Popen([*EXE, command, src, "-", "--model", env["model"]], stdout=write_end,
                            stderr=subprocess.PIPE, env=environment(TMPDIR=str(tmpdir)), cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    os.close(write_end)
    deadline = time.monotonic() + 120
    while not list(tmpdir.glob(".codec-*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert list(tmpdir.glob(".codec-*.tmp")), "codec never made its temporary file"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    os.close(read_end)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name}".encode() in err and b"Traceback" not in err
    assert list(tmpdir.iterdir()) == []


def test_a_closed_pipe_ends_quietly_as_for_cat(env, tmp_path):
    rvq = tmp_path / "a.rvq"
    assert main(["encode", env["long"], str(rvq), "--model", env["model"], "-q"]) == 0
    # decode | head -c 100: 640 KB of WAV into a pipe whose reader leaves after 100 bytes
    proc = subprocess.Popen([*EXE, "decode", str(rvq), "-", "--model", env["model"]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=environment(), cwd=REPO)
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b"", err
    # info | (a reader that is already gone)
    proc = subprocess.Popen([*EXE, "info", str(rvq)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=environment(), cwd=REPO)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and err == b"", err


def test_empty_stdin_is_one_clear_line():
    r = run("encode", "-", "o.rvq", stdin=b"")
    assert r.returncode == 2
    assert one_error_line(r.stderr) == "codec: error: <stdin>: no input (0 bytes)"
    r = run("encode", "-", "-", stdin=b"not audio at all" * 10)
    line = one_error_line(r.stderr)
    assert "<stdin>: not a readable audio file" in line and "BytesIO" not in line and "0x" not in line, line
    assert not (REPO / "o.rvq").exists()


# ----- priors: shipped models are read-only -------------------------------------------------
def test_priors_never_rewrite_a_shipped_model(env, tmp_path, capsys, monkeypatch):
    from codec import pretrained

    store = tmp_path / "pretrained"
    shutil.copytree(env["model"], store / "tiny")
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", store)
    before = (store / "tiny" / "priors.json").read_bytes()
    data = str(Path(env["speech"]).parent)
    assert main(["priors", "--model", "tiny", "--data", data]) == 2
    assert "shipped model" in one_error_line(capsys.readouterr().err)
    assert main(["priors", "--model", "tiny", "--data", data, "--force"]) == 2
    capsys.readouterr()
    assert (store / "tiny" / "priors.json").read_bytes() == before
    # --out: a copy of the model with the new priors, which encodes and decodes range-coded
    out = tmp_path / "mine"
    assert main(["priors", "--model", "tiny", "--data", data, "--max-files", "1", "--out", str(out)]) == 0
    assert "from 1 file;" in capsys.readouterr().err  # not "1 files"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (store / "tiny").iterdir())
    assert main(["encode", env["speech"], str(tmp_path / "e.rvq"), "--model", str(out), "--entropy", "-q"]) == 0
    assert main(["decode", str(tmp_path / "e.rvq"), str(tmp_path / "e.wav"), "--model", str(out)]) == 0
    assert main(["priors", "--model", "tiny", "--data", data, "--out", str(out)]) == 2  # not empty
    assert "not an empty folder" in one_error_line(capsys.readouterr().err)
    # a model of one's own: an existing priors.json is replaced only with --force
    assert main(["priors", "--model", str(out), "--data", data]) == 2
    assert "--force" in one_error_line(capsys.readouterr().err)
    assert main(["priors", "--model", str(out), "--data", data, "--force"]) == 0
    assert (store / "tiny" / "priors.json").read_bytes() == before


def test_priors_max_files_must_be_positive(env, capsys):
    with pytest.raises(SystemExit) as e:
        main(["priors", "--model", env["model"], "--data", ".", "--max-files", "-1"])
    assert e.value.code == 2 and "--max-files: -1 out of range" in capsys.readouterr().err


# ----- range coding that does not pay ---------------------------------------------------------
def test_entropy_falls_back_to_fixed_width_when_range_coding_does_not_pay(env, tmp_path, capsys):
    """Priors that expect one code almost always (as priors from other audio can): the speech's
    codes cost more bits range-coded than packed."""
    from codec.bitstream.priors import Priors

    model = Codec.from_pretrained(env["model"])
    skewed = tmp_path / "skewed"
    shutil.copytree(env["model"], skewed)
    counts = [np.eye(1, k, k - 1, dtype=np.int64)[0] * 10**6 for k in model.codebook_sizes]
    Priors.from_counts(counts, model.fingerprint(), 10**6).save(skewed)
    fixed, ent = tmp_path / "fixed.rvq", tmp_path / "ent.rvq"
    assert main(["encode", env["speech"], str(fixed), "--model", str(skewed), "-q"]) == 0
    assert main(["encode", env["speech"], str(ent), "--model", str(skewed), "--entropy", "--block-frames", "16"]) == 0
    err = capsys.readouterr().err
    assert "range coding would have made it larger" in err and "written fixed-width" in err
    assert ent.read_bytes() == fixed.read_bytes()
    # where the priors fit (their own speech), the file stays range-coded and is smaller
    sp_fixed, sp_ent = tmp_path / "sf.rvq", tmp_path / "se.rvq"
    assert main(["encode", env["speech"], str(sp_fixed), "--model", env["model"], "-q"]) == 0
    assert main(["encode", env["speech"], str(sp_ent), "--model", env["model"], "--entropy", "-q"]) == 0
    assert parse(sp_ent.read_bytes()).header.mode == 1
    assert sp_ent.stat().st_size < sp_fixed.stat().st_size
    assert main(["info", str(sp_ent)]) == 0
    out = capsys.readouterr().out
    saving = 100 * ((sp_ent.stat().st_size - parse(sp_ent.read_bytes()).header.size - 16)
                    / (sp_fixed.stat().st_size - parse(sp_fixed.read_bytes()).header.size - 16) - 1)
    assert f"packed fixed-width ({saving:+.1f}%)" in out, out


# ----- options and help -----------------------------------------------------------------------
def test_bitrate_above_the_models_highest_says_so(env, tmp_path, capsys):
    assert main(["encode", env["speech"], str(tmp_path / "a.rvq"), "--model", env["model"], "--bitrate", "1M"]) == 0
    err = capsys.readouterr().err
    assert "above this model's highest" in err and "using all 4 stages" in err


def test_block_frames_needs_entropy_and_a_positive_count(env, tmp_path, capsys):
    out = str(tmp_path / "a.rvq")
    assert main(["encode", env["speech"], out, "--model", env["model"], "--block-frames", "64"]) == 2
    assert "only with --entropy" in one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as e:
        main(["encode", env["speech"], out, "--model", env["model"], "--entropy", "--block-frames", "-5"])
    assert e.value.code == 2 and "-5 out of range 1..65536" in capsys.readouterr().err
    assert not Path(out).exists()


def test_help_texts_say_what_a_user_needs(capsys):
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    enc = help_of("encode")
    assert "0.5k to 6k in steps of 0.5k with the default model" in enc  # from the shipped config
    assert "default: all stages" in enc and "1 to the model's count (12 for the default model)" in enc
    assert "16 kHz" in help_of("decode")
    assert "no model is loaded" in help_of("info")
    assert "shipped model (codec/pretrained/) is never changed" in help_of("priors")
    assert "until then" not in help_of("demo")
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("codec 0.1")


def test_python_warnings_print_as_one_codec_line(monkeypatch, capsys):
    from codec.cli import info

    def warns(args):
        warnings.warn("native frame engine unavailable, streaming runs in PyTorch: no compiler", stacklevel=2)

    monkeypatch.setattr(info, "run", warns)
    assert main(["info", "x.rvq"]) == 0
    err = capsys.readouterr().err
    assert err == "codec: warning: native frame engine unavailable, streaming runs in PyTorch: no compiler\n"


def test_encode_and_decode_take_tensors_and_say_so_otherwise():
    model = tiny_model("ema")
    with pytest.raises(TypeError, match=r"torch.Tensor .*ndarray.*torch.from_numpy"):
        model.encode(np.zeros((1, 1, 320), np.float32))
    with pytest.raises(TypeError, match="torch.Tensor of int64 codes"):
        model.decode([[[1, 2]]])
    assert model.encode(torch.zeros(1, 1, 320)).shape == (1, 4, 1)


def test_json_info_is_unchanged_by_the_new_field(env, tmp_path, capsys):
    rvq = tmp_path / "a.rvq"
    assert main(["encode", env["speech"], str(rvq), "--model", env["model"], "-q"]) == 0
    assert main(["info", str(rvq), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fixed_width_payload_bits"] == info["payload_bits"]  # a fixed-width file: the payload itself
    assert Codec.from_pretrained(env["model"]).num_stages == info["stages"]
