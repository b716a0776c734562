"""``codec encode`` / ``codec decode`` with several inputs (a folder, a @LIST): the mirrored
output tree, code arrays with their manifest, resuming, a bad file among good ones, worker
processes; and ``Codec.encode_batch`` / ``decode_batch`` against the one-at-a-time calls.

Real speech throughout: six test-other utterances cut to 1-2.5 s, in two subfolders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import one_error_line, speech, tiny_model

from codec import Codec
from codec.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # as the command runs: the same rounding
RELATIVE = ["a/u0", "a/u1", "a/u2", "b/c/u3", "b/c/u4", "b/c/u5"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A saved tiny model and the input tree in/a/u0..u2.flac, in/b/c/u3..u5.flac."""
    root = tmp_path_factory.mktemp("batch_cli")
    tiny_model("ema", seed=0).eval().save_pretrained(root / "model")
    audio = {}
    for i, rel in enumerate(RELATIVE):
        path = root / "in" / f"{rel}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        audio[rel] = speech(1.0 + 0.3 * i, index=i)[0, 0].numpy()
        sf.write(path, audio[rel], 16000)
    return {"root": root, "model": str(root / "model"), "in": str(root / "in"), "audio": audio}


def tree(folder: Path, suffix: str) -> list[str]:
    """The files under ``folder`` with ``suffix``, relative and without it, sorted."""
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob(f"*{suffix}"))


def summary(err: str) -> str:
    return next(line for line in err.splitlines() if " of " in line and "files" in line)


def test_a_folder_encodes_to_a_mirrored_tree_and_decodes_back_as_one_file_at_a_time_does(env, tmp_path, capsys):
    """With --exact the multi-file form's .rvq files (offline codes, in batches of 3) are the
    one-file form's (streamed) byte for byte, and its decoded .wav files too."""
    m, out, dec = env["model"], tmp_path / "out", tmp_path / "dec"
    assert main(["encode", env["in"], str(out), "--model", m, "--exact", "--batch", "3"]) == 0
    assert "encoded 6 of 6 files" in summary(capsys.readouterr().err)
    assert tree(out, ".rvq") == RELATIVE
    assert main(["decode", str(out), str(dec), "--model", m]) == 0
    assert "decoded 6 of 6 files" in summary(capsys.readouterr().err)
    assert tree(dec, ".wav") == RELATIVE
    for rel in RELATIVE:
        one_rvq, one_wav = tmp_path / "one.rvq", tmp_path / "one.wav"
        assert main(["encode", f"{env['in']}/{rel}.flac", str(one_rvq), "--model", m, "--exact", "-q", "-f"]) == 0
        assert (out / f"{rel}.rvq").read_bytes() == one_rvq.read_bytes(), rel
        assert main(["decode", str(one_rvq), str(one_wav), "--model", m, "-f"]) == 0
        assert (dec / f"{rel}.wav").read_bytes() == one_wav.read_bytes(), rel
        assert sf.info(str(one_wav)).frames == len(env["audio"][rel])


