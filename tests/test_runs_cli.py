"""End to end through the `manytask` console script: train, evaluate, predict, run, list, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from manytask.config import ConfigError
from manytask.report import read_results
from manytask.runs import evaluate_run, load_run, new_run_dir


TINY = ["epochs=3", "progress=false", "data.bits=128", "data.fractions=0.5,0.25,0.25"]


def cli(*args, cwd, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "manytask.cli", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def only_run(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if p.is_dir()]
    return d


def test_train_evaluate_predict(tmp_path, mols):
    r = cli("train", "moleculenet", "hard_sharing", f"data.path={mols}", "widths=16", *TINY, "--out", "runs", cwd=tmp_path)
    assert "mean over 2 of 2 tasks" in r.stdout and "samples/s" in r.stdout
    run = only_run(tmp_path / "runs")
    assert {p.name for p in run.iterdir()} >= {"run.json", "config.json", "metrics.jsonl", "results.json", "results.csv",
                                               "model.safetensors"}
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "val_loss" in json.loads(lines[0])
    ev = cli("evaluate", run, cwd=tmp_path)
    assert "matches the saved results.json exactly" in ev.stdout
    (tmp_path / "more.smi").write_text("CCCO\n# comment\nC1CC(\n")
    pr = cli("predict", run, "CCO", "not-a-molecule", "--file", "more.smi", cwd=tmp_path)
    out = pr.stdout.splitlines()
    assert out[0] == "smiles,valid,A,B" and len(out) == 5
    assert out[1].startswith("CCO,true,") and len(out[1].split(",")) == 4
    assert out[2] == "not-a-molecule,false,," and out[4] == "C1CC(,false,," and out[3].startswith("CCCO,true,")


def test_run_experiment_prints_side_by_side_table(tmp_path):
    r = cli("run", "demo", "epochs=1", "progress=false", "data.bits=64", "hard_sharing.widths=16",
            "stl.widths=4", "icnn.widths=8,4", "--out", "runs", cwd=tmp_path)
    assert "hard_sharing" in r.stdout and "stl" in r.stdout and "mean auc" in r.stdout
    exp = only_run(tmp_path / "runs")
    assert {"results.csv", "table.txt", "summary.json"} <= {p.name for p in exp.iterdir()}
    assert (exp / "hard_sharing" / "seed0" / "model.safetensors").exists()
    assert (exp / "results.csv").read_text().splitlines()[0] == "contender,seed,task,split,metric,value"
    assert {row[0] for row in read_results(exp)} == {"hard_sharing", "stl", "icnn"}
    assert json.loads((exp / "summary.json").read_text())["experiment"] == "demo"


def test_list_names_everything(tmp_path):
    out = cli("list", cwd=tmp_path).stdout
    for name in ("hard_sharing", "stl", "tox21", "digits", "demo"):
        assert name in out


@pytest.mark.parametrize("args,msg", [
    (("train", "tox21", "nope"), "unknown method 'nope'; choose one of"),
    (("train", "tox22", "stl"), "unknown data set 'tox22'"),
    (("train", "tox21", "stl", "epochs=many"), "epochs=many: expected an integer"),
    (("train", "tox21", "stl", "bogus=1"), "unknown key 'bogus'"),
    (("train", "tox21", "hard_sharing", "epochs=0"), "epochs=0: must be >= 1"),
    (("train", "tox21", "hard_sharing", "lr=0"), "lr=0.0: must be > 0"),
    (("train", "moleculenet", "stl", "data.path={mols}", "device=cuda:7"), "device=cuda:7: this machine has"),
    (("train", "moleculenet", "stl", "data.path=missing.csv"), "missing.csv does not exist"),
    (("run", "nope"), "unknown experiment 'nope'"),
    (("run", "demo", "bogus=1"), "unknown key 'bogus'"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, mols, args, msg):
    r = cli(*(a.format(mols=mols) for a in args), "--out", "runs", cwd=tmp_path, check=False)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("manytask: error")]
    assert len(err) == 1 and msg in err[0], r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_csv_without_smiles_column(tmp_path):
    (tmp_path / "x.csv").write_text("name,A\nCCO,1\n")
    r = cli("train", "moleculenet", "stl", "data.path=x.csv", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "no SMILES column 'smiles'; its columns are name, A" in r.stderr


def test_run_directories_are_never_reused(tmp_path):
    a, b = new_run_dir(tmp_path, "x"), new_run_dir(tmp_path, "x")
    assert (a.name, b.name) == ("x", "x-2")


def test_mismatched_checkpoint_is_a_clear_error(tmp_path, mols):
    cli("train", "moleculenet", "stl", f"data.path={mols}", "widths=8", *TINY, "--out", "runs", cwd=tmp_path)
    run = only_run(tmp_path / "runs")
    assert evaluate_run(run, echo=False)[1]
    w = load_file(run / "model.safetensors")
    w.pop(sorted(w)[0])
    save_file(w, run / "model.safetensors")
    with pytest.raises(ConfigError, match="does not match the stl model"):
        load_run(run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["method_cfg"]["widths"] = [9]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="does not match"):
        load_run(run)
