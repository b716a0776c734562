"""Training schedules (issue 27): values that change with the step (train.schedules), the
k-means fit of the stack when the quantizer warm-up ends (train.quantizer_fit_batches), and
the average of the weights used to validate and export (train.weight_average)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO, data_root, speech, tiny_model

from codec.quant.refit import fit_codebooks
from codec.recipe import ConfigError
from codec.train.average import WeightAverage
from codec.train.config import load_training_recipe
from codec.train.data import CropBatches, librispeech_utterances
from codec.train.logging import read_log
from codec.train.loop import Callback, train
from codec.train.optim import build_optimizer, lr_factor
from codec.train.schedule import Schedule, parse_schedules

TINY = REPO / "recipes" / "tiny.yaml"


# ----- the schedule itself -----------------------------------------------------------------------
def test_schedule_is_piecewise_linear_held_at_the_ends_and_jumps_at_repeated_steps() -> None:
    s = Schedule([[10, 1.0], [20, 3.0], [20, 0.0], [30, 0.5]])
    assert [s(k) for k in (0, 10, 15, 19)] == [1.0, 1.0, 2.0, 2.8]
    assert s(20) == 0.0  # the later of two points at one step holds from that step on
    assert s(25) == 0.25 and s(30) == 0.5 and s(10**6) == 0.5
    assert Schedule.constant(0.7)(0) == 0.7 == Schedule.constant(0.7)(123)


@pytest.mark.parametrize("spec, words", [
    ({"loss.nope": [[0, 1]]}, "unknown target"),
    ({"quantizer": {"dropout": [[0, 1.5]]}}, "in [0, 1]"),
    ({"loss": {"dc": [[0, -1]]}}, ">= 0"),
    ({"lr": {"encoder": [[5, 1], [2, 0]]}}, "non-decreasing"),
    ({"lr": {"encoder": []}}, "at least one"),
    ({"lr": {"encoder": "fast"}}, "expected"),
])
def test_bad_schedules_are_config_errors(spec: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_schedules(spec)


def test_nested_and_dotted_schedules_are_the_same_and_come_from_the_command_line() -> None:
    nested = parse_schedules({"loss": {"dc": [[0, 0], [9, 50]]}})
    dotted = parse_schedules({"loss.dc": [[0, 0], [9, 50]]})
    assert nested.keys() == dotted.keys() == {"loss.dc"} and nested["loss.dc"](3) == dotted["loss.dc"](3)
    _, _, cfg = load_training_recipe(TINY, ["schedules.quantizer.dropout=[[0, 0.1], [10, 0.5]]"])
    assert parse_schedules(cfg.schedules)["quantizer.dropout"](5) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="unknown target"):
        load_training_recipe(TINY, ["schedules.lr.codebook=[[0, 1]]"])


# ----- what each target drives -------------------------------------------------------------------
def test_lr_multiplier_of_zero_freezes_its_part_and_leaves_the_others_training() -> None:
    model = tiny_model("ste").train()
    _, _, cfg = load_training_recipe(TINY, ["schedules.lr.encoder=[[0, 1], [2, 1], [2, 0]]", "warmup_steps=1"])
    opt, sched = build_optimizer(model, cfg)
    assert {g["part"] for g in opt.param_groups} == {"encoder", "decoder", "quantizer"}
    wav = speech(0.5)
    for step in range(4):
        enc = [p.detach().clone() for p in model.encoder.parameters()]
        dec = [p.detach().clone() for p in model.decoder.parameters()]
        opt.zero_grad()
        model(wav).audio.sub(wav).square().mean().backward()
        opt.step()
        sched.step()
        enc_moved = any(not torch.equal(a, b) for a, b in zip(enc, model.encoder.parameters()))
        dec_moved = any(not torch.equal(a, b) for a, b in zip(dec, model.decoder.parameters()))
        assert dec_moved and enc_moved == (step < 2), step
    lrs = {g["part"]: g["lr"] for g in opt.param_groups}
    assert lrs["encoder"] == 0.0 and lrs["decoder"] == pytest.approx(cfg.lr * lr_factor(4, 1, cfg.total_steps, 0.1))


def test_tone_schedule_leaves_crops_plain_before_it_and_adds_tones_after(tmp_path: Path) -> None:
    utts = librispeech_utterances(data_root(), ["train-clean-100"])[:40]
    late = CropBatches(utts, 16000, 0.5, 8, seed=3, tone_fraction=Schedule([[3, 0.0], [3, 1.0]]), grad_accum=2)
    plain = CropBatches(utts, 16000, 0.5, 8, seed=3)
    always = CropBatches(utts, 16000, 0.5, 8, seed=3, tone_fraction=1.0)
    for k in (0, 5):  # micro-steps of optimizer steps 0 and 2
        assert torch.equal(late[k]["audio"], plain[k]["audio"])
    for k in (6, 9):  # steps 3 and 4
        assert torch.equal(late[k]["audio"], always[k]["audio"]) and not torch.equal(late[k]["audio"], plain[k]["audio"])


class Watch(Callback):
    """Keeps the model a run ended with."""

    def at_end(self, codec, rank, items) -> None:
        self.codec = codec


RUN = ["total_steps=6", "batch_size=2", "log_every=1", "val_every=3", "ckpt_every=6",
       "data.valid_utterances=2", "pesq_utterances=0", "model.quantizer.kind=ema"]


def test_loss_and_dropout_schedules_drive_the_run(tmp_path: Path) -> None:
    """A term scheduled in at step 3 is not computed before it (no column) and is after; the
    dropout ends at its schedule's last value."""
    watch = Watch()
    train(TINY, [*RUN, "schedules.loss.level=[[3, 0], [3, 1]]", "schedules.quantizer.dropout=[[0, 0], [5, 0.25]]"],
          tmp_path / "run", quiet=True, callbacks=[watch])
    rows = [r for r in read_log(tmp_path / "run" / "log.csv") if r["split"] == "train"]
    assert [r["level"] != "" for r in rows] == [False, False, False, True, True, True]
    assert watch.codec.quantizer.dropout == 0.25


