"""tools/bench_*.py: smoke runs with tiny settings, each writing its JSON, and the multiply-add
counter on known layers. Nothing here asserts on time, and the benchmarks check no results
(correctness is the other tests' job)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from codec.nn.conv import CausalConv1d

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # the scripts import bench_common as their neighbour

import bench_common
import bench_memory
import bench_offline
import bench_streaming
import bench_train

TINY, TINY_CONVNEXT = str(REPO / "recipes" / "tiny.yaml"), str(REPO / "recipes" / "tiny_convnext.yaml")


def test_mac_count_of_known_layers() -> None:
    conv = CausalConv1d(4, 8, 3, dilation=2)
    x = torch.randn(1, 4, 10)
    # 10 outputs x 8 channels x 4 inputs x 3 taps; the inner nn.Conv1d is not counted again
    assert bench_common.count_macs(conv, lambda: conv(x)) == 10 * 8 * 4 * 3
    strided = CausalConv1d(4, 8, 4, stride=2)
    assert bench_common.count_macs(strided, lambda: strided(x)) == 5 * 8 * 4 * 4
    lin = nn.Linear(6, 5)
    assert bench_common.count_macs(lin, lambda: lin(torch.randn(7, 6))) == 7 * 5 * 6
    lstm = nn.LSTM(3, 4, num_layers=2)
    # per step: layer 1 4*4*(3+4), layer 2 4*4*(4+4)
    assert bench_common.count_macs(lstm, lambda: lstm(torch.randn(5, 1, 3))) == 5 * (16 * 7 + 16 * 8)


def test_offline_bench_smoke(tmp_path: Path) -> None:
    res = bench_offline.main(["--quick", "--recipe", TINY, "--threads", "1", "--no-encodec",
                              "--json", str(tmp_path / "r.json")])
    r = res["threads"]["1"]
    assert r["encode"] > 0 and r["decode"] > 0 and r["encode_exact"] > 0
    assert res["macs"]["ours"]["encoder"] > 0 and res["macs"]["ours"]["search"] > 0
    assert set(res["search_per_stage"]) == set(res["search_per_stage_exact"]) == {"1024", "2048"}
    assert res["bitstream"]["bytes_fixed"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["threads"]["1"]["encode"] == r["encode"]


def test_streaming_bench_smoke_convnext_has_int8_and_onnx_rows(tmp_path: Path) -> None:
    res = bench_streaming.main(["--quick", "--recipe", TINY_CONVNEXT, "--threads", "1", "--chunks", "320",
                                "--json", str(tmp_path / "s.json")])
    r = res["threads"]["1"]
    assert res["int8"]
    assert r["stream_encode_20ms"] > 0 and r["stream_decode_20ms"] > 0
    assert r["stream_encode_20ms_int8"] > 0 and r["stream_decode_20ms_int8"] > 0
    assert res["onnxruntime"] and r["stream_encode_20ms_onnxruntime"] > 0 and r["stream_decode_20ms_onnxruntime"] > 0
    text = bench_streaming.markdown(res)
    assert "onnxruntime (codec export)" in text and "int8 weights" in text
    assert res["flatness"]["chunks"] == res["flatness_int8"]["chunks"] == 100  # --quick: 2 s of 20 ms chunks
    f = res["flatness"]
    assert f["median_ratio"] == f["last_median_ms"] / f["first_median_ms"]
    if res["native"]:  # the engine rows, the rows without it, and the memory floor
        assert r["stream_encode_20ms_pytorch"] > 0
        fl = res["stream_floor"]
        assert 0 < fl["bytes_int8"] < fl["bytes"] / 2 and fl["read_gb_s"] > 0
        assert fl["rtf"] == pytest.approx(fl["bytes"] / (fl["read_gb_s"] * 1e9) / 0.02)
        assert "Memory floor of 20 ms streaming" in text
    assert (tmp_path / "s.json").is_file()


def test_streaming_bench_of_a_model_without_linear_layers(tmp_path: Path) -> None:
    res = bench_streaming.main(["--quick", "--recipe", TINY, "--threads", "1", "--chunks", "320", "--no-onnx",
                                "--stream-seconds", "0"])
    assert not res["int8"] and not res["native"] and "flatness" not in res
    assert res["threads"]["1"]["stream_encode_20ms"] > 0


def test_train_bench_smoke(tmp_path: Path) -> None:
    res = bench_train.main(["--quick", "--recipe", TINY, "--threads", "1", "--json", str(tmp_path / "t.json")])
    t = res["train"]
    assert t["step_s"] > 0 and t["bf16_step_s"] > 0
    assert t["bf16_audio_s_per_s"] * t["bf16_step_s"] == pytest.approx(t["batch"] * t["crop_s"])
    assert "encoder forward" in t["parts"]
    assert (tmp_path / "t.json").is_file()


def test_memory_bench_smoke(tmp_path: Path) -> None:
    res = bench_memory.main(["--recipe", TINY, "--seconds", "0.5", "--json", str(tmp_path / "m.json")])
    mem = res["memory"]
    assert mem["peak_mib"] >= mem["baseline_mib"] > 0
    assert mem["growth_mib"] == pytest.approx(mem["peak_mib"] - mem["baseline_mib"])
