"""The evolving experiments (manytask/experiments/evolving.py): Fig. 1, Table 1 on digits and MNIST files."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from manytask.config import ConfigError
from manytask.data.images import write_idx
from manytask.registry import get_experiment
from manytask.weighting import Schedule


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_schedules_plot_and_csv(tmp_path):
    png = get_experiment("schedules").fn(["epochs=50", "t1=10", "sigma=5"], tmp_path)
    assert png.exists() and png.stat().st_size > 5000
    rows = read(tmp_path / "schedules.csv")
    assert {r["schedule"] for r in rows} == {"stairs_10", "lin_10", "lin", "exp_5"}
    for r in rows[::7]:
        name = {"stairs_10": "stairs", "lin_10": "lin_t1", "lin": "lin", "exp_5": "exp"}[r["schedule"]]
        lam_s = Schedule(name, 50, 10, 5).main(int(r["epoch"]))
        assert float(r["lambda_s"]) == pytest.approx(lam_s) and float(r["lambda_r"]) == pytest.approx(1 - lam_s)
    with pytest.raises(ConfigError, match="unknown keys"):
        get_experiment("schedules").fn(["tau=3"], tmp_path)


def test_evolving_digits_small_grid(tmp_path, capsys):
    res = get_experiment("evolving-digits").fn(
        ["l=30", "u=0,60", "nets=nn1,nn3", "schedules=exp", "seeds=0,1", "epochs=1", "batches=2"], tmp_path)
    runs = read(tmp_path / "runs.csv")
    # nn1 and nn3: 2 u x (baseline + exp) x 2 seeds each
    assert len(runs) == 8 + 8 == res["runs"]
    assert {int(r["u"]) for r in runs} == {0, 60} and res["n_train"] == 1078
    table = read(tmp_path / "table.csv")
    assert len(table) == 2 + 2
    for row in table:  # each difference is evolving - baseline of the same seed, from runs.csv
        err = {(r["schedule"], r["seed"]): float(r["test_error"]) for r in runs
               if r["net"] == row["net"] and r["u"] == row["u"]}
        deltas = [err[(row["schedule"], s)] - err[("baseline", s)] for s in ("0", "1")]
        assert json.loads(row["deltas"]) == pytest.approx(deltas)
        assert float(row["delta_mean"]) == pytest.approx(np.mean(deltas))
    text = (tmp_path / "tables.txt").read_text()
    assert "nn1 (50,), l = 30" in text and "nn3 (70, 60, 50), l = 30" in text and "exp_8" in text  # recipe paper
    assert (tmp_path / "delta_vs_u_nn1.png").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["run_overrides"]["epochs"] == "1" and summary["recipe"] == "paper"
    assert summary["run_overrides"]["activation"] == "sigmoid" and summary["run_overrides"]["momentum"] == "0"
    assert "evolving-digits: 16 runs" in capsys.readouterr().out


def test_evolving_digits_fast_recipe(tmp_path):
    get_experiment("evolving-digits").fn(["recipe=fast", "l=30", "u=0", "nets=nn1", "schedules=exp", "seeds=0",
                                          "epochs=1"], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recipe"] == "fast" and summary["run_overrides"]["activation"] == "relu"
    assert "exp_5" in (tmp_path / "tables.txt").read_text()


@pytest.mark.parametrize("bad,needle", [("nets=nn9", "unknown network"), ("recipe=adam", "recipe=adam: choose one of"),
                                        ("schedules=cosine", "unknown schedule"), ("schedule=exp", "set by the grid"), ("u=lots", "u=lots"),
                                        ("epoch=3", "unknown key"), ("l=5000", "exceed")])
def test_evolving_digits_bad_keys(tmp_path, bad, needle):
    with pytest.raises(ConfigError, match=needle):
        get_experiment("evolving-digits").fn(["epochs=1", "seeds=0", "nets=nn1", "schedules=exp", "u=0", bad], tmp_path)


def test_evolving_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "idx"
    d.mkdir()
    for stem, n in (("train", 120), ("t10k", 40)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60 + y[:, None, None] * 19).astype(np.uint8)  # brightness tells the class
        write_idx(d / f"{stem}-images-idx3-ubyte", x)
        write_idx(d / f"{stem}-labels-idx1-ubyte", y)
    res = get_experiment("evolving-mnist").fn(
        [f"data.dir={d}", "l=20", "u=0,all", "nets=nn1", "schedules=exp", "seeds=0", "epochs=2", "batch_size=50"],
        tmp_path / "out")
    runs = read(tmp_path / "out" / "runs.csv")
    assert res["n_train"] == 100  # 120 minus the 1/6 validation part
    assert {(r["u"], r["schedule"]) for r in runs} == {("0", "baseline"), ("0", "exp"), ("80", "baseline"), ("80", "exp")}
    assert "exp_40" in (tmp_path / "out" / "tables.txt").read_text()  # the paper's sigma by default


@pytest.mark.slow
def test_acceptance_evolving_digits_l100_all_unlabelled(tmp_path):
    """The issue's acceptance as the pre-registered test of docs/evolving.md: with l = 100 and every other
    training digit unlabelled, NN1 with the lin schedule (recipe paper, the default) lowers the test error
    against its paired baseline over 20 fresh seeds, paired t-test p < 0.025 (measured: -1.16 +- 1.12 points,
    p = 0.0002; about 12 minutes on one core)."""
    seeds = ",".join(str(s) for s in range(400, 420))
    get_experiment("evolving-digits").fn(["l=100", "u=all", "nets=nn1", "schedules=lin", f"seeds={seeds}"], tmp_path)
    (row,) = [r for r in read(tmp_path / "table.csv") if r["l"] == "100" and r["net"] == "nn1"]
    assert float(row["delta_mean"]) < 0 and float(row["p_paired"]) < 0.025, row
