"""tools/study_report.py on synthetic study folders whose answers are known."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from codec.eval.report import read_results, write_results
from codec.train.logging import read_log

REPO = Path(__file__).resolve().parents[1]
UTTERANCES = 5
STAGES = {"a": (3, 6, 12), "b": (2, 4, 8)}  # 1.5, 3, 6 kbps nominal
BASE_PESQ = {1.5: 1.5, 3.0: 2.0, 6.0: 2.5}  # the reference's PESQ is BASE_PESQ + i / 10 on utterance i


def load_tool():
    spec = importlib.util.spec_from_file_location("study_report", REPO / "tools" / "study_report.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def write_run(folder: Path, run: str, offset, utterances: int = UTTERANCES, entropy: bool = False) -> None:
    """results.csv of one run: PESQ = the reference's + offset(i) on utterance i (2 s each)."""
    (folder / run).mkdir()
    rows = []
    for stages, kbps in zip(STAGES[run[0]], BASE_PESQ):
        for i in range(utterances):
            row = {"system": run, "stages": stages, "utterance": f"u{i}.flac", "duration_s": 2.0,
                   "nominal_kbps": kbps, "kbps": kbps, "payload_kbps": kbps, "file_bytes": int(kbps * 250),
                   "payload_bytes": int(kbps * 250), "pesq": BASE_PESQ[kbps] + i / 10 + offset(i),
                   "stoi": 0.9, "mel_distance": 0.5, "si_sdr": 10.0 + i}
            rows.append(row)
            if entropy:  # range-coded: 5 kbps real at 6 nominal, PESQ as fixed-width
                rows.append({**row, "system": run + "+entropy", "kbps": kbps * 5 / 6,
                             "file_bytes": int(kbps * 250 * 5 / 6)})
    write_results(folder / run / "results.csv", rows)


def write_codebooks(folder: Path, run: str, utilisation: list[float]) -> None:
    lines = ["system,stage,codebook_size,frames,used_codes,utilisation,perplexity"]
    lines += [f"{run},{s},1024,500,{int(u * 1024)},{u},{u * 900}" for s, u in enumerate(utilisation, start=1)]
    (folder / run / "codebooks.csv").write_text("\n".join(lines) + "\n")


def write_log(folder: Path, run: str, stages: int, rows: list[dict], quantities: list[str]) -> None:
    """train_log.csv with the trainer's leading columns and s<i>_<quantity> per stage."""
    header = ["step", "split", "loss", "lr", "grad_norm", "audio_s_per_s", "pesq", "pesq_unquantized"]
    header += [f"s{i}_{q}" for i in range(1, stages + 1) for q in quantities]
    lines = [",".join(header)] + [",".join(str(r.get(h, "")) for h in header) for r in rows]
    (folder / run / "train_log.csv").write_text("\n".join(lines) + "\n")


def per_stage(quantity: str, values: list[float]) -> dict[str, float]:
    return {f"s{i}_{quantity}": v for i, v in enumerate(values, start=1)}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """a_ema_on (the reference, range-coded too), a_ste_off = reference + 0.1 everywhere,
    b_ema_on = reference - 0.2, a_cosine_on on 3 utterances (+0.3, -0.1, -0.1) with no codebooks
    or log, and a folder that is not a run."""
    write_run(tmp_path, "a_ema_on", lambda i: 0.0, entropy=True)
    write_run(tmp_path, "a_ste_off", lambda i: 0.1)
    write_run(tmp_path, "b_ema_on", lambda i: -0.2)
    write_run(tmp_path, "a_cosine_on", lambda i: 0.3 if i == 0 else -0.1, utterances=3)
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "results.csv").write_text("not a run\n")
    write_codebooks(tmp_path, "a_ema_on", [1.0] * 12)
    write_codebooks(tmp_path, "a_ste_off", [0.5] * 6 + [1.0] * 6)
    # a_ste_off: three train rows (speeds 10, 20, 30; utilisation 0.2, 0.5, 0.8 on every stage but
    # the last row's stage 12 at 0.6; dead codes 10, 5, 2 a stage) and a validation row to ignore
    ste = [{"step": 50 * k, "split": "train", "loss": 1.0, "audio_s_per_s": 10 * k,
            **per_stage("utilisation", [0.3 * k - 0.1] * 12 if k < 3 else [0.8] * 11 + [0.6]),
            **per_stage("perplexity", [100.0] * 12), **per_stage("dead_codes", [{1: 10, 2: 5, 3: 2}[k]] * 12)}
           for k in (1, 2, 3)]
    ste.append({"step": 150, "split": "valid", "loss": 0.9, "pesq": 2.5, **per_stage("utilisation", [1.0] * 12),
                **per_stage("dead_codes", [0] * 12)})
    write_log(tmp_path, "a_ste_off", 12, ste, ["perplexity", "utilisation", "dead_codes"])
    # b_ema_on: window utilisation logged beside the batch's (the window's is plotted and reported)
    ema = [{"step": 100 * k, "split": "train", "audio_s_per_s": 4.0,
            **per_stage("utilisation", [0.1] * 8), **per_stage("window_utilisation", [0.25 * k, 0.5 * k] * 4),
            **per_stage("dead_codes", [k] * 8), **per_stage("effective_rank", [4.0 * k] * 8),
            **per_stage("norm_spread", [0.5] * 8)} for k in (1, 2)]
    write_log(tmp_path, "b_ema_on", 8, ema, ["utilisation", "dead_codes", "window_utilisation",
                                              "effective_rank", "norm_spread"])
    return tmp_path


