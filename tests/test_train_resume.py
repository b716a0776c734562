"""Crash safety and reproducibility of the training loop (issue 4), with real SIGKILLs:

- a run killed while writing a checkpoint keeps its newest complete checkpoint intact;
- a run killed right after a checkpoint resumes from that step with --resume and finishes;
- on CPU with a fixed seed the resumed run's final weights equal an uninterrupted run's;
- the validation rows of log.csv hold per-stage perplexity / utilisation / dead codes that a
  recount from the exported model's codes of the validation set reproduces.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codec import Codec
from codec.quant.stats import perplexity, utilisation
from codec.train.checkpoint import complete_checkpoints
from codec.train.config import load_training_recipe
from codec.train.data import utterances_from, validation_set
from codec.train.logging import read_log

REPO = Path(__file__).resolve().parents[1]
STAGES = "[{kind: ema}, {kind: simvq}, {kind: diveq, options: {replace_every: 2}}, {kind: ema}]"
SETTINGS = ["total_steps=6", "batch_size=2", "log_every=1", "val_every=3", "ckpt_every=2", "keep_last=2",
            "data.valid_utterances=3", "pesq_utterances=1", f"model.quantizer.stages={STAGES}"]


def train(out: Path, *extra: str, crash: str | None = None) -> subprocess.CompletedProcess:
    """``codec train`` of the tiny recipe in a subprocess; ``crash`` kills it at a checkpoint
    (tests/train_with_hooks.py's --crash)."""
    args = [a for s in SETTINGS for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runner = [str(REPO / "tests" / "train_with_hooks.py"), "--crash", crash] if crash else ["-m", "codec", "train"]
    cmd = [sys.executable, *runner, "recipes/tiny.yaml", "--out-dir", str(out), "-q", *args, *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    res = train(out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def steps(out: Path) -> list[int]:
    return [s for s, _ in complete_checkpoints(out)]


def test_killed_runs_resume_to_the_same_weights(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # 1. killed in the middle of writing step 4's checkpoint: step 2 stays the newest complete one
    res = train(out, crash="during_ckpt:4")
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert steps(out) == [2]
    assert (out / "checkpoints" / ".tmp-step_00000004").is_dir()  # the half-written one
    ckpt2 = out / "checkpoints" / "step_00000002"
    before = {p.name: p.read_bytes() for p in ckpt2.iterdir()}

    # 2. resumes from step 2, writes step 4, and is killed right after it
    res = train(out, "--resume", crash="after_ckpt:4")
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert "step 2" in res.stderr
    assert steps(out) == [2, 4]
    assert {p.name: p.read_bytes() for p in ckpt2.iterdir()} == before  # never touched
    # a stale half-written newer checkpoint (as a kill during the rename window would leave)
    partial = out / "checkpoints" / ".tmp-step_00000006"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)

    # 3. resumes from step 4 (not the partial 6) and finishes
    res = train(out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "step 4" in res.stderr
    assert not partial.exists()
    assert steps(out) == [4, 6]  # keep_last=2 pruned step 2

    a = load_file(str(reference / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: resumed run differs from the uninterrupted one"
    # the log is one history: each step once per split
    rows = [(r["step"], r["split"]) for r in read_log(out / "log.csv")]
    assert rows == [(r["step"], r["split"]) for r in read_log(reference / "log.csv")]


def test_fresh_run_refuses_to_overwrite_checkpoints(reference: Path) -> None:
    res = train(reference)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "--resume" in res.stderr


def test_csv_stage_statistics_match_a_recount(reference: Path) -> None:
    rows = read_log(reference / "log.csv")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train_rows] == [1, 2, 3, 4, 5, 6]
    for r in train_rows:
        for key in ("loss", "lr", "grad_norm", "audio_s_per_s", "s1_perplexity", "s4_dead_codes"):
            assert math.isfinite(float(r[key])), key
    last = [r for r in rows if r["split"] == "valid"][-1]
    assert last["step"] == "6"

    # recount: encode the same validation set with the exported model
    _, model_cfg, cfg = load_training_recipe(REPO / "recipes" / "tiny.yaml", SETTINGS)
    root = cfg.data_root()
    train_speakers = {u.speaker for u in utterances_from(None, root, cfg.data.train_subsets)}
    valid = validation_set(utterances_from(None, root, cfg.data.valid_subsets), train_speakers,
                           cfg.data.valid_utterances, model_cfg.sample_rate, cfg.data.valid_seconds)
    assert len(valid) == 3
    model = Codec.from_pretrained(reference / "model")
    counts = [torch.zeros(k) for k in model.codebook_sizes]
    for _, wav in valid:
        codes = model.encode(wav)
        for s in range(model.num_stages):
            counts[s] += torch.bincount(codes[0, s], minlength=model.codebook_sizes[s]).float()
    for s, c in enumerate(counts, 1):
        assert float(last[f"s{s}_perplexity"]) == pytest.approx(float(perplexity(c)), rel=1e-5)
        assert float(last[f"s{s}_utilisation"]) == pytest.approx(float(utilisation(c)), rel=1e-5)
        assert float(last[f"s{s}_dead_codes"]) == float((c == 0).sum())


def test_wall_clock_budget_ends_the_run_like_its_last_step(tmp_path: Path) -> None:
    """train.max_minutes: a budget shorter than one step stops after step 1 with the final
    validation, checkpoint and export that a run's last step gets."""
    out = tmp_path / "run"
    res = train(out, "--set", "total_steps=1000", "--set", "max_minutes=0.0001")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_log(out / "log.csv")
    assert [(r["step"], r["split"]) for r in rows] == [("1", "train"), ("1", "valid")]
    assert steps(out) == [1]
    assert Codec.from_pretrained(out / "model").num_stages == 4


SCHEDULED = ["quantizer_warmup_steps=2", "quantizer_fit_batches=2", "weight_average=0.6", "weight_average_start=1",
             "schedules.loss.level=[[0, 0], [4, 1]]", "schedules.quantizer.dropout=[[2, 0], [6, 0.5]]",
             "schedules.lr.encoder=[[2, 1], [2, 0.2]]", "schedules.data.tone_fraction=[[3, 0], [3, 0.5]]",
             "schedules.data.rumble_fraction=[[4, 0], [4, 0.5]]"]


def test_a_scheduled_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Schedules, the stack fit at the end of the warm-up and the weight average survive a
    kill: killed right after step 2's checkpoint (the fit comes after it), resumed, the run
    exports the uninterrupted run's model bit for bit."""
    extra = [a for s in SCHEDULED for a in ("--set", s)]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert train(ref, *extra).returncode == 0
    res = train(out, *extra, crash="after_ckpt:2")
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    res = train(out, *extra, "--resume")
    assert res.returncode == 0 and "step 2" in res.stderr, res.stderr[-3000:]
    a = load_file(str(ref / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: resumed run differs from the uninterrupted one"
    # tools/export_checkpoint.py of the last step writes what the run exported (its weight
    # average), --live the optimizer's weights, which differ from the average
    tool = [sys.executable, str(REPO / "tools" / "export_checkpoint.py"), str(ref), "6"]
    assert subprocess.run([*tool, str(tmp_path / "avg")], capture_output=True).returncode == 0
    assert subprocess.run([*tool, str(tmp_path / "live"), "--live"], capture_output=True).returncode == 0
    avg, live = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("avg", "live"))
    assert avg.keys() == a.keys() and all(torch.equal(avg[k], a[k]) for k in a)
    assert any(not torch.equal(live[k], a[k]) for k in a if k.startswith("encoder."))
    # --float16: the same average rounded to half precision, training state left out, and a
    # model that loads into float32 (as init_from and the study's neutral start load it)
    assert subprocess.run([*tool, str(tmp_path / "half"), "--float16"], capture_output=True).returncode == 0
    half = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert half.keys() and half.keys() <= a.keys() and any(k not in half for k in a)
    for key, value in half.items():
        assert value.dtype == (torch.float16 if a[key].is_floating_point() else a[key].dtype), key
        assert torch.equal(value, a[key].to(value.dtype)), key
    loaded = Codec.from_pretrained(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
