"""ensemble=K: K members with seeds S..S+K-1 on one split, their predictions averaged; evaluate, predict,
list, interrupt and resume an ensemble run; a failing member; compare; bad values, tune and torchrun refused."""
from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import manytask.runs as runs
from manytask.cli import main
from manytask.config import ConfigError
from manytask.metrics import task_metrics
from manytask.tasks import Task
from manytask.train import Hooks, predict_split

from .conftest import tiny_multi, tiny_shared
from .test_lifecycle import KEYS, command
from .test_runs_cli import TINY, cli, only_run


def spec_for(mols, **keys) -> runs.RunSpec:
    return runs.resolve("moleculenet", "hard_sharing", {"data.path": str(mols), **KEYS, **keys})


def tensors(path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def same_weights(a, b) -> bool:
    wa, wb = tensors(a), tensors(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ensemble_of_one_is_the_single_run(tmp_path, mols):
    plain = runs.train_run(spec_for(mols, epochs="3"), out=tmp_path, name="plain", echo=False).dir
    one = runs.train_run(spec_for(mols, epochs="3", ensemble="1"), out=tmp_path, name="one", echo=False).dir
    assert {p.name for p in one.iterdir()} == {p.name for p in plain.iterdir()} and not (one / "members").exists()
    assert same_weights(plain, one)
    assert json.loads((plain / "results.json").read_text())["splits"] == json.loads((one / "results.json").read_text())["splits"]


def test_ensemble_averages_the_members_predictions(tmp_path):
    """Binary, 3-class and regression tasks (the regression target in units of its own: shift, scale):
    the ensemble's predictions are the mean of the members' (each loaded from its own directory), and its
    tables are the metrics of those means."""
    data = tiny_shared()
    data = dataclasses.replace(data, tasks=[dataclasses.replace(t, shift=1.5, scale=2.0) if t.kind == "regression"
                                            else t for t in data.tasks])
    spec = runs.resolve("tox21", "hard_sharing", {"epochs": "3", "batch_size": "16", "widths": "16", "progress": "false",
                                                  "seed": "5", "ensemble": "3"})
    result = runs.train_run(spec, data, out=tmp_path, name="ens", echo=False)
    run = result.dir
    assert sorted(p.name for p in (run / "members").iterdir()) == ["seed5", "seed6", "seed7"]
    assert [m.spec.train.seed for m in result.members] == [5, 6, 7] and not (run / "model.safetensors").exists()
    _, _, ensemble = runs.load_run(run, with_data=False)
    members = [runs.load_run(run / "members" / f"seed{s}", with_data=False)[2] for s in (5, 6, 7)]
    out = predict_split(ensemble, data.test, data.tasks)
    member_outs = [predict_split(m, data.test, data.tasks) for m in members]
    saved = json.loads((run / "results.json").read_text())
    assert saved["ensemble"]["seeds"] == [5, 6, 7] and saved["splits"] == json.loads(json.dumps(result.tables))
    for t in data.tasks:
        mean = torch.stack([t.predict(o[t.name]) for o in member_outs]).mean(0)
        spread = max(float((t.predict(o[t.name]) - mean).abs().max()) for o in member_outs)
        assert spread > 1e-4  # the members differ, so the mean is not any one of them
        torch.testing.assert_close(t.predict(out[t.name]), mean, atol=1e-6, rtol=0)
        expected = task_metrics(t, mean.numpy(), data.test.labels[t.name].numpy())
        got = {k: v for k, v in saved["splits"]["test"][t.name].items() if k != "loss"}
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-6, nan_ok=True)  # float32 sums
    bin_task = data.tasks[0]
    mean_p = torch.stack([bin_task.predict(o[bin_task.name]) for o in member_outs]).mean(0).double()
    y = data.test.labels[bin_task.name]
    known = ~torch.isnan(y)
    log_loss = float(torch.nn.functional.binary_cross_entropy(mean_p[known], y[known].double()))
    assert saved["splits"]["test"][bin_task.name]["loss"] == pytest.approx(log_loss, abs=1e-5)  # of the averaged prediction


def test_cli_ensemble_trains_evaluates_predicts_and_lists_once(tmp_path, mols, monkeypatch, capsys):
    r = cli("train", "moleculenet", "hard_sharing", f"data.path={mols}", "widths=16", *TINY, "ensemble=2", "seed=3",
            "--out", "runs", cwd=tmp_path)
    lines = r.stdout.splitlines()
    assert lines[0] == "ensemble of 2 (seeds 3-4): hard_sharing on moleculenet", r.stdout
    assert lines[1].startswith("member 1/2 (seed 3): test auc ") and lines[2].startswith("member 2/2 (seed 4): test auc ")
    assert "mean over 2 of 2 tasks" in r.stdout and "ensemble of 2 (seeds 3-4)," in lines[-2]
    run = only_run(tmp_path / "runs")
    moved = mols.rename(tmp_path / "moved.csv")
    monkeypatch.chdir(tmp_path)
    out, _ = command("evaluate", run, f"data.path={moved.name}", capsys=capsys)
    assert "matches the saved results.json exactly" in out
    out, _ = command("predict", run, "CCO", "C1CC(", "c1ccccc1O", capsys=capsys)
    rows = [line.split(",") for line in out.splitlines()]
    assert rows[0] == ["smiles", "valid", "A", "B"] and rows[2] == ["C1CC(", "false", "", ""]
    members = [runs.predict_run(run / "members" / f"seed{s}", ["CCO", "c1ccccc1O"]) for s in (3, 4)]
    for row, i in ((rows[1], 0), (rows[3], 1)):
        mean = [np.mean([m[i][1][task] for m in members]) for task in ("A", "B")]
        assert [float(v) for v in row[2:]] == pytest.approx(mean, abs=1e-5)
    listed = runs.list_runs(tmp_path / "runs")
    assert len(listed) == 1 and listed[0]["method"] == "hard_sharing (ensemble of 2)" and listed[0]["epochs"] == "2/2 members"
    mean_auc = json.loads((run / "results.json").read_text())["mean"]["test"]["auc"]
    assert listed[0]["test"] == f"auc {mean_auc:.3f}" and listed[0]["status"] == "completed"


class Recorder(Hooks):
    """Records (seed, epoch) of every optimizer step; sends this process SIGINT after the first step of
    epoch `cut[1]` of the member with seed `cut[0]`."""

    def __init__(self, seed: int, steps: list, cut: tuple[int, int] | None):
        self.seed, self.steps, self.cut = seed, steps, cut

    def after_step(self, trainer):
        self.steps.append((self.seed, trainer.epoch))
        if (self.seed, trainer.epoch) == self.cut and self.steps.count(self.cut) == 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_in_the_second_member_resumes_there(tmp_path, mols, monkeypatch):
    spec = spec_for(mols, epochs="3", patience="0", ensemble="3")
    straight = runs.train_run(spec, out=tmp_path, name="straight", echo=False).dir
    real, steps = runs.build, []

    def spy(cut):
        monkeypatch.setattr(runs, "build", lambda s, data: (real(s, data)[0], Recorder(s.train.seed, steps, cut)))
    spy((1, 2))
    with pytest.raises(runs.RunStopped) as stopped:
        runs.train_run(spec, out=tmp_path, name="cut", echo=False)
    cut = tmp_path / "cut"
    assert stopped.value.exit_status == 130
    assert str(stopped.value).startswith("interrupted by SIGINT after epoch 1 of member 2 of 3 (seed 1); ")
    assert str(stopped.value).endswith(f"resume with: manytask train moleculenet hard_sharing --resume {cut}")
    info = json.loads((cut / "run.json").read_text())
    assert info["status"] == "interrupted" and info["interrupted"] == {"member": 2, "seed": 1, "epoch": 1, "signal": "SIGINT"}
    assert [json.loads((cut / "members" / f"seed{s}" / "run.json").read_text())["status"] for s in (0, 1)] == \
        ["completed", "interrupted"] and not (cut / "members" / "seed2").exists()
    assert [r["epochs"] for r in runs.list_runs(tmp_path) if r["path"].endswith("cut")] == ["1/3 members"]
    with pytest.raises(ConfigError, match=r"unfinished ensemble \(1 of 3 members completed\); resume it with manytask train"):
        runs.load_run(cut, with_data=False)
    with pytest.raises(ConfigError, match="ensemble=4 differs from the run's ensemble=3"):
        runs.resume_run(cut, "moleculenet", "hard_sharing", {"ensemble": "4"}, echo=False)
    first = (cut / "members" / "seed0" / "model.safetensors").stat().st_mtime_ns

    steps.clear()
    spy(None)
    result = runs.resume_run(cut, "moleculenet", "hard_sharing", echo=False)
    assert sorted(set(steps)) == [(1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]  # member 1 not again, member 2 from epoch 2
    assert (cut / "members" / "seed0" / "model.safetensors").stat().st_mtime_ns == first
    assert [m.trainer is None for m in result.members] == [True, False, False]
    for s in (0, 1, 2):
        assert same_weights(straight / "members" / f"seed{s}", cut / "members" / f"seed{s}")
    alone = runs.train_run(spec_for(mols, epochs="3", patience="0", seed="1"), out=tmp_path, name="alone", echo=False)
    assert same_weights(straight / "members" / "seed1", alone.dir)  # a member is the single run of its seed
    assert json.loads((straight / "results.json").read_text())["splits"] == json.loads((cut / "results.json").read_text())["splits"]
    info = json.loads((cut / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from_member"] == 2
    assert [p["status"] for p in info["previous"]] == ["interrupted"]


@pytest.mark.parametrize("args,msg", [
    (("train", "moleculenet", "hard_sharing", "ensemble=0"), "ensemble=0: must be >= 1"),
    (("train", "moleculenet", "hard_sharing", "ensemble=two"), "ensemble=two: expected an integer"),
    (("train", "moleculenet", "hard_sharing", "ensemble=2", "nproc=2"),
     "ensemble=2 with nproc=2: an ensemble trains its members one after another in one process"),
    (("tune", "moleculenet", "hard_sharing", "ensemble=3"), "ensemble=3: tune trains and scores single models"),
])
def test_bad_ensemble_values_exit_2_and_write_nothing(tmp_path, mols, capsys, args, msg):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*args, f"data.path={mols}", *TINY, "--out", str(tmp_path / "runs")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("manytask: error")]
    assert exit_.value.code == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_diverging_member_fails_the_ensemble(tmp_path, mols):
    spec = spec_for(mols, epochs="2", ensemble="2", optimizer="sgd", lr="1e30", batch_size="4")
    with pytest.raises(runs.RunStopped) as stopped:
        runs.train_run(spec, out=tmp_path, name="bad", echo=False)
    assert stopped.value.exit_status == 1 and str(stopped.value).startswith("error: member 1 of 2 (seed 0) failed: ")
    info = json.loads((tmp_path / "bad" / "run.json").read_text())
    assert info["status"] == "failed" and info["error"]["member"] == 1 and "training loss is nan" in info["error"]["reason"]
    assert not (tmp_path / "bad" / "members" / "seed1").exists()
    with pytest.raises(ConfigError, match="the run failed in epoch 1"):
        runs.resume_run(tmp_path / "bad", "moleculenet", "hard_sharing", echo=False)


def test_compare_passes_ensemble_to_one_contender(tmp_path, mols):
    main(["compare", "moleculenet", "hard_sharing,stl", f"data.path={mols}", "seeds=0", "stl.ensemble=2", *TINY,
          "hard_sharing.widths=16", "stl.widths=8", "--out", str(tmp_path / "runs")])
    run = only_run(tmp_path / "runs")
    assert sorted(p.name for p in (run / "stl" / "seed0" / "members").iterdir()) == ["seed0", "seed1"]
    assert not (run / "hard_sharing" / "seed0" / "members").exists()
    stl = json.loads((run / "stl" / "seed0" / "results.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["contenders"]["stl"]["mean_test"] == [stl["mean"]["test"]["auc"]]
    assert [r["method"] for r in runs.list_runs(run)].count("stl (ensemble of 2)") == 1


@pytest.mark.slow
def test_tox21_hard_sharing_ensemble_of_5_figure(tmp_path):
    """docs/ensembles.md: `manytask train tox21 hard_sharing seed=0 ensemble=5` -> mean test ROC-AUC 0.835,
    its members' 0.825 on average (about 5 minutes on 2 cores)."""
    result = runs.train_run(runs.resolve("tox21", "hard_sharing", {"seed": "0", "ensemble": "5", "progress": "false"}),
                            out=tmp_path, echo=False)
    members = [m["mean_test"]["auc"] for m in result.summary["ensemble"]["members"]]
    assert result.summary["mean"]["test"]["auc"] == pytest.approx(0.8353, abs=5e-4)
    assert np.mean(members) == pytest.approx(0.8248, abs=5e-4) and result.summary["mean"]["test"]["auc"] > max(members)


def test_an_ensemble_under_torchrun_is_refused_before_anything_is_written(tmp_path, mols, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ensemble=2 with torchrun: an ensemble trains its members one after another"):
        runs.train_run(spec_for(mols, ensemble="2"), out=tmp_path / "runs", echo=False)
    assert not (tmp_path / "runs").exists()


def test_an_ensemble_evaluates_inputs_of_different_lengths_in_small_chunks(tmp_path):
    """Two inputs with different row counts, evaluated in chunks of 1: once one input has run out, its
    tasks' chunks have 0 rows, and averaging the members' predictions of 0 rows gives 0 rows."""
    data = tiny_multi()
    assert len({data.test.size(k) for k in data.test.inputs}) > 1  # the inputs run out at different chunks
    spec = runs.resolve("tox21", "hard_sharing", {"epochs": "1", "batch_size": "16", "widths": "8", "progress": "false",
                                                  "ensemble": "2", "eval_batch_size": "1"})
    result = runs.train_run(spec, data, out=tmp_path, name="ens", echo=False)
    for t in data.tasks:
        assert result.tables["test"][t.name]["n"] == int((~torch.isnan(data.test.labels[t.name])).sum())
    assert Task("b", "binary").predict(torch.empty(0, 1)).shape == (0,)
    assert Task("m", "multiclass", outputs=3).predict(torch.empty(0, 3)).shape == (0, 3)
    assert Task("r", "regression").predict(torch.empty(0)).shape == (0,)
