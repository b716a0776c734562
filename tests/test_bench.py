"""tools/bench.py: a smoke run with tiny settings and the multiply-add counter on known layers.
Nothing here asserts on time."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from codec.nn.conv import CausalConv1d

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "tools" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mac_count_of_known_layers() -> None:
    bench = _bench()
    conv = CausalConv1d(4, 8, 3, dilation=2)
    x = torch.randn(1, 4, 10)
    # 10 outputs x 8 channels x 4 inputs x 3 taps; the inner nn.Conv1d is not counted again
    assert bench.count_macs(conv, lambda: conv(x)) == 10 * 8 * 4 * 3
    strided = CausalConv1d(4, 8, 4, stride=2)
    assert bench.count_macs(strided, lambda: strided(x)) == 5 * 8 * 4 * 4
    lin = nn.Linear(6, 5)
    assert bench.count_macs(lin, lambda: lin(torch.randn(7, 6))) == 7 * 5 * 6
    lstm = nn.LSTM(3, 4, num_layers=2)
    # per step: layer 1 4*4*(3+4), layer 2 4*4*(4+4)
    assert bench.count_macs(lstm, lambda: lstm(torch.randn(5, 1, 3))) == 5 * (16 * 7 + 16 * 8)


def test_bench_smoke(tmp_path: Path) -> None:
    bench = _bench()
    res = bench.main(["--quick", "--recipe", str(REPO / "recipes" / "tiny.yaml"), "--threads", "1",
                      "--chunks", "320", "--no-encodec", "--no-memory",
                      "--json", str(tmp_path / "r.json")])
    r = res["threads"]["1"]
    for key in ("encode", "decode", "stream_encode_20ms", "stream_decode_20ms"):
        assert r[key] > 0
    assert res["macs"]["ours"]["encoder"] > 0 and res["macs"]["ours"]["search"] > 0
    assert set(res["search_per_stage"]) == {"1024", "2048"}
    assert res["bitstream"]["bytes_fixed"] > 0 and res["train"]["step_s"] > 0 and res["train"]["bf16_step_s"] > 0
    t = res["train"]
    assert t["bf16_audio_s_per_s"] * t["bf16_step_s"] == pytest.approx(t["batch"] * t["crop_s"])
    assert res["flatness"]["chunks"] == 100  # --quick: a 2 s stream of 20 ms chunks
    assert (tmp_path / "r.json").is_file()


def test_bench_smoke_convnext_has_int8_rows(tmp_path: Path) -> None:
    bench = _bench()
    res = bench.main(["--quick", "--recipe", str(REPO / "recipes" / "tiny_convnext.yaml"), "--threads", "1",
                      "--chunks", "320", "--no-encodec", "--no-memory", "--no-train"])
    r = res["threads"]["1"]
    assert res["int8"]
    assert r["stream_encode_20ms_int8"] > 0 and r["stream_decode_20ms_int8"] > 0
    assert res["onnxruntime"] and r["stream_encode_20ms_onnxruntime"] > 0 and r["stream_decode_20ms_onnxruntime"] > 0
    assert "onnxruntime (codec export)" in bench.markdown(res)
    assert res["flatness_int8"]["chunks"] == 100
    f = res["flatness"]
    assert f["median_ratio"] == f["last_median_ms"] / f["first_median_ms"]
    if res["native"]:  # the memory floor: the engines' weight bytes over a measured read rate
        fl = res["stream_floor"]
        assert 0 < fl["bytes_int8"] < fl["bytes"] / 2 and fl["read_gb_s"] > 0
        assert fl["rtf"] == pytest.approx(fl["bytes"] / (fl["read_gb_s"] * 1e9) / 0.02)
        assert "Memory floor of 20 ms streaming" in bench.markdown(res)
