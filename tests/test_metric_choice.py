"""The primary metric key (metric=prc_auc ...), means that say how many tasks they cover, and one note per
split about undefined metrics: end to end through manytask.cli.main on a small SMILES CSV."""
from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from manytask.cli import main
from manytask.runs import evaluate_run, list_runs, load_run, resolve, train_run
from manytask.train import predict_split

from .data.test_moleculenet import SMILES

SMALL = ["epochs=2", "data.bits=64", "data.fractions=0.5,0.25,0.25", "widths=8"]


@pytest.fixture
def one_class(tmp_path) -> Path:
    """36 molecules (one of them not a molecule) with tasks A and B (both classes) and C (0 everywhere)."""
    path = tmp_path / "three.csv"
    path.write_text("smiles,A,B,C\n" + "".join(f"{s},{i % 2},{(i // 2) % 2},0\n" for i, s in enumerate(SMILES * 3)))
    return path


def cli(args, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "undefined for" in r.getMessage()]


def row(out: str, label: str) -> list[str]:
    """The cells of the printed table's row whose first cell is `label`."""
    (line,) = [ln for ln in out.splitlines() if ln.startswith(label + "  ")]
    return line[len(label):].split()


def test_prc_auc_is_the_primary_metric_end_to_end(tmp_path, one_class, capsys, caplog):
    caplog.set_level("WARNING", logger="manytask")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, out, err = cli(["train", "moleculenet", "hard_sharing", f"data.path={one_class}", *SMALL,
                                "metric=prc_auc", "--out", tmp_path / "runs"], capsys)
    assert status == 0, err
    assert not [w for w in caught if "class" in str(w.message)]  # no warning per task and evaluation
    assert notes(caplog) == [f"{s}: PRC-AUC undefined for 1 of 3 tasks (one class only): C" for s in ("train", "val", "test")]
    (run,) = (tmp_path / "runs").iterdir()
    results = json.loads((run / "results.json").read_text())

    # each task's PRC-AUC is scikit-learn's average precision of the saved model's test predictions
    from sklearn.metrics import average_precision_score
    spec, data, model = load_run(run)
    pred = predict_split(model, data.test, data.tasks)
    for t in data.tasks[:2]:
        y, p = data.test.labels[t.name].numpy(), t.predict(pred[t.name]).numpy()
        known = ~np.isnan(y)
        assert results["splits"]["test"][t.name]["prc_auc"] == pytest.approx(average_precision_score(y[known], p[known]))
    assert math.isnan(results["splits"]["test"]["C"]["prc_auc"])

    # the table, the progress lines, results.json and `manytask runs` show it, with the tasks the mean covers
    test = [results["splits"]["test"][t]["prc_auc"] for t in "AB"]
    assert row(out, "A")[0] == "prc_auc" and row(out, "mean over 2 of 3 tasks") == [
        "prc_auc", *(f"{results['mean'][s]['prc_auc']:.3f}" for s in ("train", "val", "test"))]
    assert results["mean"]["test"]["prc_auc"] == pytest.approx(np.mean(test))
    assert results["mean_tasks"]["test"]["prc_auc"] == 2 and results["mean_tasks"]["test"]["accuracy"] == 3
    assert [t["metric"] for t in results["tasks"]] == ["prc_auc"] * 3
    epochs = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == 2 and all("val_prc_auc" in ln for ln in epochs)
    status, out, _ = cli(["runs", tmp_path / "runs"], capsys)
    assert f"prc_auc {results['mean']['test']['prc_auc']:.3f} (2 of 3 tasks)" in out

    # evaluate shows the run's metric, or another one with metric=
    caplog.clear()
    status, out, _ = cli(["evaluate", run], capsys)
    assert status == 0 and "matches the saved results.json exactly" in out
    assert row(out, "mean over 2 of 3 tasks")[0] == "prc_auc" and len(notes(caplog)) == 3
    status, out, _ = cli(["evaluate", run, "metric=accuracy"], capsys)
    assert row(out, "mean over 3 of 3 tasks") == ["accuracy", *(f"{results['mean'][s]['accuracy']:.3f}"
                                                                 for s in ("train", "val", "test"))]


