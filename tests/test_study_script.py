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
        assert train.init_from == "exp/neutral/model" and train.init_parts == ["encoder", "decoder"]
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
