"""A table's regression target: labels and metrics in the target's own units, the model learning the target
standardised with the training split's mean and std (Task.shift, Task.scale); saved runs keep both."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from manytask.cli import main as cli_main
from manytask.data import tabular
from manytask.data.base import random_split_indices
from manytask.runs import _load, evaluate_run
from manytask.train import predict_split


def diabetes_csv(path):
    """scikit-learn's diabetes table (442 rows, 10 features, target 25..346) as a CSV with a header."""
    import sklearn.datasets
    d = sklearn.datasets.load_diabetes()
    path.write_text(",".join(d.feature_names + ["target"]) + "\n"
                    + "".join(",".join(f"{v:.6g}" for v in (*row, y)) + "\n" for row, y in zip(d.data, d.target)))
    return d.target


def test_labels_keep_their_units_and_the_task_carries_the_training_mean_and_std():
    import sklearn.datasets
    target = sklearn.datasets.load_diabetes().target
    data = tabular.sklearn_table("diabetes")
    (task,) = data.tasks
    train, val, test = random_split_indices(len(target), (0.7, 0.15, 0.15), 0)
    for split, rows in zip(("train", "val", "test"), (train, val, test)):
        np.testing.assert_array_equal(data.split(split).labels["diabetes"].numpy(), target[rows].astype(np.float32))
    assert (task.shift, task.scale) == pytest.approx((target[train].mean(), target[train].std()), rel=1e-5)
    learned = task.model_target(data.train.labels["diabetes"])  # what the model is fit to
    assert abs(float(learned.mean())) < 1e-5 and float(learned.std(unbiased=False)) == pytest.approx(1, rel=1e-5)
    raw = tabular.sklearn_table("diabetes", tabular.SklearnTableConfig(standardize_target=False))
    assert (raw.tasks[0].shift, raw.tasks[0].scale) == (0.0, 1.0)
    torch.testing.assert_close(raw.train.labels["diabetes"], data.train.labels["diabetes"])


def test_sklearn_tables_keep_the_regression_scale():
    """Combining tables (one input and task each) keeps the regression task's shift and scale: without them
    its model would learn the target in its own units."""
    both = tabular.load_sklearn_tables(tabular.SklearnTablesConfig(names=("wine", "diabetes")))
    alone = tabular.sklearn_table("diabetes", tabular.SklearnTableConfig((0.6, 0.2, 0.2)))
    diabetes = next(t for t in both.tasks if t.name == "diabetes")
    assert (diabetes.shift, diabetes.scale) == (alone.tasks[0].shift, alone.tasks[0].scale) != (0.0, 1.0)


def test_a_target_without_standardisation_is_said_to_be_learned_as_it_is(tmp_path, caplog):
    diabetes_csv(tmp_path / "d.csv")
    with caplog.at_level("INFO", logger="manytask"):
        data = tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "d.csv"), target=("target",),
                                                        standardize_target=False))
    assert (data.tasks[0].shift, data.tasks[0].scale) == (0.0, 1.0)
    (said,) = [r.getMessage() for r in caplog.records if "units" in r.getMessage()]
    assert said == "d.csv: MSE and RMSE of target are in the target's own units; the model learns the target as it is"


def test_train_evaluate_and_predict_a_table_in_the_target_units(tmp_path, monkeypatch, capsys, caplog):
    """manytask train table ... on the diabetes CSV: the table and results.json give RMSE in the target's units
    (nrmse = RMSE / std beside it), config.json keeps the task's shift and scale, the run's model rebuilt from
    config.json alone predicts in the target's units, and evaluate recomputes the same tables."""
    target = diabetes_csv(tmp_path / "diabetes.csv")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO", logger="manytask"):
        cli_main(["train", "table", "hard_sharing", "data.path=diabetes.csv", "data.target=target", "epochs=30",
                  "progress=false", "widths=16", "--out", "runs"])
    said = [r.getMessage() for r in caplog.records if "own units" in r.getMessage()]
    (row,) = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("target ")]
    (run,) = (tmp_path / "runs").iterdir()
    results = json.loads((run / "results.json").read_text())
    test = results["splits"]["test"]["target"]
    assert row[1] == "rmse" and float(row[4]) == pytest.approx(test["rmse"], abs=1e-3)
    (card,) = json.loads((run / "config.json").read_text())["model"]["tasks"]
    train = random_split_indices(len(target), (0.8, 0.1, 0.1), 0)[0]
    assert (card["shift"], card["scale"]) == pytest.approx((target[train].mean(), target[train].std()), rel=1e-5)
    assert said == [f"diabetes.csv: MSE and RMSE of target are in the target's own units; the model learns the "
                    f"standardised target (training split target: mean {card['shift']:.4g}, std {card['scale']:.4g}); "
                    "nrmse is RMSE / std"]
    assert 40 < test["rmse"] < 80  # the target's std is about 77: a trained model, in the target's units
    assert test["nrmse"] == pytest.approx(test["rmse"] / card["scale"])
    assert results["splits"]["val"]["target"]["loss"] == pytest.approx(
        results["splits"]["val"]["target"]["nrmse"] ** 2, rel=1e-4)  # the loss: MSE of the standardised target

    _, data, tasks, model = _load(run, with_data=True)  # tasks from config.json, as predict rebuilds them
    preds = tasks[0].predict(predict_split(model, data.test, tasks)["target"]).numpy()
    labels = data.test.labels["target"].numpy()
    assert math.sqrt(np.mean((preds - labels) ** 2)) == pytest.approx(test["rmse"], rel=1e-5)
    assert 20 < preds.min() and preds.max() < 350  # values on the target's scale, not standardised ones
    tables, same = evaluate_run(run, echo=False)
    assert same is True and tables["test"]["target"]["rmse"] == test["rmse"]


def test_a_run_saved_without_shift_and_scale_still_loads(tmp_path, monkeypatch):
    """config.json of a run written before tasks had shift and scale: its tasks load with 0 and 1."""
    diabetes_csv(tmp_path / "diabetes.csv")
    monkeypatch.chdir(tmp_path)
    cli_main(["train", "table", "hard_sharing", "data.path=diabetes.csv", "data.target=target", "epochs=1",
              "progress=false", "widths=8", "--out", "runs"])
    (run,) = (tmp_path / "runs").iterdir()
    config = json.loads((run / "config.json").read_text())
    for t in config["model"]["tasks"]:
        del t["shift"], t["scale"]
    (run / "config.json").write_text(json.dumps(config))
    _, _, tasks, _ = _load(run, with_data=False)
    assert (tasks[0].shift, tasks[0].scale) == (0.0, 1.0)
    assert evaluate_run(run, echo=False)[1] is True  # the data, loaded again, gives the scale
