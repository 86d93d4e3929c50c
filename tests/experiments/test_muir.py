"""manytask/experiments/muir.py: sharing statistics, a tiny muir-synthetic run end to end, typed keys
checked before anything is written, the cross-modal data set, and (slow) the acceptance figures."""
from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from manytask.cli import main
from manytask.config import ConfigError
from manytask.data.crossmodal import smiles_tokens
from manytask.data.synthetic import write_grouped_regression
from manytask.experiments.muir import (MuirCrossmodalConfig, MuirSyntheticConfig, least_squares, misplaced,
                                       muir_crossmodal, muir_synthetic, write_sharing)
from manytask.experiments.runner import parse_experiment
from manytask.registry import get_dataset


def synthetic(args: list[str], out):
    return muir_synthetic(parse_experiment(MuirSyntheticConfig, args, "muir-synthetic"), out)


def test_misplaced_tasks_are_the_minority_of_their_module():
    groups = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2}
    assert misplaced({0: ["a", "b", "c"], 1: ["d"], 2: ["e"]}, groups) == ["c"]
    assert misplaced({0: ["a", "b"], 1: ["c", "d"], 2: ["e"], 3: ["a"]}, groups) == []  # a split group is not misplaced
    assert misplaced({0: ["a", "c"], 1: ["b", "d", "e"]}, groups) == ["c", "d", "e"]  # ties: the lowest group number


def test_write_sharing_files(tmp_path):
    history = [{"generation": 0, "step": 0, "modules": 3, "changed": 0, "subsets": {"a": 1, "b": 1, "c": 1}},
               {"generation": 1, "step": 10, "modules": 2, "changed": 1, "subsets": {"a+b": 1, "c": 1}}]
    write_sharing(history, tmp_path, "t")
    rows = list(csv.DictReader(open(tmp_path / "sharing.csv")))
    last = {r["subset"]: float(r["share"]) for r in rows if r["generation"] == "1"}
    assert last == {"a": 0.0, "b": 0.0, "c": 0.5, "a+b": 0.5}
    assert (tmp_path / "modules.png").stat().st_size > 0 and (tmp_path / "sharing.png").stat().st_size > 0


def test_tiny_synthetic_run_writes_its_table(tmp_path):
    out = tmp_path / "syn"
    result = synthetic(["seeds=0", "settings=clean", "generations=3", "final=1", "steps_per_generation=20",
                        "data.tasks=6", "data.groups=2", "data.dim=5"], out)
    labels = ["clean/single-task", "clean/no-sharing", "clean/oracle", "clean/muir"]
    assert all(len(result.values(label, "rmse", "all")) == 1 and result.values(label, "rmse", "all")[0] > 0
               for label in labels)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["contender"] for r in rows if r["metric"] == "rmse_mean"] == labels
    assert {r["task"] for r in rows if r["contender"] == "clean/muir" and r["metric"] == "mse"} == \
        {"t00", "t01", "t02", "t03", "t04", "t05"}
    run = json.loads((out / "clean" / "muir" / "seed0" / "results.json").read_text())
    test_mse = [run["splits"]["test"][f"t0{i}"]["mse"] for i in range(6)]
    assert run["epochs"] == 80 and math.isclose(math.sqrt(np.mean(test_mse)), result.values("clean/muir", "rmse", "all")[0])
    oracle = json.loads((out / "clean" / "oracle" / "seed0" / "results.json").read_text())
    assert sorted(map(sorted, oracle["artifacts"]["sharing"].values())) == [["t00", "t01", "t02"], ["t03", "t04", "t05"]]
    assert result.values("clean/oracle", "misplaced", "all", "train") == [0]
    assert (out / "clean" / "muir" / "seed0" / "sharing.csv").exists()
    assert "clean" in (out / "table.txt").read_text() and json.loads((out / "summary.json").read_text())["final"] == 1


