"""egs/librispeech/study.sh names its runs REGIME_KIND_REMEDIES: every name of the study maps
to a recipe whose stack has the regime's shape (120 bits a frame either way), the kind, and
the remedies on or off; a bad name ends with one error line and exit code 2."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from conftest import REPO

from codec.config import ModelConfig
from codec.train.config import load_training_recipe

SCRIPT = REPO / "egs" / "librispeech" / "study.sh"
KINDS = ["ste", "ema", "simvq", "diveq", "sf_diveq", "rotation", "cosine"]
NAMES = [f"{r}_{k}_{m}" for r in "ab" for k in KINDS for m in ("off", "on")]


def dry_run(*names: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *names], capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1"}, cwd=REPO)


def test_every_run_of_the_study_maps_to_its_regime_kind_and_remedies() -> None:
    done = dry_run(*NAMES)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    for line in lines:
        name, recipe, *rest = shlex.split(line)
        regime, kind, remedies = name.replace("sf_diveq", "sf-diveq").split("_")
        kind = kind.replace("sf-diveq", "sf_diveq")
        sets = [rest[i + 1] for i in range(0, len(rest), 2)]
        assert all(flag == "--set" for flag in rest[::2])
        recipe_dict, _, train = load_training_recipe(REPO / recipe, sets)
        q = ModelConfig.from_dict(recipe_dict).quantizer
        stages, size = (12, 1024) if regime == "a" else (8, 32768)
        assert (q.n_stages, q.codebook_size) == (stages, size) and stages * (size.bit_length() - 1) == 120
        assert q.kind == ("ste" if kind == "cosine" else kind)
        options = q.options[q.kind]
        if kind == "cosine":
            assert q.codebook_dim == 8 and options["cosine_search"] is True
        else:
            assert q.codebook_dim is None
        on = remedies == "on"
        if q.kind in ("ste", "rotation"):
            assert options["init"] == ("kmeans" if on else "kaiming")
        if q.kind == "ema":
            assert options["kmeans_init"] is on and (options["dead_threshold"] > 0) is on
        if q.kind == "diveq":
            assert (options["replace_every"] > 0) is on
        if q.kind != "ema":
            assert (options["restart_after"] > 0) is on
        # the same start, steps, dropout and no schedule of the default recipe left in force
        assert train.init_from == "egs/librispeech/models/study_neutral" and train.init_parts == ["encoder", "decoder"]
        assert train.total_steps == 1500 and train.quantizer_warmup_steps == 0
        assert train.schedules["quantizer"]["dropout"] == [[0, 0.5]]
        assert train.schedules["loss"]["dc"] == [[0, 0.0]] and train.weight_average == 0.0


@pytest.mark.parametrize("name, message", [("c_ste_on", "regime must be a or b"),
                                           ("a_foo_off", "unknown kind foo"),
                                           ("a_ste_maybe", "remedies must be on or off")])
def test_a_bad_run_name_ends_with_one_error_line(name: str, message: str) -> None:
    done = dry_run("a_ste_on", name)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"study.sh: error: {name}: {message}"]


@pytest.mark.parametrize("name", ["a_simvq_off", "b_ema_on"])
def test_the_committed_neutral_start_gives_each_run_its_encoder_and_decoder(name: str) -> None:
    """egs/librispeech/models/study_neutral (committed, half precision) loads into float32 and starts a
    run of either regime: its encoder and decoder are copied exactly, the stack stays fresh."""
    import torch

    from codec.model import Codec
    from codec.train.loop import initialise_from

    _, recipe, *rest = shlex.split(dry_run(name).stdout)
    _, model_cfg, train = load_training_recipe(REPO / recipe, rest[1::2])
    codec = Codec(model_cfg)
    fresh = {k: v.clone() for k, v in codec.quantizer.state_dict().items()}
    assert initialise_from(codec, str(REPO / train.init_from), train.init_parts) == ["encoder", "decoder"]
    neutral = Codec.from_pretrained(REPO / train.init_from)
    for part in ("encoder", "decoder"):
        ours, theirs = getattr(codec, part).state_dict(), getattr(neutral, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert all(v.dtype == torch.float32 for v in ours.values() if v.is_floating_point())
    assert all(torch.equal(v, fresh[k]) for k, v in codec.quantizer.state_dict().items())