def test_runs_written_before_the_metric_key_still_load_and_evaluate(tmp_path, mols):
    spec = resolve("moleculenet", "hard_sharing", {"data.path": str(mols), "progress": "false", **dict(
        k.split("=") for k in SMALL)})
    result = train_run(spec, out=tmp_path / "runs", echo=False)
    old = tmp_path / "runs" / "old"
    shutil.copytree(result.dir, old)
    # as an older manytask wrote them: no metric key or task field, no prc_auc, no mean_tasks
    config = json.loads((old / "config.json").read_text())
    del config["train"]["metric"]
    for t in config["model"]["tasks"]:
        del t["metric"]
    (old / "config.json").write_text(json.dumps(config))
    results = json.loads((old / "results.json").read_text())
    del results["mean_tasks"]
    for t in results["tasks"]:
        del t["metric"]
    for table in results["splits"].values():
        for metrics in table.values():
            del metrics["prc_auc"]
    (old / "results.json").write_text(json.dumps(results))

    tables, same = evaluate_run(old, echo=False)
    assert same is True and "prc_auc" in tables["test"]["A"]
    listed = {Path(r["path"]).name: r["test"] for r in list_runs(tmp_path / "runs")}
    assert listed["old"] == listed[result.dir.name] == f"auc {results['mean']['test']['auc']:.3f}"
    results["splits"]["test"]["A"]["auc"] += 0.01  # a value that differs still shows
    (old / "results.json").write_text(json.dumps(results))
    assert evaluate_run(old, echo=False)[1] is False


@pytest.mark.parametrize("args, message", [
    (("table", "hard_sharing", "data.path=table.csv", "data.target=y", "metric=prc_auc"),
     "metric=prc_auc: the regression tasks of table have no prc_auc; use one of auto, rmse, mse"),
    (("moleculenet", "hard_sharing", "data.path=mols.csv", "metric=rmse"),
     "metric=rmse: the binary tasks of mols have no rmse; use one of auto, auc, prc_auc, accuracy"),
    (("moleculenet", "hard_sharing", "data.path=mols.csv", "metric=roc"), "metric=roc: choose one of auto, auc"),
])
def test_a_metric_the_tasks_lack_is_one_line_exit_2_and_nothing_written(tmp_path, mols, capsys, monkeypatch,
                                                                          args, message):
    rng = np.random.default_rng(0)
    (tmp_path / "table.csv").write_text("f1,f2,y\n" + "".join(f"{a:.3f},{b:.3f},{a + b:.3f}\n"
                                                              for a, b in rng.normal(size=(30, 2))))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, _, err = cli(["train", *args, "epochs=1"], capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("manytask: error")]
    assert status == 2 and len(errors) == 1 and errors[0].startswith(f"manytask: error: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_metric_key_offers_every_metric_a_task_can_have():
    from typing import get_args

    from manytask.config import field_types
    from manytask.tasks import METRICS
    from manytask.train import TrainConfig
    assert set(get_args(field_types(TrainConfig)["metric"])) == {"auto", *(m for ms in METRICS.values() for m in ms)}


def test_a_resumed_run_may_change_the_metric_and_nothing_else(tmp_path, mols):
    from manytask.config import ConfigError
    from manytask.runs import resume_run
    keys = {"data.path": str(mols), "progress": "false", **dict(k.split("=") for k in SMALL)}
    run = train_run(resolve("moleculenet", "hard_sharing", keys), out=tmp_path / "runs", echo=False).dir
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))  # stopped before its first epoch
    with pytest.raises(ConfigError, match=rf"lr=0.1 differs from the run's lr={resolve('moleculenet', 'hard_sharing', keys).train.lr}"):
        resume_run(run, "moleculenet", "hard_sharing", {"metric": "prc_auc", "lr": "0.1"}, echo=False)
    resumed = resume_run(run, "moleculenet", "hard_sharing", {"metric": "prc_auc"}, echo=False)
    results = json.loads((run / "results.json").read_text())
    assert resumed.spec.train.metric == "prc_auc" and [t["metric"] for t in results["tasks"]] == ["prc_auc"] * 2