def test_own_keys_are_typed_and_checked_before_anything_is_written(tmp_path, capsys):
    for args, why in ((["generations=abc"], "generations=abc: expected an integer"),
                      (["contenders=muir,bogus"], "contenders=bogus: choose one of"),
                      (["settings=loud"], "settings=loud: choose one of"),
                      (["epochs=5"], "epochs: muir-synthetic trains full batch"),
                      (["generations=0", "final=0"], "generations \\+ final >= 1"),
                      (["generations=1", "bogus=1"], "unknown key 'bogus'")):  # a contender key, checked before training
        with pytest.raises(SystemExit) as stop:
            main(["run", "muir-synthetic", *args, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, args
        assert re.search(why, err), (args, err)
        assert not any(tmp_path.iterdir()), args


def test_single_task_is_minimum_norm_least_squares_on_all_training_points():
    """The reference fits each task on its training AND validation points (it chooses nothing, so nothing
    is held out for it): with 15 points in 20 dims it interpolates all 15 and has no component outside
    their span (the pseudo-inverse solution)."""
    data = get_dataset("grouped_regression").fn(get_dataset("grouped_regression").config(seed=3))
    tables, _ = least_squares(data)
    assert all(tables[split][t.name]["mse"] < 1e-10 for t in data.tasks for split in ("train", "val"))
    t = data.tasks[0]
    x = torch.cat([t.select(s.inputs) for s in (data.train, data.val)]).double().numpy()  # (15, 20)
    y = torch.cat([s.labels[t.name] for s in (data.train, data.val)]).double().numpy()
    xt, yt = t.select(data.test.inputs).double().numpy(), data.test.labels[t.name].double().numpy()
    w = np.linalg.pinv(x) @ y
    assert x.shape == (15, 20)
    assert math.isclose(tables["test"][t.name]["mse"], float(np.mean((xt @ w - yt) ** 2)), rel_tol=1e-4)


def test_oracle_is_skipped_in_one_line_without_groups(tmp_path, capsys):
    path = write_grouped_regression(tmp_path / "nogroups.npz", with_groups=False, tasks=6, groups=2, dim=5, seed=7)
    result = synthetic([f"data.path={path}", "contenders=single-task,oracle"], tmp_path / "out")
    lines = [line for line in capsys.readouterr().out.splitlines() if "oracle skipped" in line]
    assert lines == [f"[muir-synthetic] oracle skipped: {path} has no `groups` array (the true group of each task), "
                     "which the oracle alignment needs"]
    assert result.values("file/single-task", "rmse", "all") and not result.values("file/oracle", "rmse", "all")


def test_smiles_tokens_left_pad_and_unknowns():
    t = smiles_tokens(["CCO", "C#N", ""], {"C": 1, "O": 2, "N": 3}, 4)
    assert t.tolist() == [[0, 1, 1, 2], [0, 1, 4, 3], [0, 0, 0, 0]]


def test_crossmodal_assays_must_differ():
    entry = get_dataset("crossmodal")
    with pytest.raises(ConfigError, match="must differ"):
        entry.fn(entry.config(lstm_assay="SR-MMP", mlp_assay="SR-MMP"))


@pytest.mark.slow
def test_crossmodal_data_and_run(tmp_path):
    d = get_dataset("crossmodal").fn(get_dataset("crossmodal").config())
    assert d.input_shapes == {"digits": (1, 8, 8), "smiles": (80,), "tox21": (1024,)}
    assert [t.kind for t in d.tasks] == ["multiclass", "binary", "binary"]
    cfg = parse_experiment(MuirCrossmodalConfig, ["epochs=1", "steps_per_generation=10"], "muir-crossmodal")
    result = muir_crossmodal(cfg, tmp_path)
    run = result.runs["muir"][0]
    assert (run.dir / "sharing.csv").exists() and run.trainer.hooks.generation >= 1


def test_single_task_reference_figures(tmp_path):
    """The single-task reference on all 15 points per task, mean over seeds 0, 1, 2: 0.972 clean, 1.162
    noisy (docs/muir.md); the least-squares reference takes milliseconds, so the check runs in the default
    suite."""
    result = synthetic(["contenders=single-task"], tmp_path)
    for setting, measured in (("clean", 0.972), ("noisy", 1.162)):
        mean = float(np.mean(result.values(f"{setting}/single-task", "rmse", "all")))
        assert abs(mean - measured) < 5e-4, (setting, mean)


@pytest.mark.slow
def test_synthetic_acceptance(tmp_path):
    """MUiR RMSE <= 0.05 clean and <= 0.42 noisy, mean over 3 seeds, at the poster's 1000 + 200
    generations (the experiment's defaults; 6 runs of 120,000 full-batch steps). Measured: 0.000 clean
    (before the task moves), 0.395 noisy (docs/muir.md)."""
    result = synthetic(["contenders=muir"], tmp_path)
    assert sum(result.values("clean/muir", "rmse", "all")) / 3 <= 0.05
    assert sum(result.values("noisy/muir", "rmse", "all")) / 3 <= 0.42


HELDOUT_SEEDS = tuple(range(300, 310))  # fresh draws, never used while the recipe was chosen (docs/muir.md)
HELDOUT_SCHEDULE = ["generations=200", "final=20"]


@pytest.mark.slow
def test_heldout_draws_no_task_left_in_a_wrong_group(tmp_path):
    """The pre-registered third check of docs/muir.md ("Third check"): 10 fresh draws, data seeds 300-309,
    clean and noisy (0.31), at 200 + 20 generations: no MUiR run leaves a task in a wrong group, and the noisy
    RMSE averages <= 0.42 (20 runs of 22,000 full-batch steps). Last measured: noisy 0.410, seed 301 leaves
    t28 in a wrong group, so this test fails."""
    result = synthetic([f"seeds={','.join(map(str, HELDOUT_SEEDS))}", "contenders=muir", *HELDOUT_SCHEDULE], tmp_path)
    for setting in ("clean", "noisy"):
        assert result.values(f"{setting}/muir", "misplaced", "all", "train") == [0] * len(HELDOUT_SEEDS), setting
    assert float(np.mean(result.values("noisy/muir", "rmse", "all"))) <= 0.42
