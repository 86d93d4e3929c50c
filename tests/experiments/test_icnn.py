"""The thesis's experiments: contender definitions, and each experiment end to end on the first 400
molecules of the embedded Tox21 (64-bit fingerprints, tiny widths, one seed). The full runs are slow."""
from __future__ import annotations

import csv
import gzip
import json
import math

import pytest

from manytask.config import ConfigError
from manytask.data.base import MultiTaskData, Split
from manytask.data.moleculenet import embedded_tox21
from manytask.experiments.icnn import (TOX21, contenders, icnn_merge, icnn_prune, icnn_tox21, icnn_tox21_fake,
                                       icnn_tox21_noise)
from manytask.methods.icnn import ICNN
from manytask.nn.mlp import mlp_params
from manytask.registry import get_method
from manytask.runs import resolve
from manytask.tasks import Task

import torch

TINY = ["data.bits=64", "seeds=0", "epochs=2", "icnn_widths=8,4", "mtl_widths=24,12", "progress=false"]


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("tox") / "tox21_400.csv"
    with gzip.open(embedded_tox21(), "rt") as f:
        lines = [next(f) for _ in range(401)]  # header + 400 molecules
    path.write_text("".join(lines))
    return f"data.path={path}"


def test_contenders_follow_the_thesis_definitions():
    N, d = 12, 40
    tasks = [Task(f"t{i}", "binary") for i in range(N)]
    empty = Split({"x": torch.zeros(2, d)}, {t.name: torch.zeros(2) for t in tasks})
    data = MultiTaskData("d", tasks, empty, empty, empty)
    cons = {c.label: c for c in contenders(data, (16, 8), (240, 120))}
    assert [c.method for c in cons.values()] == ["icnn", "hard_sharing", "stl", "stl"]
    assert cons["NN_STL"].overrides["widths"] == "20,10"  # network A: 12 x (20, 10) units = NN MTL's (240, 120)
    roots = ICNN(tasks, d, (16, 8)).root_params_per_subnetwork()
    assert cons["NN2_STL"].overrides["params_per_task"] == str(roots) == str(mlp_params(d, (16, 8), 1))
    spec = resolve("tox21", "stl", cons["NN2_STL"].overrides)  # network B: as many parameters per task
    nn2 = get_method("stl").fn(tasks, {"x": (d,)}, spec.method_cfg)
    per_task = sum(p.numel() for p in nn2.nets["t0"].parameters())
    assert abs(per_task - roots) <= 2 * d


def read(path):
    return list(csv.DictReader(open(path)))


@pytest.fixture(scope="module")
def two_seeds(tiny_csv, tmp_path_factory):
    """icnn-tox21 run twice, with seeds=0 and seeds=1 (as parallel processes would)."""
    a, b = tmp_path_factory.mktemp("seed0"), tmp_path_factory.mktemp("seed1")
    res = icnn_tox21([tiny_csv, *TINY], a)
    icnn_tox21([tiny_csv, *TINY[:1], "seeds=1", *TINY[2:]], b)
    return res, a, b


def test_icnn_tox21_end_to_end(two_seeds):
    res, tmp_path, _ = two_seeds
    assert set(res.runs) == {"ICNN", "NN_MTL", "NN_STL", "NN2_STL", "ICNN_joint"}
    assert res.runs["ICNN_joint"][0].spec.method_cfg.isolate is False and res.runs["ICNN"][0].spec.method_cfg.isolate
    rows = read(tmp_path / "table.csv")
    assert len(rows) == 5 * 12 and {r["task"] for r in rows} == set(TOX21)
    summary = json.loads((tmp_path / "summary.json").read_text())
    diff = summary["icnn_minus_nn2"]["mean"]
    icnn, nn2 = (summary["contenders"][k]["mean_test"][0] for k in ("ICNN", "NN2_STL"))
    assert math.isclose(diff, icnn - nn2, abs_tol=1e-9)
    run_dir = res.runs["ICNN"][0].dir
    heat = read(run_dir / "connectors.csv")
    assert [r["source"] for r in heat] == [t.name for t in res.data.tasks] and set(heat[0]) - {"source"} == set(TOX21)
    assert (run_dir / "connectors.png").stat().st_size > 0
    assert (tmp_path / "connectors_mean.png").exists()
    assert "paper ICNN" in res.table


