"""`manytask compare DATA METHOD,METHOD`: end to end through manytask.cli.main on a small SMILES CSV."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from manytask.cli import main
from manytask.methods.hard_sharing import HardSharingConfig
from manytask.report import read_results


TINY = ["data.bits=64", "data.fractions=0.5,0.25,0.25", "epochs=2", "progress=false", "hard_sharing.widths=16", "stl.widths=16"]


def compare(tmp_path, *args):
    main(["compare", "moleculenet", *map(str, args), "--out", str(tmp_path / "runs")])
    (run,) = (tmp_path / "runs").iterdir()
    return run


def values(records, contender, metric, task="mean", split="test"):
    """{seed: value} of one contender's records."""
    return {r[1]: r[5] for r in records if r[0] == contender and r[4] == metric and r[2] == task and r[3] == split}


def test_compare_writes_tables_tests_and_figure(tmp_path, mols, capsys):
    run = compare(tmp_path, "hard_sharing,stl", f"data.path={mols}", "seeds=0,1", *TINY)
    assert {"results.csv", "table.txt", "summary.json", "compare.png", "hard_sharing", "stl"} == \
        {p.name for p in run.iterdir()}
    assert (run / "stl" / "seed1" / "model.safetensors").exists()
    assert (run / "results.csv").read_text().splitlines()[0] == "contender,seed,task,split,metric,value"
    assert (run / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_results(run)

    # the baseline (the first method) against itself: delta-m 0 on every seed, no difference
    assert values(records, "hard_sharing", "delta_m") == {0: 0.0, 1: 0.0}
    assert values(records, "hard_sharing", "mean_diff") == {-1: 0.0}
    assert values(records, "hard_sharing", "t_p") == {-1: 1.0}

    # stl against the baseline, recomputed from the per-task test AUCs in results.csv
    auc = {c: {t: values(records, c, "auc", t) for t in "AB"} for c in ("hard_sharing", "stl")}
    for seed in (0, 1):
        pairs = [(auc["stl"][t][seed], auc["hard_sharing"][t][seed]) for t in "AB"]
        terms = [(a - b) / b for a, b in pairs if not math.isnan(a) and not math.isnan(b) and b != 0]
        assert terms  # a task to compare on
        assert values(records, "stl", "delta_m")[seed] == pytest.approx(100 * np.mean(terms))
    mean_auc = {c: [np.nanmean([auc[c][t][seed] for t in "AB"]) for seed in (0, 1)] for c in auc}
    assert values(records, "stl", "mean_diff")[-1] == pytest.approx(np.mean(mean_auc["stl"]) - np.mean(mean_auc["hard_sharing"]))
    assert set(values(records, "stl", "wilcoxon_p")) == {-1}

    table = (run / "table.txt").read_text()
    assert "mean auc" in table and "against hard_sharing" in table and "hard_sharing (baseline)" in table
    assert table.strip() in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["experiment"] == "compare" and summary["baseline"] == "hard_sharing"
    assert summary["seeds"] == [0, 1] and summary["contenders"]["stl"]["overrides"]["widths"] == "16"
    assert summary["against_baseline"]["stl"]["delta_m"] == pytest.approx(
        [values(records, "stl", "delta_m")[s] for s in (0, 1)])


def test_baseline_key_picks_the_baseline(tmp_path, mols):
    run = compare(tmp_path, "hard_sharing,stl", f"data.path={mols}", "seeds=0", "baseline=stl", *TINY)
    records = read_results(run)
    assert values(records, "stl", "delta_m") == {0: 0.0}
    assert set(values(records, "hard_sharing", "delta_m")) == {0}
    assert json.loads((run / "summary.json").read_text())["baseline"] == "stl"


def test_metric_key_makes_prc_auc_what_compare_shows_and_tests(tmp_path, mols, capsys):
    run = compare(tmp_path, "hard_sharing,stl", f"data.path={mols}", "seeds=0", "metric=prc_auc", *TINY)
    records = read_results(run)
    prc = {c: [values(records, c, "prc_auc", t)[0] for t in "AB"] for c in ("hard_sharing", "stl")}
    pairs = [(a, b) for a, b in zip(prc["stl"], prc["hard_sharing"]) if not math.isnan(a) and not math.isnan(b)]
    assert pairs  # a task to compare on
    assert values(records, "stl", "delta_m")[0] == pytest.approx(100 * np.mean([(a - b) / b for a, b in pairs]))
    assert values(records, "stl", "mean_diff")[-1] == pytest.approx(np.nanmean(prc["stl"]) - np.nanmean(prc["hard_sharing"]))
    table = (run / "table.txt").read_text()
    covered = sum(not math.isnan(v) for v in prc["stl"])
    label = f"mean prc_auc over {covered} of 2 tasks"
    assert table.count(label) == 2 and f"against hard_sharing (test {label}, paired over seeds)" in table
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mean_test_label"] == label
    assert summary["contenders"]["stl"]["mean_test"] == pytest.approx([np.nanmean(prc["stl"])])


@pytest.mark.parametrize("methods, key, message", [
    ("hard_sharing,stl", "nosuchkey=1", "unknown key 'nosuchkey'"),
    ("hard_sharing,stl", "stl.widths=0", "widths"),
    ("hard_sharing,stl", "seeds=-1", "seeds"),
    ("hard_sharing,stl", "stl.metric=prc_auc", "metric differs between contenders (auto, prc_auc)"),
    ("hard_sharing,stl", "metric=mse", "metric=mse: the binary tasks of mols have no mse"),
    ("hard_sharing,stl", "baseline=icnn", "baseline=icnn"),
    ("hard_sharing,nosuchmethod", "epochs=2", "nosuchmethod"),
    ("stl,stl", "epochs=2", "named twice"),
    (",", "epochs=2", "no method to compare"),
])
def test_bad_key_is_one_line_exit_2_and_no_directory(tmp_path, mols, capsys, methods, key, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "moleculenet", methods, f"data.path={mols}", key, "--out", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("manytask: error:") and message in err[0]
    assert not (tmp_path / "runs").exists()


def write_table(path, rows=80, seed=0):
    """A numeric CSV: 4 features, two regression targets y, z that depend on them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    y, z = x @ [1.0, -0.5, 0.0, 0.2], x @ [0.0, 0.3, 1.0, -1.0]
    lines = ["a,b,c,d,y,z"] + [",".join(f"{v:.5f}" for v in (*r, a, b)) for r, a, b in zip(x, y, z)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compare_on_a_csv_table_with_recipes(tmp_path, capsys):
    """compare on data.path= (the table data set): LABEL.recipe= sets one contender's keys, recipe= every
    contender's, and a key on the command line overrides a recipe's."""
    table = write_table(tmp_path / "t.csv")
    stl_recipe, shared = tmp_path / "stl.json", tmp_path / "shared.json"
    stl_recipe.write_text(json.dumps({"method": "stl", "keys": {"widths": [8], "lr": 0.004, "dropout": 0.1}}))
    shared.write_text(json.dumps({"method": "hard_sharing", "keys": {"batch_size": 16, "lr": 0.002}}))
    main(["compare", "table", "hard_sharing,stl", f"data.path={table}", "data.target=y,z", "seeds=0", "epochs=2",
          "progress=false", "hard_sharing.widths=16", f"stl.recipe={stl_recipe}", f"recipe={shared}",
          "stl.dropout=0.3", "--out", str(tmp_path / "runs")])
    (run,) = (tmp_path / "runs").iterdir()
    config = {c: json.loads((run / c / "seed0" / "config.json").read_text()) for c in ("hard_sharing", "stl")}
    assert config["stl"]["method_cfg"]["widths"] == [8] and config["stl"]["method_cfg"]["dropout"] == 0.3
    assert config["stl"]["train"]["lr"] == 0.002  # recipe= comes after stl.recipe= on the command line
    assert config["stl"]["train"]["batch_size"] == 16 == config["hard_sharing"]["train"]["batch_size"]
    assert config["hard_sharing"]["train"]["lr"] == 0.002 and config["hard_sharing"]["method_cfg"]["widths"] == [16]
    assert config["hard_sharing"]["method_cfg"]["dropout"] == HardSharingConfig().dropout  # the stl recipe: stl only
    records = read_results(run)
    assert {r[2] for r in records if r[4] == "rmse"} == {"y", "z"}
    assert set(values(records, "stl", "mean_diff")) == {-1}
    assert "mean rmse" in (run / "table.txt").read_text()


def test_recipe_of_another_method_is_refused(tmp_path, mols, capsys):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"method": "stl", "keys": {"widths": [8]}}))
    with pytest.raises(SystemExit) as exit_info:
        compare(tmp_path, "hard_sharing,stl", f"data.path={mols}", f"hard_sharing.recipe={recipe}", *TINY)
    assert exit_info.value.code == 2
    assert "was tuned for stl, not hard_sharing" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
