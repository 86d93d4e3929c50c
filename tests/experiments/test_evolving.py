"""The evolving experiments (manytask/experiments/evolving.py): Fig. 1, Table 1 on digits and MNIST files."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from manytask.config import ConfigError
from manytask.data.images import write_idx
from manytask.experiments.runner import parse_experiment
from manytask.registry import get_experiment
from manytask.report import read_results
from manytask.weighting import Schedule


def run(name, args, out):
    """What `manytask run NAME args` does once the run directory exists: parse the keys, then run."""
    entry = get_experiment(name)
    return entry.fn(parse_experiment(entry.config, args, name), out)


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_schedules_plot_and_csv(tmp_path):
    res = run("schedules", ["epochs=50", "t1=10", "sigma=5"], tmp_path)
    png = tmp_path / "schedules.png"
    assert png.exists() and png.stat().st_size > 5000
    rows = read(tmp_path / "schedules.csv")
    assert {r["schedule"] for r in rows} == {"stairs_10", "lin_10", "lin", "exp_5"}
    names = {"stairs_10": "stairs", "lin_10": "lin_t1", "lin": "lin", "exp_5": "exp"}
    for r in rows[::7]:
        lam_s = Schedule(names[r["schedule"]], 50, 10, 5).main(int(r["epoch"]))
        assert float(r["lambda_s"]) == pytest.approx(lam_s) and float(r["lambda_r"]) == pytest.approx(1 - lam_s)
    # results.csv: per schedule lambda_s at the first and last epoch, and where it first reaches 0.5
    values = {(c, m): v for c, _, _, _, m, v in read_results(tmp_path)}
    assert len(values) == 12
    for label, name in names.items():
        s = Schedule(name, 50, 10, 5)
        assert values[(label, "lambda_s_first")] == s.main(0) and values[(label, "lambda_s_last")] == s.main(49)
        half = values[(label, "half_weight_epoch")]
        assert s.main(half) >= 0.5 and (half == 0 or s.main(half - 1) < 0.5)
    assert res.records == read_results(tmp_path) and "stairs_10" in (tmp_path / "table.txt").read_text()


@pytest.mark.parametrize("bad,needle", [("tau=3", "unknown key 'tau'"), ("sigma=0", "sigma=0"), ("t1=-1", "t1=-1"),
                                        ("epochs=0", "epochs=0")])
def test_schedules_bad_keys(tmp_path, bad, needle):
    with pytest.raises(ConfigError, match=needle):
        run("schedules", [bad], tmp_path)
    assert not any(tmp_path.iterdir())


def test_evolving_digits_small_grid(tmp_path, capsys):
    res = run("evolving-digits", ["l=30", "u=0,60", "nets=nn1,nn3", "schedules=exp", "seeds=0,1", "epochs=1",
                                  "batches=2"], tmp_path)
    records = read_results(tmp_path)
    assert records == res.records
    test_error = {(c, s): v for c, s, _, split, m, v in records if split == "test" and m == "error"}
    # nn1 and nn3: 2 u x (baseline + exp) x 2 seeds each
    assert len(test_error) == 8 + 8 == res.summary["runs"]
    assert {c.split()[2] for c, _ in test_error} == {"u=0", "u=60"} and res.summary["n_train"] == 1078
    per_cell = {(c, m): v for c, s, _, _, m, v in records if s == -1}
    assert {c for c, _ in per_cell} == {f"{net} l=30 u={u} exp" for net in ("nn1", "nn3") for u in (0, 60)}
    for contender in {c for c, _ in per_cell}:  # each difference is evolving - baseline of the same seed
        baseline = contender.replace(" exp", " baseline")
        deltas = [test_error[(contender, s)] - test_error[(baseline, s)] for s in (0, 1)]
        assert res.values(contender, "delta_error") == pytest.approx(deltas)
        assert per_cell[(contender, "delta_error_mean")] == pytest.approx(np.mean(deltas))
        assert per_cell[(contender, "delta_error_std")] == pytest.approx(np.std(deltas, ddof=1))
        baseline_mean = np.mean([test_error[(baseline, s)] for s in (0, 1)])
        assert per_cell[(contender, "baseline_error_mean")] == pytest.approx(baseline_mean)
        assert 0 <= per_cell[(contender, "p_paired")] <= 1
    text = (tmp_path / "table.txt").read_text()
    assert "nn1 (50,), l = 30" in text and "nn3 (70, 60, 50), l = 30" in text and "exp_8" in text  # recipe paper
    assert (tmp_path / "delta_vs_u_nn1.png").exists() and (tmp_path / "delta_vs_u_nn3.png").exists()
    summary = res.summary
    assert summary["run_overrides"]["epochs"] == "1" and summary["grid"]["recipe"] == "paper"
    assert summary["run_overrides"]["activation"] == "sigmoid" and summary["run_overrides"]["momentum"] == "0"
    assert "nn3 (70, 60, 50), l = 30" in capsys.readouterr().out


def test_evolving_digits_fast_recipe(tmp_path):
    res = run("evolving-digits", ["recipe=fast", "l=30", "u=0", "nets=nn1", "schedules=exp", "seeds=0", "epochs=1"],
              tmp_path)
    assert res.summary["grid"]["recipe"] == "fast" and res.summary["run_overrides"]["activation"] == "relu"
    assert "exp_5" in (tmp_path / "table.txt").read_text()


@pytest.mark.parametrize("bad,needle", [("nets=nn9", "nets=nn9: choose one of"),
                                        ("recipe=adam", "recipe=adam: choose one of"),
                                        ("schedules=cosine", "schedules=cosine: choose one of"),
                                        ("schedule=exp", "set by the grid"), ("method.widths=5", "set by the grid"),
                                        ("u=lots", "u=lots"), ("seeds=", "seeds=: need .*at least 1 value"),
                                        ("epoch=3", "unknown key"), ("l=5000", "exceed")])
def test_evolving_digits_bad_keys(tmp_path, bad, needle):
    with pytest.raises(ConfigError, match=needle):
        run("evolving-digits", ["epochs=1", "seeds=0", "nets=nn1", "schedules=exp", "u=0", bad], tmp_path)
    assert not any(tmp_path.iterdir()), "a bad key must fail before anything is written"


def test_evolving_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "idx"
    d.mkdir()
    for stem, n in (("train", 120), ("t10k", 40)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60 + y[:, None, None] * 19).astype(np.uint8)  # brightness tells the class
        write_idx(d / f"{stem}-images-idx3-ubyte", x)
        write_idx(d / f"{stem}-labels-idx1-ubyte", y)
    res = run("evolving-mnist", [f"data.dir={d}", "l=20", "u=0,all", "nets=nn1", "schedules=exp", "seeds=0", "epochs=2",
                                 "batch_size=50"], tmp_path / "out")
    assert res.summary["n_train"] == 100  # 120 minus the 1/6 validation part
    assert {c for c, *_ in res.records} == {"nn1 l=20 u=0 baseline", "nn1 l=20 u=0 exp", "nn1 l=20 u=all baseline",
                                            "nn1 l=20 u=all exp"}
    text = (tmp_path / "out" / "table.txt").read_text()
    assert "exp_40" in text and "\n80 " in text  # the paper's sigma by default; u = all = 100 - 20


@pytest.mark.slow
def test_acceptance_evolving_digits_l100_all_unlabelled(tmp_path):
    """The pre-registered test of docs/evolving.md: with l = 100 and every other training digit unlabelled,
    NN1 with the lin schedule (recipe paper, the default) lowers the test error against its paired baseline
    over 20 fresh seeds, paired t-test p < 0.025 (measured: -1.16 +- 1.12 points, p = 0.0002; about 12
    minutes on one core)."""
    seeds = ",".join(str(s) for s in range(400, 420))
    res = run("evolving-digits", ["l=100", "u=all", "nets=nn1", "schedules=lin", f"seeds={seeds}"], tmp_path)
    cell = {m: v for c, s, _, _, m, v in read_results(tmp_path) if c == "nn1 l=100 u=all lin" and s == -1}
    assert cell["delta_error_mean"] < 0 and cell["p_paired"] < 0.025, cell
    assert len(res.values("nn1 l=100 u=all lin", "delta_error")) == 20