# ----- the stack fit when the warm-up ends -------------------------------------------------------
def test_fit_codebooks_is_a_lloyd_fixed_point_per_stage_on_its_residuals() -> None:
    """Every stored codebook afresh, in stage order: each codeword is the mean of the rows it
    wins (a Lloyd fixed point on the residual that stage sees), every stage lowers the error,
    and an EMA stage counts as initialised (its first batch does not redo k-means)."""
    model = tiny_model("ema")
    torch.manual_seed(1)
    latents = torch.randn(3000, 32) * torch.linspace(0.2, 2.0, 32)
    report = fit_codebooks(model.quantizer, latents, iters=30, seed=0)
    r = latents.clone()
    for stage, rep in zip(model.quantizer.stages, report):
        q = stage.quantizer
        assert bool(q.initialized) and rep.used_after == q.codebook_size
        book = q.codebook()
        codes = q.search(r, book)
        for c in codes.unique()[:20]:
            torch.testing.assert_close(book[c], r[codes == c].mean(0), rtol=1e-4, atol=1e-5)
        err = float((r - book[codes]).square().sum(1).mean())
        assert err == pytest.approx(rep.error_after, rel=1e-5) and err < 0.8 * float(r.square().sum(1).mean())
        r = r - book[codes]


def test_the_run_fits_the_stack_on_the_warmed_encoders_latents_of_its_first_batches(tmp_path: Path, capsys) -> None:
    """fit_quantizer: fit_codebooks on the encoder's latents of micro-batches 0..n-1, seeded
    with the run's seed; the loop calls it once, when the warm-up ends."""
    import copy

    from codec.train.loop import fit_quantizer, setup

    run = setup(TINY, [*RUN, "quantizer_warmup_steps=3", "quantizer_fit_batches=4"], tmp_path / "a", resume=False)
    want = copy.deepcopy(run.codec.quantizer)
    with torch.no_grad():
        z = torch.cat([run.codec.encoder(run.codec._pad(run.batches[k]["audio"])) for k in range(4)], dim=0)
    fit_codebooks(want, z.transpose(1, 2).reshape(-1, z.shape[1]), seed=run.cfg.seed)
    fit_quantizer(run)
    for ours, theirs in zip(run.codec.quantizer.stages, want.stages):
        assert torch.equal(ours.quantizer.codebook(), theirs.quantizer.codebook())
    capsys.readouterr()
    res = train(TINY, [*RUN, "quantizer_warmup_steps=3", "quantizer_fit_batches=4"], tmp_path / "b", quiet=True)
    assert capsys.readouterr().err.count("quantizer fitted on 200 latents") == 1
    rows = {(r["split"], int(r["step"])): r for r in read_log(res.out_dir / "log.csv")}
    assert float(rows[("train", 3)]["quantizer"]) == 0 and float(rows[("train", 4)]["quantizer"]) > 0


