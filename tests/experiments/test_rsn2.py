"""RSN2 experiments (manytask/experiments/rsn2.py): data helpers, key errors, tiny end-to-end runs
of every recipe (one seed, one or two epochs, small nets), and the full runs with the acceptance checks
under @pytest.mark.slow."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from manytask.config import ConfigError
from manytask.data.images import write_idx
from manytask.experiments.rsn2 import (RSN2EnsembleConfig, RSN2SplitConfig, class_subset, image_source, rotated_inverted,
                                       settings)
from manytask.experiments.runner import parse_experiment
from manytask.registry import get_experiment
from manytask.report import read_results

TINY = ["seeds=0", "epochs=2", "patience=0", "conv=4,8", "widths=16", "data.limit=150", "mask_batch=64"]


def run(name, args, out):
    entry = get_experiment(name)
    return entry.fn(parse_experiment(entry.config, args, name), out)


def test_settings_reject_unknown_keys_and_apply_the_recipe_defaults():
    setup = settings(parse_experiment(RSN2SplitConfig, ["keep=0.25", "epochs=3", "data.limit=10", "rounds=4"]),
                     "rsn2-split")
    assert setup.method.keep == 0.25 and setup.train.epochs == 3 and setup.source.limit == 10
    assert setup.method.rounds == 4
    assert setup.train.lr == 3e-3 and setup.method.conv == (32, 64)  # the recipe's defaults where not overridden
    assert parse_experiment(RSN2SplitConfig, ["seeds=1,2"]).seeds == (1, 2)
    assert setup.method.criterion == "gradient"  # the paper's Algorithm 1 score
    ensemble = settings(parse_experiment(RSN2EnsembleConfig, []), "rsn2-ensemble").method
    assert (ensemble.criterion, ensemble.rounds, ensemble.copies, ensemble.keep) == ("magnitude", 5, 5, 0.2)
    bad = {"nope=1": "unknown key 'nope' for rsn2-split; valid: seeds, data.dir",
           "data.foo=1": "unknown data key 'data.foo'",
           "data.limit=x": "limit=x: expected an integer", "data.limit=-1": "limit=-1: must be >= 0",
           "keep=2": "keep=2.0: must be in", "criterion=size": "criterion=size: choose one of gradient, magnitude",
           "rounds=0": "rounds=0: must be >= 1"}
    for arg, message in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            settings(parse_experiment(RSN2SplitConfig, [arg]), "rsn2-split")
    with pytest.raises(ConfigError, match="seeds=a"):
        parse_experiment(RSN2SplitConfig, ["seeds=a"])


@pytest.mark.parametrize("name", ["rsn2-ensemble", "rsn2-split", "rsn2-multidomain", "rsn2-multidomain-conv"])
def test_a_bad_key_fails_before_anything_is_written(name, tmp_path):
    with pytest.raises(ConfigError, match="limit=many: expected an integer"):
        run(name, ["data.limit=many"], tmp_path)
    assert not any(tmp_path.iterdir())


def test_class_subset_and_derived_domain():
    digits = image_source("", 0)
    easy = class_subset(digits, [1, 4, 7], "easy")
    y_old = digits.train.labels["digits"]
    assert easy.tasks[0].outputs == 3 and easy.train.size("x") == int(torch.isin(y_old, torch.tensor([1., 4., 7.])).sum())
    assert set(easy.train.labels["easy"].tolist()) == {0.0, 1.0, 2.0}
    x = digits.test.inputs["x"][:2]
    r = rotated_inverted(x)
    assert r.shape == x.shape and torch.allclose(r[0, 0, 0, -1], 1 - x[0, 0, 0, 0])


def test_image_source_reads_mnist_format_files(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60), ("t10k", 20)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8)).astype(np.uint8))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    data = image_source(str(tmp_path), limit=30)
    assert data.input_shapes == {"x": (1, 8, 8)} and data.train.size("x") == 30 and data.test.size("x") == 20


@pytest.mark.parametrize("name", ["rsn2-ensemble", "rsn2-split", "rsn2-multidomain-conv"])
def test_image_experiments_run_end_to_end(name, tmp_path, capsys):
    result = run(name, TINY, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "table.txt").exists() and (tmp_path / "seed0" / "rsn2_packed.safetensors").exists()
    assert read_results(tmp_path) == [tuple(r) for r in result.records]
    contenders = {r[0] for r in result.records}
    assert {"control"} < contenders and all(0 <= r[5] <= 100 for r in result.records if r[1] >= 0)
    assert len(summary["within"]) == len([r for r in result.records if r[1] == -1]) + ("control" in summary["within"])
    assert summary["packed_max_abs_diff"] <= 1e-6
    s = summary["sizes"]
    assert s["packed"] < s["unpacked"]
    if name == "rsn2-multidomain-conv":
        assert summary["earlier_stages_bit_identical"] == [True]
        assert summary["eq3_on_every_layer"] == [True]
        assert (tmp_path / "forgetting.png").exists()
        rows = (tmp_path / "forgetting.csv").read_text().splitlines()
        assert len(rows) == 1 + 3  # stage 1: one task; stage 2: both


def test_mnist_files_run_through_the_ensemble(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "files"
    d.mkdir()
    for stem, n in (("train", 120), ("t10k", 40)):
        write_idx(d / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8)).astype(np.uint8))
        write_idx(d / f"{stem}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    run("rsn2-ensemble", [*TINY, f"data.dir={d}"], tmp_path / "out")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["data"] == "files"


def test_magnitude_scores_spread_every_subnetwork_over_the_first_filters(tmp_path):
    """Why the ensemble recipe scores by |W|: on 28x28 digits the gradient at initialisation picks the same
    few first-layer filters for a subnetwork (the ones the digit strokes light up), |W| spreads it over
    most of them (docs/rsn2.md). Filters of the first conv layer with any weight, per subnetwork."""
    from manytask.data.heldout import write_digits_idx
    from manytask.methods.rsn2 import build, select_masks
    write_digits_idx(tmp_path / "d28", size=28, seed=7)
    data = image_source(str(tmp_path / "d28"), 300)
    used = {}
    for criterion in ("gradient", "magnitude"):
        method = settings(parse_experiment(RSN2EnsembleConfig, [f"criterion={criterion}"]), "rsn2-ensemble").method
        torch.manual_seed(0)
        model, hooks = build(data.tasks, data.input_shapes, method)
        select_masks(model, data, hooks.keep, criterion, 128, 0, hooks.rounds)
        used[criterion] = model.first[0].weight_mask.flatten(2).any(2).sum(1).tolist()  # (5,) of 32 filters
    assert max(used["gradient"]) < min(used["magnitude"]), used


# ---- full runs: the acceptance checks (minutes each) ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["rsn2-ensemble", "rsn2-split", "rsn2-multidomain", "rsn2-multidomain-conv"])
def test_acceptance(name, tmp_path):
    run(name, [], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["all_within"], summary.get("within")
    assert summary["sizes"]["packed_over_one_control"] <= 1.1
    assert summary["packed_max_abs_diff"] <= 1e-6
    if "earlier_stages_bit_identical" in summary:
        assert all(summary["earlier_stages_bit_identical"]) and all(summary["eq3_on_every_layer"])


@pytest.mark.slow
@pytest.mark.parametrize("generator_seed", [104, 105, 106])
def test_every_subnetwork_is_within_two_points_on_held_out_28x28_digits(generator_seed, tmp_path):
    """The second pre-registered check of docs/rsn2.md, one confirmation set each: 28x28 digits made from
    source images no training image was made from, with shifts and noise (manytask.data.heldout)."""
    from manytask.data.heldout import write_digits_idx
    write_digits_idx(tmp_path / "digits28", size=28, seed=generator_seed)
    run("rsn2-ensemble", ["seeds=0", f"data.dir={tmp_path / 'digits28'}"], tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["all_within"], summary["within"]

