"""Soft ordering experiments: the digit-pair data, the expressivity claim (parallel ordering cannot fit two
random patterns on the same inputs, permuted ordering can), and small runs of the registered recipes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from manytask.config import ConfigError
from manytask.data.images import digit_pairs, write_idx
from manytask.experiments.runner import parse_experiment
from manytask.experiments.soft_order import (OrderingsConfig, PatternsConfig, best_threshold_error, fit_patterns,
                                             soft_order_digits, soft_order_patterns, soft_order_tables)
from manytask.registry import get_dataset
from manytask.report import paired, read_results


def coded_digits(n_per_class=30, size=4):
    """Images whose every pixel is the digit's class, so a task's examples reveal their digits."""
    labels = np.repeat(np.arange(10), n_per_class)
    images = np.broadcast_to(labels[:, None, None], (len(labels), size, size)).astype(np.uint8).copy()
    return images, labels


def test_digit_pairs_tasks_hold_only_their_two_digits():
    images, labels = coded_digits()
    data = digit_pairs(images, labels, None, None, n_tasks=6, n_train=8, seed=1, scale=1.0)
    pairs = data.meta["pairs"]
    assert len(set(pairs)) == 6 and all(a < b for a, b in pairs)
    for (a, b), t in zip(pairs, data.tasks):
        assert t.name == f"{a}v{b}" and t.input == t.name and t.kind == "binary"
        for split in (data.train, data.val, data.test):
            x, y = split.inputs[t.name], split.labels[t.name]  # (n, 1, 4, 4), (n,)
            digit = x[:, 0, 0, 0]
            assert torch.equal(digit, torch.where(y == 1, float(b), float(a)))
        assert data.train.labels[t.name].sum() == 4  # half of n_train is digit b
    # train, val and test images come from disjoint pools: a pair's test set is larger than zero and
    # the same seed gives the same tasks
    again = digit_pairs(images, labels, None, None, n_tasks=6, n_train=8, seed=1, scale=1.0)
    assert again.meta["pairs"] == pairs
    assert digit_pairs(images, labels, None, None, n_tasks=6, n_train=8, seed=2, scale=1.0).meta["pairs"] != pairs


def test_digit_pairs_bad_settings():
    images, labels = coded_digits(n_per_class=5)
    with pytest.raises(ConfigError, match="tasks=46"):
        digit_pairs(images, labels, None, None, n_tasks=46)
    with pytest.raises(ConfigError, match="even number"):
        digit_pairs(images, labels, None, None, n_train=7)
    with pytest.raises(ConfigError, match="lower n_train"):
        digit_pairs(images, labels, None, None, n_train=40)


def test_digit_pairs_from_idx_files(tmp_path):
    images, labels = coded_digits(n_per_class=20, size=6)
    test_images, test_labels = coded_digits(n_per_class=7, size=6)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels.astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test_labels.astype(np.uint8))
    entry = get_dataset("digit_pairs")
    data = entry.fn(entry.config(dir=str(tmp_path), tasks=3, n_train=10))
    assert data.input_shapes == {t.name: (1, 6, 6) for t in data.tasks}
    assert all(data.test.size(t.name) == 14 for t in data.tasks)  # all test-file examples of the two digits
    assert all(data.train.size(t.name) == 10 for t in data.tasks)


def test_parallel_cannot_fit_two_patterns_but_permuted_can():
    cfg = PatternsConfig(n=16, width=16, epochs=250, lr=0.02)
    par, floor, _, _ = fit_patterns("parallel", cfg, seed=0)
    perm, floor2, _, curve = fit_patterns("permuted", cfg, seed=0)
    assert floor == floor2 > 0.1
    assert par >= floor - 1e-4  # one function for both tasks: never below the floor
    assert perm < 0.1 * floor  # two orderings of the same layers: both patterns fitted
    assert curve[-1] < curve[0]


def test_best_threshold_error_is_the_lowest_error_of_any_threshold():
    y = np.array([0, 0, 1, 0, 1, 1, np.nan])
    s = np.array([-3.0, -2.0, 1.0, 1.5, 2.0, 3.0, 9.0])  # one negative above one positive; the NaN is skipped
    assert best_threshold_error(s, y) == pytest.approx(1 / 6)
    assert np.mean((s[:6] > 0) != y[:6]) == pytest.approx(1 / 6)  # threshold 0 is one of the best here
    assert best_threshold_error(s + 10, y) == pytest.approx(1 / 6)  # shifting every score moves the fixed
    assert np.mean((s[:6] + 10 > 0) != y[:6]) == pytest.approx(0.5)  # threshold's error, not the best one
    assert best_threshold_error(-s, y) == pytest.approx(0.5)  # reversed ranking: predict all of one class
    assert best_threshold_error(np.zeros(4), np.array([0, 1, 0, 1.0])) == 0.5  # ties are never split
    assert best_threshold_error(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 1.0])) == 0.0
    rng = np.random.default_rng(0)  # brute force over every threshold
    for _ in range(20):
        s, y = rng.normal(size=15).round(1), rng.integers(0, 2, 15).astype(float)
        brute = min(np.mean((s > c) != y) for c in np.concatenate([[-np.inf], s]))
        assert best_threshold_error(s, y) == pytest.approx(brute)
    assert np.isnan(best_threshold_error(np.zeros(2), np.full(2, np.nan)))


def test_paired_counts_and_signs():
    t = paired([0.1, 0.2, 0.1, 0.3, 0.2], [0.2, 0.3, 0.3, 0.4, 0.25])
    assert t["lower_in"] == 5 and t["mean_diff"] == pytest.approx(-0.11)
    assert 0 < t["t_p"] < 0.05 and t["wilcoxon_p"] == pytest.approx(0.0625)
    same = paired([0.1, 0.2], [0.1, 0.2])
    assert same["lower_in"] == 0 and same["t_p"] == same["wilcoxon_p"] == 1.0  # identical: no evidence
    shifted = paired([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    assert shifted["t_p"] == 0.0 and shifted["lower_in"] == 3
    assert np.isnan(paired([0.1], [0.2])["t_p"])


def test_digits_experiment_small(tmp_path, capsys):
    cfg = parse_experiment(OrderingsConfig, ["seeds=0,1", "epochs=2", "data.tasks=2", "data.n_train=10",
                                             "data.max_eval=20", "width=8"], "soft-order-digits")
    result = soft_order_digits(cfg, tmp_path)
    assert set(result.runs) == {"soft", "parallel", "permuted", "single_task"}
    records = read_results(tmp_path)
    errors = [r for r in records if r[2:5] == ("mean", "test", "error")]
    assert len(errors) == 4 * 2
    for label, seed, *_, error in errors:  # 1 - the run's mean test accuracy
        run = result.runs[label][seed]
        assert error == pytest.approx(1 - run.summary["mean"]["test"]["accuracy"])
    best = {(r[0], r[1]): r[5] for r in records if r[2:5] == ("mean", "test", "best_threshold_error")}
    assert set(best) == {(label, seed) for label in result.runs for seed in (0, 1)}
    assert all(best[r[0], r[1]] <= r[5] + 1e-9 for r in errors)  # the best threshold does at least as well
    distances = {(r[0], r[1]) for r in records if r[4] == "ordering_distance"}
    assert distances == {(label, seed) for label in ("soft", "parallel", "permuted") for seed in (0, 1)}
    tests = json.loads((tmp_path / "summary.json").read_text())["soft_vs"]
    assert set(tests) == {"parallel", "permuted", "single_task"}
    assert tests["parallel"] == paired(result.values("soft", "error", "mean"), result.values("parallel", "error", "mean"))
    for label in ("soft", "parallel", "permuted"):
        assert (tmp_path / label / "seed0" / "mixing.png").exists()
        assert (tmp_path / label / "seed1" / "mixing.csv").exists()
    assert result.runs["soft"][0].model.bank.weight.shape == (4, 8, 8)  # width=8 reached every contender
    assert result.runs["single_task"][0].spec.method_cfg.widths == (8,) * 5
    out = capsys.readouterr().out
    assert "ordering distance" in out and "Wilcoxon p" in out


@pytest.mark.parametrize("arg,match", [("width=0", "width=0: must be >= 1"), ("dropout=1", "dropout=1.0: must be in"),
                                       ("seeds=", "seeds=: need .*at least 1 value"), ("depth=two", "expected an integer")])
def test_experiment_keys_are_checked_when_parsed(arg, match):
    with pytest.raises(ConfigError, match=match):
        parse_experiment(OrderingsConfig, [arg], "soft-order-digits")


@pytest.mark.parametrize("experiment,data_name,patience,extra", [
    (soft_order_digits, "digit_pairs", 50, ["data.tasks=2"]), (soft_order_tables, "sklearn_tables", 20, [])])
def test_recipes_pin_every_training_and_shape_key(monkeypatch, tmp_path, experiment, data_name, patience, extra):
    """The recipes' runs do not follow the methods' own defaults (soft_order's width, depth, dropout and
    training defaults are another data set's tuned recipe): every contender resolves to the recipe's keys."""
    import manytask.experiments.soft_order as so
    from manytask.experiments.runner import contender_overrides
    from manytask.runs import method_training, resolve

    def resolve_only(name, data, contenders, cfg, out, defaults=None, **kw):
        per = contender_overrides({**defaults, **cfg.overrides}, contenders, data)
        raise StopIteration({c.label: resolve(data, c.method, per[c.label]) for c in contenders})

    monkeypatch.setattr(so, "compare", resolve_only)
    with pytest.raises(StopIteration) as stop:
        experiment(parse_experiment(OrderingsConfig, extra, "soft-order"), tmp_path)
    specs = stop.value.args[0]
    assert set(specs) == {"soft", "parallel", "permuted", "single_task"}
    assert method_training("soft_order").weight_decay != 0  # the method's own default differs from the recipe's
    for label, spec in specs.items():
        assert spec.data == data_name
        t = spec.train
        assert (t.epochs, t.patience, t.batch_size, t.lr, t.weight_decay) == (150, patience, 16, 0.003, 0.0), label
        m = spec.method_cfg
        if label == "single_task":
            assert (m.widths, m.dropout) == ((64,) * 5, 0.2)
        else:
            assert (m.width, m.depth, m.dropout, m.preserve_scale, m.ordering) == (64, 4, 0.2, True, label)
    assert specs["soft"].method_cfg.scores_lr == 0.03


def test_tables_experiment_small(tmp_path):
    result = soft_order_tables(parse_experiment(OrderingsConfig, ["seeds=0", "epochs=2"], "soft-order-tables"), tmp_path)
    assert [t.name for t in result.data.tasks] == ["wine", "breast_cancer", "iris"]
    assert result.data.input_shapes == {"wine": (13,), "breast_cancer": (30,), "iris": (4,)}
    assert "Wilcoxon p" in (tmp_path / "table.txt").read_text()


def test_patterns_experiment_small(tmp_path):
    result = soft_order_patterns(parse_experiment(PatternsConfig, ["seeds=0", "epochs=20", "n=8"]), tmp_path)
    assert result.summary["config"]["n"] == 8 and len(result.values("permuted", "mse", "mean", "train")) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["n"] == 8
    assert (tmp_path / "loss.png").exists() and (tmp_path / "soft" / "mixing.csv").exists()
    with pytest.raises(ConfigError, match="unknown"):
        parse_experiment(PatternsConfig, ["width_x=3"], "soft-order-patterns")


@pytest.mark.slow
def test_soft_ordering_beats_parallel_on_digit_pairs(tmp_path):
    """The embedded 8x8 digits with the literal equation (preserve_scale=false), as before the fix."""
    result = soft_order_digits(parse_experiment(OrderingsConfig, ["preserve_scale=false"]), tmp_path)
    soft, par = np.mean(result.values("soft", "error", "mean")), np.mean(result.values("parallel", "error", "mean"))
    assert soft < par, f"soft {soft:.4f} vs parallel {par:.4f}"
    assert np.mean(result.values("soft", "ordering_distance", "mean", "train")) > 0.0
    assert len(result.runs["soft"]) == 5


@pytest.mark.slow
def test_soft_ordering_ties_parallel_on_digit_pairs_with_the_recipe(tmp_path):
    """The embedded 8x8 digits, the recipe as it is (preserve_scale=true), seeds 20-29 (the confirming seeds
    of docs/soft_order.md): soft ordering's mean test error is at most 1.10 times parallel ordering's, and
    so is its error at the best threshold per task (the ranking is as good as parallel ordering's)."""
    result = soft_order_digits(parse_experiment(OrderingsConfig, ["seeds=" + ",".join(map(str, range(20, 30)))]),
                               tmp_path)
    for metric in ("error", "best_threshold_error"):
        soft, par = np.mean(result.values("soft", metric, "mean")), np.mean(result.values("parallel", metric, "mean"))
        assert soft <= 1.10 * par, f"{metric}: soft {soft:.4f} vs parallel {par:.4f}"


@pytest.mark.slow
def test_soft_ordering_does_not_collapse_on_28x28_digits(tmp_path):
    """28x28 digits from held-out source images (manytask.data.heldout, generator seed 2, the first
    confirming folder of docs/soft_order.md), the recipe as it is, seeds 0-2: soft ordering's mean test
    error is at most 1.10 times parallel ordering's (the old recipe gave 0.50, chance level, against 0.38
    on generator seed 0), and no soft run sits at chance."""
    from manytask.data.heldout import write_digits_idx
    write_digits_idx(tmp_path / "digits28", seed=2)
    result = soft_order_digits(parse_experiment(OrderingsConfig, [f"data.dir={tmp_path / 'digits28'}", "seeds=0,1,2"]),
                               tmp_path)
    soft, par = result.values("soft", "error", "mean"), result.values("parallel", "error", "mean")
    assert np.mean(soft) <= 1.10 * np.mean(par), f"soft {np.mean(soft):.4f} vs parallel {np.mean(par):.4f}"
    assert max(soft) < 0.45