@pytest.fixture
def scales(tmp_path) -> Path:
    """120 rows: two features and three regression targets of std about 1, 1000 and 0.01."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    y = np.stack([x[:, 0], 1000 * x[:, 1], 0.01 * (x[:, 0] - x[:, 1])], 1) + rng.normal(scale=[0.1, 100, 0.001], size=(120, 3))
    path = tmp_path / "scales.csv"
    path.write_text("a,b,small,big,tiny\n" + "".join(",".join(f"{v:.6g}" for v in r) + "\n" for r in np.hstack([x, y])))
    return path


def test_targets_of_different_scales_get_a_scale_free_mean(tmp_path, scales, capsys):
    """A mean RMSE over targets of different scales is the largest target's: the table adds the mean nrmse
    (each target's RMSE / its training std), metric=nrmse makes it the primary metric, and compare says so."""
    keys = [f"data.path={scales}", "data.target=small,big,tiny", "epochs=2", "widths=8"]
    out_dir = ["--out", tmp_path / "runs"]
    status, out, err = cli(["train", "table", "hard_sharing", *keys, *out_dir], capsys)
    assert status == 0, err
    means = {ln.split()[6]: ln.split()[7:] for ln in out.splitlines() if ln.startswith("mean over 3 of 3 tasks ")}
    assert list(means) == ["rmse", "nrmse"]
    rmse, nrmse = means["rmse"], means["nrmse"]
    run = json.loads(next((tmp_path / "runs").glob("*/results.json")).read_text())
    for split, value in zip(("train", "val", "test"), nrmse):
        per_task = [run["splits"][split][t]["nrmse"] for t in ("small", "big", "tiny")]
        assert float(value) == pytest.approx(np.mean(per_task), abs=6e-4)
        assert float(rmse[("train", "val", "test").index(split)]) > 100  # the 1000-std target dominates
    status, out, err = cli(["train", "table", "hard_sharing", *keys, "metric=nrmse", *out_dir], capsys)
    assert status == 0, err
    assert row(out, "big")[0] == "nrmse" and "rmse " not in out.replace("nrmse", "")
    one = cli(["train", "table", "hard_sharing", *keys[:1], "data.target=big", *keys[2:], *out_dir], capsys)[1]
    assert "nrmse" not in one  # one target: its RMSE is the mean, no second row
    status, out, err = cli(["compare", "table", "hard_sharing,stl", *keys, "seeds=0,1", "--out", tmp_path / "cmp"], capsys)
    assert status == 0, err
    assert "regression targets of different scales (training std" in out and "metric=nrmse" in out


@pytest.fixture
def mixed(tmp_path) -> Path:
    """120 rows: three features, a binary target and a regression target."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3))
    active = (x[:, 0] + 0.3 * rng.normal(size=120) > 0).astype(int)
    potency = 50 * x[:, 1] + rng.normal(scale=5, size=120)
    path = tmp_path / "mixed.csv"
    path.write_text("a,b,c,active,potency\n" + "".join(f"{r[0]:.5g},{r[1]:.5g},{r[2]:.5g},{k},{p:.5g}\n"
                                                      for r, k, p in zip(x, active, potency)))
    return path


def test_binary_and_regression_tasks_are_ranked_by_the_mean_loss(tmp_path, mixed, capsys):
    """Tasks with different primary metrics (auc and rmse) have no common mean metric: compare's mean difference
    and tune's objective are the mean loss over all tasks (lower is better), and both say why."""
    from manytask.metrics import ranking_metric, ranking_note
    from manytask.tasks import Task
    assert ranking_metric([Task("a", "binary"), Task("b", "binary")]) == "auc" and ranking_note([Task("a", "binary")]) is None
    assert ranking_metric([Task("a", "binary"), Task("r", "regression")]) == "loss"
    keys = [f"data.path={mixed}", "data.target=active,potency", "epochs=3", "widths=8", "progress=false"]
    status, out, err = cli(["compare", "table", "hard_sharing,stl", *keys, "seeds=0,1,2", "--out", tmp_path / "cmp"], capsys)
    assert status == 0, err
    assert "against hard_sharing (test mean loss over 2 of 2 tasks" in out and "regression targets of different" not in out
    assert "primary metrics differ (auc for 1, rmse for 1), so runs are ranked by the mean loss" in out
    summary = json.loads(next((tmp_path / "cmp").glob("*/summary.json")).read_text())["against_baseline"]["stl"]
    losses = {m: [json.loads(f.read_text())["mean"]["test"]["loss"]
                  for f in sorted((tmp_path / "cmp").glob(f"*/{m}/seed*/results.json"))] for m in ("hard_sharing", "stl")}
    lower = sum(s < h for s, h in zip(losses["stl"], losses["hard_sharing"]))  # 3 seeds: never half, so
    assert len(losses["stl"]) == 3 and summary["better_in"] == lower  # a count in the wrong direction differs
    status, out, err = cli(["tune", "table", "hard_sharing", *keys, "trials=2", "--out", tmp_path / "tune"], capsys)
    assert status == 0, err
    assert "tune: the tasks' primary metrics differ" in err
    best = json.loads((tmp_path / "tune" / "tune-table-hard_sharing" / "best.json").read_text())
    assert best["metric"] == "loss" and best["val"] > 0
