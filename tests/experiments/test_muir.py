"""manytask/experiments/muir.py: sharing statistics, a tiny muir-synthetic run end to end, the
cross-modal data set, and (slow) the acceptance figures of issue 6."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from manytask.config import ConfigError
from manytask.experiments.muir import least_squares, smiles_tokens, subset_shares, synthetic, write_sharing
from manytask.registry import get_dataset, get_experiment


def test_subset_shares_count_exact_user_sets():
    sharing = {0: ["a"], 1: ["a", "b"], 2: ["b", "a"], 3: ["c"], 7: ["a", "b", "c"]}
    shares = subset_shares(sharing, ["a", "b", "c"])
    assert shares == {"a": 0.2, "a+b": 0.4, "c": 0.2, "a+b+c": 0.2}
    assert math.isclose(sum(shares.values()), 1.0)


def test_write_sharing_files(tmp_path):
    history = [{"generation": 0, "step": 0, "modules": 3, "changed": 0, "sharing": {0: ["a"], 1: ["b"], 2: ["c"]}},
               {"generation": 1, "step": 10, "modules": 2, "changed": 1, "sharing": {0: ["a", "b"], 2: ["c"]}}]
    write_sharing(history, ["a", "b", "c"], tmp_path, "t")
    rows = list(csv.DictReader(open(tmp_path / "sharing.csv")))
    last = {r["subset"]: float(r["share"]) for r in rows if r["generation"] == "1"}
    assert last == {"a": 0.0, "b": 0.0, "c": 0.5, "a+b": 0.5}
    assert (tmp_path / "modules.png").stat().st_size > 0 and (tmp_path / "sharing.png").stat().st_size > 0


def test_tiny_synthetic_run_writes_its_table(tmp_path):
    out = tmp_path / "syn"
    summary = synthetic(["seeds=0", "settings=clean", "generations=3", "final=1", "steps_per_generation=20",
                         "data.tasks=6", "data.groups=2", "data.dim=5"], out)
    got = summary["clean"]
    assert set(got) == {"single-task", "no-sharing", "oracle", "muir"}
    assert all(len(v["rmse"]) == 1 and v["rmse"][0] > 0 for v in got.values())
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["contender"] for r in rows] == ["single-task", "no-sharing", "oracle", "muir"]
    run = json.loads((out / "clean" / "muir" / "seed0" / "results.json").read_text())
    assert run["steps"] == 80 and math.isclose(run["rmse"], got["muir"]["rmse"][0])
    oracle = json.loads((out / "clean" / "oracle" / "seed0" / "results.json").read_text())
    assert sorted(map(sorted, oracle["final_sharing"].values())) == [["t00", "t01", "t02"], ["t03", "t04", "t05"]]
    assert (out / "clean" / "muir" / "seed0" / "sharing.csv").exists()
    with pytest.raises(ConfigError, match="unknown"):
        synthetic(["contenders=muir,bogus", "generations=1", "final=1"], tmp_path / "bad")


def test_single_task_is_minimum_norm_least_squares():
    """With fewer points than dimensions the per-task solution interpolates the training points and has no
    component outside their span (the pseudo-inverse solution)."""
    data = get_dataset("grouped_regression").fn(get_dataset("grouped_regression").config(seed=3))
    tables, _ = least_squares(data)
    assert all(tables["train"][t.name]["mse"] < 1e-10 for t in data.tasks)  # 10 points, 20 dims: exact fit
    t = data.tasks[0]
    x, y = t.select(data.train.inputs).double().numpy(), data.train.labels[t.name].double().numpy()
    xt, yt = t.select(data.test.inputs).double().numpy(), data.test.labels[t.name].double().numpy()
    w = np.linalg.pinv(x) @ y
    assert math.isclose(tables["test"][t.name]["mse"], float(np.mean((xt @ w - yt) ** 2)), rel_tol=1e-4)


def test_smiles_tokens_left_pad_and_unknowns():
    t = smiles_tokens(["CCO", "C#N", ""], {"C": 1, "O": 2, "N": 3}, 4)
    assert t.tolist() == [[0, 1, 1, 2], [0, 1, 4, 3], [0, 0, 0, 0]]


@pytest.mark.slow
def test_crossmodal_data_and_run(tmp_path):
    d = get_dataset("crossmodal").fn(get_dataset("crossmodal").config())
    assert d.input_shapes == {"digits": (1, 8, 8), "smiles": (80,), "tox21": (1024,)}
    assert [t.kind for t in d.tasks] == ["multiclass", "binary", "binary"]
    result = get_experiment("muir-crossmodal").fn(["epochs=1", "steps_per_generation=10"], tmp_path)
    run = result.runs["muir"][0]
    assert (run.dir / "sharing.csv").exists() and run.trainer.hooks.generation >= 1


def test_single_task_reference_matches_the_poster(tmp_path):
    """Issue 6: single-task about 1.4-1.5 (poster 1.35 clean, 1.49 noisy), mean over seeds 0, 1, 2; the
    least-squares reference takes milliseconds, so the full check runs in the default suite."""
    summary = synthetic(["contenders=single-task"], tmp_path)
    for setting, poster in (("clean", 1.35), ("noisy", 1.49)):
        mean = float(np.mean(summary[setting]["single-task"]["rmse"]))
        assert abs(mean - poster) < 0.1, (setting, mean)


@pytest.mark.slow
def test_synthetic_acceptance(tmp_path):
    """Issue 6: MUiR RMSE <= 0.05 clean and <= 0.42 noisy, mean over 3 seeds, at the poster's 1000 + 200
    generations (the experiment's defaults; 6 runs of 120,000 steps, 314-418 s wall each on one core).
    Measured: 0.000 clean, 0.411 noisy (docs/muir.md)."""
    summary = synthetic(["contenders=muir"], tmp_path)
    assert sum(summary["clean"]["muir"]["rmse"]) / 3 <= 0.05
    assert sum(summary["noisy"]["muir"]["rmse"]) / 3 <= 0.42