def test_npy_format_writes_code_arrays_and_a_manifest(env, tmp_path, capsys):
    """int16 [stages, frames] arrays equal to Codec.encode's codes (float32, the default), and
    manifest.jsonl with path, source, frames, stages, samples, rate and fingerprint."""
    out = tmp_path / "codes"
    assert main(["encode", env["in"], str(out), "--model", env["model"], "--format", "npy", "--stages", "3"]) == 0
    capsys.readouterr()
    model = Codec.from_pretrained(env["model"])
    lines = (out / "manifest.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["path"] for e in entries] == [f"{rel}.npy" for rel in RELATIVE]
    for rel, e in zip(RELATIVE, entries, strict=True):
        codes = np.load(out / e["path"])
        wav = torch.from_numpy(env["audio"][rel])
        expected = model.encode(wav[None, None], n_q=3)[0].numpy()
        assert codes.dtype == np.int16 and np.array_equal(codes, expected), rel
        assert codes.shape == (e["stages"], e["frames"]) == (3, -(-len(wav) // model.hop_length))
        assert e["samples"] == len(wav) and e["sample_rate"] == 16000
        assert e["fingerprint"] == model.fingerprint().hex()
        assert Path(e["source"]) == (Path(env["in"]) / f"{rel}.flac").resolve()


def test_a_stopped_run_resumes_redoing_only_the_missing_outputs(env, tmp_path, capsys):
    """A missing array is redone, and so is an array written whose manifest line is missing (a
    run stopped between the two); the others are skipped. Which files were written again is
    seen from their content: each array kept is replaced by a marker first."""
    out = tmp_path / "codes"
    argv = ["encode", env["in"], str(out), "--model", env["model"], "--format", "npy"]
    assert main(argv) == 0
    capsys.readouterr()
    arrays = {rel: np.load(out / f"{rel}.npy") for rel in RELATIVE}
    marker = np.full((1, 1), -7, dtype=np.int16)
    for rel in RELATIVE:
        np.save(out / f"{rel}.npy", marker)
    (out / "a/u1.npy").unlink()
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                                if json.loads(line)["path"] != "b/c/u4.npy"))
    assert main(argv) == 0
    line = summary(capsys.readouterr().err)
    assert "encoded 2 of 6 files" in line and "4 skipped" in line, line
    redone = {rel for rel in RELATIVE if not np.array_equal(np.load(out / f"{rel}.npy"), marker)}
    assert redone == {"a/u1", "b/c/u4"}
    for rel in redone:
        assert np.array_equal(np.load(out / f"{rel}.npy"), arrays[rel]), rel
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [e["path"] for e in entries] == [f"{rel}.npy" for rel in RELATIVE]  # rewritten whole, sorted
    assert main([*argv, "--force"]) == 0
    assert "encoded 6 of 6 files" in summary(capsys.readouterr().err)
    assert all(np.array_equal(np.load(out / f"{rel}.npy"), arrays[rel]) for rel in RELATIVE)


def test_a_bad_file_is_one_error_line_and_the_others_are_done(env, tmp_path, capsys):
    src = tmp_path / "in"
    shutil.copytree(env["in"], src)
    (src / "b" / "broken.flac").write_bytes(os.urandom(3000))
    out = tmp_path / "out"
    assert main(["encode", str(src), str(out), "--model", env["model"]]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("codec: error: ")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"codec: error: {src / 'b' / 'broken.flac'}: not a readable audio file ("), err
    assert "encoded 6 of 7 files" in summary(err) and "1 failed" in summary(err)
    assert tree(out, ".rvq") == RELATIVE and not list(out.rglob(".codec-*"))
    # a damaged .rvq among good ones: the same for decode
    data = bytearray((out / "a/u0.rvq").read_bytes())
    data[40] ^= 1
    (out / "a/u0.rvq").write_bytes(bytes(data))
    assert main(["decode", str(out), str(tmp_path / "dec"), "--model", env["model"]]) == 2
    err = capsys.readouterr().err
    assert one_error_line(err.replace(summary(err) + "\n", "")) == f"codec: error: {out / 'a/u0.rvq'}: CRC mismatch:" \
        " file is damaged or truncated"
    assert tree(tmp_path / "dec", ".wav") == RELATIVE[1:]


def test_two_jobs_write_the_same_bytes_as_one(env, tmp_path, capsys):
    """Worker processes (spawned, one thread each) and the same groups: the same files."""
    one, two = tmp_path / "one", tmp_path / "two"
    for out, jobs in ((one, "1"), (two, "2")):
        assert main(["encode", env["in"], str(out), "--model", env["model"], "--jobs", jobs, "--batch", "2"]) == 0
    assert "encoded 6 of 6 files" in summary(capsys.readouterr().err)
    for rel in RELATIVE:
        assert (one / f"{rel}.rvq").read_bytes() == (two / f"{rel}.rvq").read_bytes(), rel


def test_batched_decode_writes_what_one_file_per_call_writes_up_to_float_rounding(env, tmp_path, capsys):
    """--batch 3 against --batch 1 (the one-file form's bytes, see above): the same files and
    lengths; a batched model call may round a float differently, which can move a 16-bit sample
    by one step, never more."""
    codes, one, three = tmp_path / "codes", tmp_path / "one", tmp_path / "three"
    assert main(["encode", env["in"], str(codes), "--model", env["model"], "-q"]) == 0
    for out, size in ((one, "1"), (three, "3")):
        assert main(["decode", str(codes), str(out), "--model", env["model"], "--batch", size]) == 0
        assert "decoded 6 of 6 files" in summary(capsys.readouterr().err)
    assert tree(one, ".wav") == tree(three, ".wav") == RELATIVE
    for rel in RELATIVE:
        a, rate_a = sf.read(one / f"{rel}.wav", dtype="int16")
        b, rate_b = sf.read(three / f"{rel}.wav", dtype="int16")
        assert rate_a == rate_b == 16000 and a.shape == b.shape == env["audio"][rel].shape, rel
        assert np.abs(a.astype(np.int32) - b).max() <= 1, rel


def test_the_model_is_loaded_and_fingerprinted_once_per_run(env, tmp_path, capsys, monkeypatch):
    """One process (--jobs 1): the command's model is the worker's; its fingerprint (a hash of
    every weight) is computed once, not once per file, also with range coding."""
    from codec.files.estimate import estimate_priors

    model_dir = tmp_path / "model"
    shutil.copytree(env["model"], model_dir)
    estimate_priors(Codec.from_pretrained(model_dir), [f"{env['in']}/a/u0.flac"]).save(model_dir)
    calls = {"load": 0, "fingerprint": 0}
    load, fingerprint = Codec.from_pretrained.__func__, Codec.fingerprint

    def counted_load(cls, *a, **k):
        calls["load"] += 1
        return load(cls, *a, **k)

    def counted_fingerprint(self):
        calls["fingerprint"] += 1
        return fingerprint(self)

    monkeypatch.setattr(Codec, "from_pretrained", classmethod(counted_load))
    monkeypatch.setattr(Codec, "fingerprint", counted_fingerprint)
    out = tmp_path / "out"
    for argv in (["encode", env["in"], str(out), "--entropy"], ["decode", str(out), str(tmp_path / "dec")],
                 ["encode", env["in"], str(out)]):  # every output exists: all skipped
        calls.update(load=0, fingerprint=0)
        assert main([*argv, "--model", str(model_dir), "--batch", "2"]) == 0
        assert calls == {"load": 1, "fingerprint": 1}, (argv[0], calls)
    assert "encoded 0 of 6 files" in capsys.readouterr().err.splitlines()[-1]


def test_a_worker_process_that_dies_fails_its_files_and_the_run_ends(tmp_path):
    """A worker killed (here: os._exit in the task, or in the initializer) breaks the pool: the
    run does not wait for ever, every item comes back with BrokenProcessPool."""
    script = """if True:
        import os, sys
        from concurrent.futures.process import BrokenProcessPool
        from codec.files.processes import pooled
        got = list(pooled(os._exit, [3, 4, 5], 2))
        assert sorted(i for i, _ in got) == [3, 4, 5], got
        assert all(isinstance(r, BrokenProcessPool) for _, r in got), got
        got = list(pooled(abs, [-1, -2], 2, initializer=os._exit, initargs=(1,)))
        assert all(isinstance(r, BrokenProcessPool) for _, r in got), got
        assert list(pooled(abs, [-1, -2], 2)) in ([(-1, 1), (-2, 2)], [(-2, 2), (-1, 1)])
        print("ok")
    """
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_failed_groups_of_a_broken_pool_are_one_error_line_per_file(monkeypatch):
    """run_groups turns a dead worker's items into failed Outcomes naming each file."""
    from concurrent.futures.process import BrokenProcessPool

    from codec.files import processes
    from codec.files.jobs import Job

    class Planner:  # what run_groups needs of a worker when it hands the work to processes
        settings = None

        def release(self) -> None:
            self.released = True

    groups = [[Job("a.wav", "o/a.rvq")], [Job("b.wav", "o/b.rvq"), Job("c.wav", "o/c.rvq")]]
    monkeypatch.setattr(processes, "pooled", lambda task, items, n, init, spec: [(g, BrokenProcessPool()) for g in items])
    planner = Planner()
    outcomes = [o for group in processes.run_groups(planner, groups, 2) for o in group]
    assert planner.released
    assert [o.error for o in outcomes] == [f"{s}: {processes.DIED}" for s in ("a.wav", "b.wav", "c.wav")]


def test_range_coding_and_an_output_folder_that_is_the_input_folder(env, tmp_path, capsys):
    """--entropy (the model's priors, loaded once per worker) gives the one-file form's bytes;
    decoding a folder into itself writes each .wav beside its .rvq."""
    from codec.files.estimate import estimate_priors

    model_dir = tmp_path / "model"
    shutil.copytree(env["model"], model_dir)
    estimate_priors(Codec.from_pretrained(model_dir), [f"{env['in']}/a/u0.flac"]).save(model_dir)
    out = tmp_path / "out"
    assert main(["encode", env["in"], str(out), "--model", str(model_dir), "--entropy", "--exact", "-q"]) == 0
    for rel in RELATIVE[:2]:
        one = tmp_path / "one.rvq"
        assert main(["encode", f"{env['in']}/{rel}.flac", str(one), "--model", str(model_dir), "--entropy",
                     "--exact", "-q", "-f"]) == 0
        assert (out / f"{rel}.rvq").read_bytes() == one.read_bytes(), rel
    assert main(["decode", str(out), str(out), "--model", str(model_dir)]) == 0
    assert tree(out, ".wav") == RELATIVE == tree(out, ".rvq")
    assert "decoded 6 of 6 files" in summary(capsys.readouterr().err)


def test_decoding_into_the_folder_of_the_original_audio_never_replaces_it(env, tmp_path, capsys):
    """After `codec encode corpus/ corpus/` the .rvq files sit beside the audio they came from,
    and `codec decode corpus/ corpus/ --ext flac` names each original as an output: each is
    skipped (the summary does not suggest --force), and --force is refused before any work."""
    corpus = tmp_path / "corpus"
    shutil.copytree(env["in"], corpus)
    originals = {rel: (corpus / f"{rel}.flac").read_bytes() for rel in RELATIVE}
    assert main(["encode", str(corpus), str(corpus), "--model", env["model"], "-q"]) == 0
    assert tree(corpus, ".rvq") == RELATIVE
    assert main(["decode", str(corpus), str(corpus), "--model", env["model"], "--ext", "flac"]) == 0
    line = summary(capsys.readouterr().err)
    assert "decoded 0 of 6 files" in line and "6 skipped" in line and "--force" not in line, line
    assert main(["decode", str(corpus), str(corpus), "--model", env["model"], "--ext", "flac", "--force"]) == 2
    assert "--force applies to one file only" in one_error_line(capsys.readouterr().err)
    assert {rel: (corpus / f"{rel}.flac").read_bytes() for rel in RELATIVE} == originals


def test_a_list_file_names_files_and_folders_and_the_outputs_mirror_their_common_folder(env, tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.chdir(env["root"])
    listing = tmp_path / "list.txt"
    listing.write_text("# utterances\nin/a/u0.flac\n\n  in/b  \n")
    out = tmp_path / "out"
    assert main(["encode", f"@{listing}", str(out), "--model", env["model"], "-q"]) == 0
    assert tree(out, ".rvq") == ["a/u0", "b/c/u3", "b/c/u4", "b/c/u5"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("argv", "fragment"), [
    (["encode", "{in}", "{tmp}/x.rvq"], "{in}: is a directory; to encode the files in it give an output folder"),
    (["decode", "{in}", "{tmp}/x.wav"], "{in}: is a directory; to decode the files in it give an output folder"),
    (["encode", "{in}", "-"], "not - (stdout)"),
    (["encode", "-", "{in}", "{tmp}/o"], "- (stdin) cannot be one of several inputs"),
    (["encode", "{in}", "{model}/config.json"], "exists and is not a folder"),
    (["encode", "{in}/a/u0.flac", "{tmp}/o.rvq", "--jobs", "2"], "--jobs applies only to several inputs"),
    (["encode", "{in}", "{tmp}/o", "--format", "npy", "--entropy"], "--entropy applies only to --format rvq"),
    (["encode", "@{tmp}/nolist.txt", "{tmp}/o"], "nolist.txt: no such list file"),
    (["decode", "{in}", "{tmp}/o"], "no input files: the folders hold no .rvq files"),
    (["decode", "{in}", "{tmp}/o", "--ext", "xyz"], "unknown audio format .xyz"),
])
def test_bad_command_lines_are_one_line_before_any_work(env, tmp_path, capsys, argv, fragment):
    fill = {"in": env["in"], "tmp": str(tmp_path), "model": env["model"]}
    assert main([a.format(**fill) for a in argv] + ["--model", env["model"]]) == 2
    assert fragment.format(**fill) in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ----- the Python API ---------------------------------------------------------------------------
def test_encode_batch_equals_encode_item_by_item_and_trims_the_padding():
    """Exact (float64) codes equal bit for bit; float32 ones too on these clips (near-ties could
    flip a rare code: at least 99% must agree); each item has its own frame count."""
    model = tiny_model("ema", seed=0).eval()
    wavs = [speech(0.5 + 0.37 * i, index=i)[0, 0] for i in range(5)]
    for coder, floor in ((model.streamer("exact"), 1.0), (model, 0.99)):
        batched = coder.encode_batch(wavs, n_q=3)
        same = total = 0
        encode = coder.encode if coder is model else coder.encode_offline
        for wav, codes in zip(wavs, batched, strict=True):
            alone = encode(wav[None, None], n_q=3)[0]
            assert codes.shape == alone.shape == (3, -(-len(wav) // model.hop_length))
            same, total = same + int((codes == alone).sum()), total + alone.numel()
        assert same / total >= floor, (coder, same / total)
    assert model.encode_batch([]) == []
    with pytest.raises(ValueError, match=r"float audio \[T\]"):
        model.encode_batch([wavs[0][None]])


def test_decode_batch_equals_decode_item_by_item_with_a_look_ahead_synthesis():
    """The shipped model's synthesis looks ahead (latency > hop): the padded frames must add
    nothing to an item's last samples."""
    from codec.pretrained import DEFAULT_MODEL, PRETRAINED_ROOT

    shipped = PRETRAINED_ROOT / DEFAULT_MODEL
    if not (shipped / "config.json").is_file() or not (shipped / "model.safetensors").is_file():
        pytest.skip(f"no shipped default model in {shipped}")
    model = Codec.default()  # shipped: any failure to load it is a failure here
    assert model.latency > model.hop_length
    wavs = [speech(0.6 + 0.45 * i, index=i)[0, 0] for i in range(3)]
    codes = model.encode_batch(wavs)
    for wav, c in zip(wavs, codes, strict=True):
        assert torch.equal(c, model.encode(wav[None, None])[0])
    decoded = model.decode_batch(codes, [len(w) for w in wavs])
    for wav, c, audio in zip(wavs, codes, decoded, strict=True):
        alone = model.decode(c[None])[0, 0, : len(wav)]
        assert audio.shape == alone.shape and torch.allclose(audio, alone, rtol=0, atol=1e-6)
    assert [a.shape[0] for a in model.decode_batch(codes)] == [c.shape[1] * model.hop_length for c in codes]
    with pytest.raises(ValueError, match="one stage count"):
        model.decode_batch([codes[0], codes[1][:2]])