# ----- the weight average ------------------------------------------------------------------------
def test_weight_average_follows_the_weights_then_averages_them_and_swaps_in_and_out() -> None:
    net = torch.nn.Linear(3, 2)
    avg = WeightAverage(net, decay=0.9, start=2)
    values = [1.0, 2.0, 4.0, 8.0, 16.0]
    for step, v in enumerate(values, start=1):
        with torch.no_grad():
            net.weight.fill_(v)
        avg.update(net, step)
    # steps 1-2 copy; step 3: d = min(0.9, 1/10); step 4: d = 2/11; step 5: d = 3/12
    want = 2.0
    for n, v in enumerate(values[2:]):
        d = min(0.9, (1 + n) / (10 + n))
        want = d * want + (1 - d) * v
    assert float(avg.shadow["weight"][0, 0]) == pytest.approx(want)
    live = net.weight.detach().clone()
    with avg.swapped_in(net):
        assert float(net.weight[0, 0].detach()) == pytest.approx(want)
    assert torch.equal(net.weight, live)
    other = WeightAverage(torch.nn.Linear(3, 2), decay=0.9)
    other.load_state_dict(avg.state_dict())
    assert torch.equal(other.shadow["weight"], avg.shadow["weight"]) and other.updates == 3


def test_a_run_with_a_weight_average_exports_and_validates_the_average(tmp_path: Path) -> None:
    """The exported model holds the averaged weights, not the last step's, and the last
    validation row scored exactly that model."""
    from accelerate import Accelerator

    from codec import Codec
    from codec.train.data import utterances_from, validation_set
    from codec.train.losses import CodecLoss
    from codec.train.validate import validate

    settings = [*RUN, "weight_average=0.5"]
    watch = Watch()
    res = train(TINY, settings, tmp_path / "run", quiet=True, callbacks=[watch])
    exported, live = Codec.from_pretrained(res.model_dir), watch.codec
    _, model_cfg, cfg = load_training_recipe(TINY, settings)
    root = cfg.data_root()
    speakers = {u.speaker for u in utterances_from(None, root, cfg.data.train_subsets)}
    valid = validation_set(utterances_from(None, root, cfg.data.valid_subsets), speakers,
                           cfg.data.valid_utterances, model_cfg.sample_rate, cfg.data.valid_seconds)
    loss_fn = CodecLoss(16000, cfg.loss)
    scores = {name: validate(Accelerator(cpu=True), m, loss_fn, valid, 0)["losses"]["loss"]
              for name, m in (("exported", exported), ("live", live))}
    logged = float([r for r in read_log(res.out_dir / "log.csv") if r["split"] == "valid"][-1]["loss"])
    assert logged == pytest.approx(scores["exported"], rel=1e-5)
    assert abs(scores["live"] - scores["exported"]) > 1e-4


def test_the_average_leaves_the_quantizer_live() -> None:
    """Codebooks are refitted when the warm-up ends and restarted when idle: the average holds
    the encoder's and decoder's weights only, the stack stays the live one."""
    model = tiny_model("ste")
    avg = WeightAverage(model, decay=0.9)
    assert avg.shadow and all(not n.startswith("quantizer.") for n in avg.shadow)
    assert any(n.startswith("encoder.") for n in avg.shadow) and any(n.startswith("decoder.") for n in avg.shadow)
    with torch.no_grad():
        model.quantizer.stages[0].quantizer.embed.add_(1.0)
    live = model.quantizer.stages[0].quantizer.embed.detach().clone()
    with avg.swapped_in(model):
        assert torch.equal(model.quantizer.stages[0].quantizer.embed, live)


@pytest.mark.parametrize("sets, words", [
    (["quantizer_fit_batches=4"], "quantizer_warmup_steps > 0"),
    (["schedules.loss.spectrum=[[0, 0], [10, 1]]"], "synthesises from spectra"),
])
def test_schedule_settings_that_cannot_act_are_config_errors(sets: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_training_recipe(TINY, sets)  # tiny.yaml is a SEANet model: no synthesis spectra


def test_a_checkpoint_that_does_not_fit_the_run_is_one_error_line(tmp_path: Path, capsys) -> None:
    """Resuming with a weight average a checkpoint written without one (or one from before the
    per-part lr groups) cannot restore the run's state: one line that says how to go on."""
    from codec.cli import main

    base = ["--set", "total_steps=2", "--set", "batch_size=2", "--set", "ckpt_every=2", "--set", "val_every=2",
            "--set", "data.valid_utterances=2", "--set", "pesq_utterances=0"]
    assert main(["train", str(TINY), "--out-dir", str(tmp_path / "run"), "-q", *base]) == 0
    capsys.readouterr()
    code = main(["train", str(TINY), "--out-dir", str(tmp_path / "run"), "-q", "--resume", *base,
                 "--set", "weight_average=0.5", "--set", "total_steps=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "init_from" in err[0]