def table_row(summary: str, kind: str, remedies: str, section: str) -> list[str]:
    part = summary.split(section)[1].split("\n## ")[0]
    line = next(x for x in part.splitlines() if x.startswith(f"| {kind} | {remedies} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_merges_runs_pairs_them_and_tabulates(study: Path) -> None:
    tool = load_tool()
    assert tool.main([str(study)]) == 0
    merged = read_results(study / "results.csv")
    # 5 utterances x 3 rates (a_ema_on twice: range-coded too), a_cosine_on on 3; scratch passed over
    assert len(merged) == 15 * 2 + 15 + 15 + 9
    assert {r["system"] for r in merged} == {"a_ema_on", "a_ema_on+entropy", "a_ste_off", "b_ema_on", "a_cosine_on"}

    paired = {(r["run"], r["kbps"]): r for r in tool.paired_rows(merged, tool.find_runs(study), "a_ema_on")}
    assert set(paired) == {(run, k) for run in ("a_ste_off", "a_cosine_on", "b_ema_on") for k in (1.5, 3.0, 6.0)}
    for kbps in (1.5, 3.0, 6.0):
        ste, b = paired[("a_ste_off", kbps)], paired[("b_ema_on", kbps)]
        assert ste["mean"] == pytest.approx(0.1) and ste["lo"] <= ste["mean"] <= ste["hi"]
        assert ste["lo"] == pytest.approx(0.1) and ste["hi"] == pytest.approx(0.1)
        assert (ste["better"], ste["n"]) == (5, 5)
        assert b["mean"] == pytest.approx(-0.2) and (b["better"], b["n"]) == (0, 5)  # across regimes
        cos = paired[("a_cosine_on", kbps)]
        assert cos["mean"] == pytest.approx(0.1 / 3) and (cos["better"], cos["n"]) == (1, 3)
        assert -0.1 - 1e-9 <= cos["lo"] < cos["mean"] < cos["hi"] <= 0.3 + 1e-9

    summary = (study / "summary.md").read_text()
    assert "| a_ste_off | 1.5 | +0.100 | +0.100 .. +0.100 | 5/5 |" in summary
    assert "| b_ema_on | 6 | -0.200 | -0.200 .. -0.200 | 0/5 |" in summary
    assert "| a_cosine_on | 3 | +0.033 |" in summary
    # regime a: PESQ 2.5 + i/10 over i < 5: mean 2.7, 1.96 * sd / sqrt(5) = 0.139 (sd 0.158)
    half = 1.96 * math.sqrt(0.025) / math.sqrt(5)
    assert f"{half:.3f}" == "0.139"
    ref = table_row(summary, "ema", "on", "## Regime a")
    assert ref == ["ema", "on", "1.700 ± 0.139", "2.200 ± 0.139", "2.700 ± 0.139", "2.700 ± 0.139", "5.00",
                   "0.900", "12.00", "1.000", "1.000", "-", "-", "-", "-", "-", "-"]
    ste = table_row(summary, "ste", "off", "## Regime a")
    # utilisation on the set 0.5 x 6 and 1.0 x 6; log: last step 150, speeds 10/20/30, at the last
    # train row 2 dead codes x 12 stages and stage 12 at 0.6 (the valid row is not counted); no
    # effective rank logged; the valid row's PESQ 2.5, no unquantized PESQ
    assert ste == ["ste", "off", "1.800 ± 0.139", "2.300 ± 0.139", "2.800 ± 0.139", "-", "-",
                   "0.900", "12.00", "0.500", "0.750", "150", "20.0", "24", "0.600", "n/a -> n/a",
                   "2.50 / n/a"]
    b = table_row(summary, "ema", "on", "## Regime b")
    # window utilisation 0.5/1.0 alternating at step 200 (the batch's 0.1 is not used), 2 dead x 8,
    # stage 1's effective rank 4 then 8, no validation row
    assert b == ["ema", "on", "1.500 ± 0.139", "2.000 ± 0.139", "2.500 ± 0.139", "-", "-",
                 "0.900", "12.00", "-", "-", "200", "4.0", "16", "0.500", "4.0 -> 8.0", "n/a / n/a"]
    assert table_row(summary, "cosine", "on", "## Regime a")[2] == "1.633 ± 0.173"  # 1.8, 1.5, 1.6
    assert "24 of 28: a_ste_on, a_ema_off, a_simvq_off," in summary and "b_cosine_off, b_cosine_on." in summary
    assert "a_ste_off, " not in summary.split("## Runs not evaluated yet")[1].split("\n#")[0]
    assert "### Codebook usage over the whole set" in summary  # codec eval's tables, one level down

    for name in ("rate_quality", "utilisation_a", "utilisation_b", "dead_codes_a", "dead_codes_b",
                 "effective_rank_b", "norm_spread_b"):
        data = (study / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    assert not (study / "effective_rank_a.png").exists() and not (study / "norm_spread_a.png").exists()
    assert not (study / "stage_curves_a.png").exists() and "at every stage count" not in summary


def write_stages(folder: Path, run: str, counts: range, bits: int, pesq) -> None:
    """stages.csv of one run: 4 utterances at each stage count, PESQ pesq(stages) + i / 10."""
    rows = [{"system": run, "stages": n, "utterance": f"u{i}.flac", "duration_s": 2.0,
             "nominal_kbps": n * bits * 50 / 1000, "kbps": n * bits * 50 / 1000, "payload_kbps": 0.0,
             "file_bytes": 0, "payload_bytes": 0, "pesq": pesq(n) + i / 10, "stoi": 0.9,
             "mel_distance": 0.5, "si_sdr": 10.0} for n in counts for i in range(4)]
    write_results(folder / run / "stages.csv", rows)


def test_every_stage_count_is_tabulated_and_drawn_where_runs_have_it(study: Path) -> None:
    """a_ema_on and b_ema_on with curves (mean PESQ 1.15 + n / 10 and 1.15 + n / 5), a_ste_off
    without: a table and a figure per regime, the curve's points in stage order; none merged
    into results.csv."""
    tool = load_tool()
    write_stages(study, "a_ema_on", range(12, 0, -1), 10, lambda n: 1.0 + n / 10)
    write_stages(study, "b_ema_on", range(1, 9), 15, lambda n: 1.0 + n / 5)
    assert tool.main([str(study)]) == 0
    summary = (study / "summary.md").read_text()
    part = summary.split("## Regime a: mean PESQ at every stage count (4 utterances, stages.csv)")[1].split("\n## ")[0]
    assert "| run | 1 (0.5 kbps) | 2 (1 kbps) |" in part and "| 12 (6 kbps) |" in part
    row = next(x for x in part.splitlines() if x.startswith("| a_ema_on |"))
    assert row == "| a_ema_on | " + " | ".join(f"{1.15 + n / 10:.3f}" for n in range(1, 13)) + " |"
    assert "a_ste_off" not in part
    part = summary.split("## Regime b: mean PESQ at every stage count")[1].split("\n## ")[0]
    assert "| 8 (6 kbps) |" in part and f"| {1.15 + 8 / 5:.3f} |" in part
    for regime in "ab":
        data = (study / f"stage_curves_{regime}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert len(read_results(study / "results.csv")) == 15 * 2 + 15 + 15 + 9  # as without curves
    curve = tool.stage_points(read_results(study / "a_ema_on" / "stages.csv"))["a_ema_on"]
    assert [p[0] for p in curve] == list(range(1, 13)) and curve[2][1:] == pytest.approx((1.5, 1.45, 4))


def test_training_curves_take_the_window_utilisation_where_logged(study: Path) -> None:
    tool = load_tool()
    ste_log = read_log(study / "a_ste_off" / "train_log.csv")
    b_log = read_log(study / "b_ema_on" / "train_log.csv")
    assert tool.utilisation_quantity(ste_log) == "utilisation"
    assert tool.utilisation_quantity(b_log) == "window_utilisation"
    steps, values = tool.stage_curve(ste_log, "utilisation", tool.mean)
    assert steps == [50.0, 100.0, 150.0] and values == pytest.approx([0.2, 0.5, (0.8 * 11 + 0.6) / 12])
    assert tool.stage_curve(b_log, "window_utilisation", tool.mean) == ([100.0, 200.0], pytest.approx([0.375, 0.75]))
    assert tool.stage_curve(b_log, "dead_codes", sum)[1] == [8.0, 16.0]
    assert tool.stage_curve(b_log, "effective_rank", tool.mean)[1] == [4.0, 8.0]
    assert tool.stage_curve(ste_log, "effective_rank", tool.mean) == ([], [])


def test_other_reference_and_no_reference(study: Path) -> None:
    tool = load_tool()
    assert tool.main([str(study), "--reference", "b_ema_on"]) == 0
    summary = (study / "summary.md").read_text()
    assert "| a_ema_on | 1.5 | +0.200 | +0.200 .. +0.200 | 5/5 |" in summary
    assert "| a_ste_off | 6 | +0.300 |" in summary
    assert tool.main([str(study), "--reference", "a_rotation_on"]) == 0
    assert "No pairs: a_rotation_on has not been evaluated." in (study / "summary.md").read_text()


@pytest.mark.parametrize("case", ["empty", "absent", "bad_column"])
def test_bad_input_ends_in_one_error_line(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    tool = load_tool()
    folder = tmp_path / "study"
    if case != "absent":
        folder.mkdir()
        (folder / "notes").mkdir()
        (folder / "notes" / "results.csv").write_text("system\n")
    if case == "bad_column":
        (folder / "a_ste_on").mkdir()
        (folder / "a_ste_on" / "results.csv").write_text("system,stages,utterance\na_ste_on,3,u0.flac\n")
    assert tool.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("study_report.py: error: ")
    expected = {"empty": "no <run>/results.csv under", "absent": "is not a folder", "bad_column": "lacks the column"}
    assert expected[case] in err


def test_help_explains(capsys: pytest.CaptureFixture) -> None:
    tool = load_tool()
    with pytest.raises(SystemExit) as stop:
        tool.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "REGIME_KIND_REMEDIES" in out and "--reference" in out and "dead_codes_<r>.png" in out


def test_replicate_pairs_each_run_against_its_other_start(study: Path, tmp_path_factory) -> None:
    """--replicate: the same runs from another start. Here a_ste_off's other start scored 0.05
    lower on every utterance and a_ema_on's 0.2 higher on utterance 0 only; b_ema_on has no
    replicate and a_ste_on is the replicate's alone: neither is paired."""
    other = tmp_path_factory.mktemp("first_start")
    write_run(other, "a_ste_off", lambda i: 0.05)
    write_run(other, "a_ema_on", lambda i: 0.2 if i == 0 else 0.0)
    write_run(other, "a_ste_on", lambda i: 0.0)
    tool = load_tool()
    assert tool.main([str(study), "--replicate", str(other)]) == 0
    rows = {(r["run"], r["kbps"]): r for r in tool.replicate_rows(
        read_results(study / "results.csv"), tool.read_runs(other)[1], tool.find_runs(study))}
    assert set(rows) == {(run, k) for run in ("a_ema_on", "a_ste_off") for k in (1.5, 3.0, 6.0)}
    for kbps in (1.5, 3.0, 6.0):
        ste, ema = rows[("a_ste_off", kbps)], rows[("a_ema_on", kbps)]
        assert ste["mean"] == pytest.approx(0.05) and (ste["better"], ste["n"]) == (5, 5)
        assert ema["mean"] == pytest.approx(-0.2 / 5) and (ema["better"], ema["n"]) == (0, 5)
        assert -0.2 - 1e-9 <= ema["lo"] < ema["mean"] < ema["hi"] <= 1e-9
    summary = (study / "summary.md").read_text()
    section = summary.split(f"## The same runs from another start ({other.name})")[1].split("\n## ")[0]
    assert "| a_ste_off | 6 | +0.050 | +0.050 .. +0.050 | 5/5 |" in section
    assert "b_ema_on" not in section and "a_ste_on" not in section
    # without --replicate there is no such section; a replicate folder without runs is bad input
    assert tool.main([str(study)]) == 0 and "another start" not in (study / "summary.md").read_text()
    empty = tmp_path_factory.mktemp("empty")
    assert tool.main([str(study), "--replicate", str(empty)]) == 2
