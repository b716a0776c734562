"""Distributed correctness of the training loop (issue 4): two CPU processes started with
`accelerate launch --multi_gpu` train the tiny model with EMA, SimVQ and DiVeQ stages; every
parameter and buffer must end bitwise identical on both ranks, and the ranks must have
trained on different utterances."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# EMA (k-means init, restarts), SimVQ, DiVeQ (code replacement every 2 steps) in one stack.
STAGES = "[{kind: ema}, {kind: simvq}, {kind: diveq, options: {replace_every: 2}}, {kind: ema}]"


def accelerate_cmd() -> list[str]:
    exe = shutil.which("accelerate")
    return [exe] if exe else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


def test_two_ranks_stay_bitwise_identical(tmp_path: Path) -> None:
    out, dump = tmp_path / "run", tmp_path / "dump"
    cmd = [*accelerate_cmd(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "tests/train_with_hooks.py", "recipes/tiny.yaml",
           "--out-dir", str(out), "--dump-state", str(dump), "--quiet",
           "--set", "total_steps=4", "--set", "batch_size=2", "--set", "log_every=2", "--set", "val_every=4",
           "--set", "ckpt_every=4", "--set", "data.valid_utterances=2", "--set", "pesq_utterances=0",
           "--set", f"model.quantizer.stages={STAGES}"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]

    states = [load_file(str(dump / f"rank{r}.safetensors")) for r in range(2)]
    assert states[0].keys() == states[1].keys()
    kinds = {"cluster_size", "frozen_codebook", "used_steps", "ring"}  # EMA, SimVQ, DiVeQ, usage window
    assert kinds <= {k.rsplit(".", 1)[-1] for k in states[0]}
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), f"{key} differs between ranks"
    # the counters moved: 4 steps were synchronised, not skipped
    assert int(states[0]["quantizer.stages.0.usage.step"]) == 4
    assert int(states[0]["quantizer.stages.2.quantizer.step"]) == 4

    items = [json.loads((dump / f"rank{r}.json").read_text())["items"] for r in range(2)]
    assert len(items[0]) == len(items[1]) == 4 * 2
    assert not set(items[0]) & set(items[1]), "ranks trained on the same utterances"
    # the exported model is rank 0's state
    exported = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(exported[k], states[0][k]) for k in exported)