def test_merge_combines_seed_directories(two_seeds, tmp_path):
    res, a, b = two_seeds
    icnn_merge([f"from={a},{b}"], tmp_path)
    rows = {(r["contender"], r["task"]): json.loads(r["per_seed"]) for r in read(tmp_path / "table.csv")}
    one = {(r["contender"], r["task"]): json.loads(r["per_seed"]) for r in read(a / "table.csv")}
    same = lambda x, y: x == y or (math.isnan(x) and math.isnan(y))
    assert rows.keys() == one.keys() and all(len(v) == 2 and same(v[0], one[k][0]) for k, v in rows.items())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["mean_test_auc"]["ICNN"]) == 2
    with pytest.raises(ConfigError, match="from="):
        icnn_merge([f"from={tmp_path / 'nope'}"], tmp_path)


def test_noise_adds_four_fake_tasks_and_reports_blocks(tiny_csv, tmp_path):
    res = icnn_tox21_noise([tiny_csv, *TINY], tmp_path)
    assert len(res.data.tasks) == 16
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["connector_blocks"]) == {"real->real", "fake->fake", "real->fake", "fake->real"}
    assert all(v > 0 for v in summary["connector_blocks"].values())
    # NN MTL grew with the task count as in the thesis: 24,12 were given explicitly here, so unchanged
    assert summary["contenders"]["NN_MTL"]["overrides"]["widths"] == "24,12"


def test_fake_runs_each_assay_with_eleven_fakes(tiny_csv, tmp_path):
    icnn_tox21_fake([tiny_csv, *TINY, "assays=NR-AR,SR-p53"], tmp_path)
    rows = read(tmp_path / "table.csv")
    assert [(r["assay"], r["contender"]) for r in rows] == [("NR-AR", "ICNN"), ("SR-p53", "ICNN")]
    heat = read(next((tmp_path / "NR-AR" / "ICNN").iterdir()) / "connectors.csv")
    assert [r["source"] for r in heat] == ["NR-AR", *(f"fake{k}" for k in range(11))]
    with pytest.raises(ConfigError, match="assays"):
        icnn_tox21_fake([tiny_csv, *TINY, "assays=nope"], tmp_path / "x")


def test_prune_leaves_the_fraction_and_reports_the_change(tiny_csv, tmp_path):
    icnn_prune([tiny_csv, *TINY, "prune=0.5", "finetune=1"], tmp_path / "a")
    (row,) = read(tmp_path / "a" / "prune.csv")
    before, after = int(row["connectors_before"]), int(row["connectors_after"])
    assert before == 8 * 4 * 12 * 11 and after == before - round(0.5 * before)
    assert int(row["params_before"]) - int(row["params_after"]) == before - after
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["prune"] == 0.5 and len(summary["auc_change_finetuned"]) == 2
    # from=: prune the trained run again without training; the source directory is left as it was
    run = tmp_path / "a" / "ICNN" / "seed0"
    weights = (run / "model.safetensors").read_bytes()
    (tmp_path / "b").mkdir()
    (row2,) = icnn_prune([f"from={tmp_path / 'a'}", "prune=0.9", "finetune=0"], tmp_path / "b")
    assert row2["connectors_after"] == before - round(0.9 * before) and row2["auc_before"] == float(row["auc_before"])
    assert (run / "model.safetensors").read_bytes() == weights and (tmp_path / "b" / "pruned-seed0.safetensors").exists()
    with pytest.raises(ConfigError, match="from="):
        icnn_prune([f"from={tmp_path / 'b'}"], tmp_path / "c")


@pytest.mark.slow
def test_icnn_tox21_full(tmp_path):
    """Acceptance: the full experiment (3 seeds); ICNN mean test AUC >= 0.80."""
    res = icnn_tox21([], tmp_path)
    aucs = res.mean_metric("ICNN")
    assert sum(aucs) / len(aucs) >= 0.80, aucs
