"""A run's life: run.json, interrupt and resume (bit for bit), failure on divergence, the run list, and
prediction from a run directory alone."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import manytask.runs as runs
from manytask.config import ConfigError
from manytask.train import Hooks

from .test_runs_cli import TINY, cli, only_run

KEYS = {"widths": "16", "epochs": "6", "patience": "3", "batch_size": "8", "progress": "false", "data.bits": "128",
        "data.fractions": "0.5,0.25,0.25"}  # hard_sharing's dropout 0.25 draws from the global generator


def spec_for(mols_csv: Path, **keys) -> runs.RunSpec:
    return runs.resolve("moleculenet", "hard_sharing", {"data.path": str(mols_csv), **KEYS, **keys})


class SignalAt(Hooks):
    """Sends this process `signum` after the first optimizer step of `epoch` (once); records the epochs it
    trained."""

    def __init__(self, epoch: int, signum: int = signal.SIGINT):
        self.epoch, self.signum, self.trained = epoch, signum, []

    def after_step(self, trainer):
        self.trained.append(trainer.epoch)
        if trainer.epoch == self.epoch and self.trained.count(self.epoch) == 1:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def hooks_spy(monkeypatch):
    """Every run built from now on trains with the given hooks (hard_sharing's own are the defaults)."""
    real = runs.build

    def install(hooks):
        monkeypatch.setattr(runs, "build", lambda spec, data: (real(spec, data)[0], hooks))
        return hooks
    return install


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def epochs_without_time(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def interrupt(spec, out: Path, name: str, epoch: int, hooks_spy, signum=signal.SIGINT) -> runs.RunStopped:
    hooks_spy(SignalAt(epoch, signum))
    with pytest.raises(runs.RunStopped) as stopped:
        runs.train_run(spec, out=out, name=name, echo=False)
    return stopped.value


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_and_resumed_equals_straight_bit_for_bit(tmp_path, mols, hooks_spy, signum, status):
    spec = spec_for(mols)
    straight = runs.train_run(spec, out=tmp_path, name="straight", echo=False).dir
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stopped = interrupt(spec, tmp_path, "cut", 4, hooks_spy, signum)
    cut = tmp_path / "cut"
    assert stopped.exit_status == status
    assert f"after epoch 3; {cut} holds the best weights so far" in str(stopped)
    assert str(stopped).endswith(f"resume with: manytask train moleculenet hard_sharing --resume {cut}")
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the library keeps no handler
    info = json.loads((cut / "run.json").read_text())
    assert info["status"] == "interrupted" and info["interrupted"] == {"epoch": 3, "signal": signal.Signals(signum).name}
    assert len(epochs_without_time(cut)) == 3 and (cut / "checkpoint.safetensors").exists()
    assert not (cut / "results.json").exists()
    best = runs.load_checkpoint(cut / "checkpoint.safetensors")["best_model"]
    assert all(torch.equal(best[k], v) for k, v in weights(cut).items())  # the best weights so far

    spy = hooks_spy(SignalAt(epoch=-1))  # trains like hard_sharing's own hooks; records the epochs trained
    runs.resume_run(cut, "moleculenet", "hard_sharing", echo=False)
    assert sorted(set(spy.trained)) == [4, 5, 6]  # from the last finished epoch on, not from the start
    a, b = weights(straight), weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((straight / "results.json").read_text())["splits"] == json.loads((cut / "results.json").read_text())["splits"]
    assert epochs_without_time(straight) == epochs_without_time(cut)
    info = json.loads((cut / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from_epoch"] == 3
    assert [p["status"] for p in info["previous"]] == ["interrupted"]
    assert not (cut / "checkpoint.safetensors").exists()


def test_resume_after_the_process_died_and_before_the_first_epoch(tmp_path, mols, hooks_spy):
    """A run whose process was killed (run.json still says running, the pid is gone) resumes too; one
    interrupted in its first epoch has no checkpoint and starts again from the beginning."""
    spec = spec_for(mols, epochs="3", patience="0")
    straight = runs.train_run(spec, out=tmp_path, name="straight", echo=False).dir
    stopped = interrupt(spec, tmp_path, "early", 1, hooks_spy)
    early = tmp_path / "early"
    assert "after epoch 0" in str(stopped) and "no finished epoch" in str(stopped)
    assert not (early / "model.safetensors").exists() and not (early / "checkpoint.safetensors").exists()
    with pytest.raises(ConfigError, match="model.safetensors is missing; resume it with manytask train"):
        runs.load_run(early, with_data=False)
    gone = subprocess.Popen(["true"])
    gone.wait()
    info = json.loads((early / "run.json").read_text())
    (early / "run.json").write_text(json.dumps({**info, "status": "running", "pid": gone.pid}))
    assert runs.shown_status(json.loads((early / "run.json").read_text())) == "dead"
    hooks_spy(Hooks())
    runs.resume_run(early, "moleculenet", "hard_sharing", echo=False)
    a, b = weights(straight), weights(early)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_what_it_cannot_continue(tmp_path, mols, hooks_spy):
    spec = spec_for(mols, epochs="3")
    done = runs.train_run(spec, out=tmp_path, name="done", echo=False).dir
    with pytest.raises(ConfigError, match="the run is completed; there is nothing to resume"):
        runs.resume_run(done, "moleculenet", "hard_sharing", echo=False)
    interrupt(spec, tmp_path, "cut", 2, hooks_spy)
    cut = tmp_path / "cut"
    with pytest.raises(ConfigError, match=r"epochs=9 differs from the run's epochs=3: a resumed run keeps its settings"):
        runs.resume_run(cut, "moleculenet", "hard_sharing", {"epochs": "9"}, echo=False)
    with pytest.raises(ConfigError, match="is a hard_sharing run on moleculenet; resume it with manytask train "
                                          "moleculenet hard_sharing --resume"):
        runs.resume_run(cut, "moleculenet", "stl", echo=False)
    info = json.loads((cut / "run.json").read_text())
    (cut / "run.json").write_text(json.dumps({**info, "status": "running", "pid": os.getpid(), "argv": sys.argv}))
    with pytest.raises(ConfigError, match=f"still running \\(pid {os.getpid()}\\)"):
        runs.resume_run(cut, "moleculenet", "hard_sharing", echo=False)
    (cut / "run.json").write_text(json.dumps({**info, "status": "running", "host": "elsewhere.example"}))
    with pytest.raises(ConfigError, match="runs on host elsewhere.example"):
        runs.resume_run(cut, "moleculenet", "hard_sharing", echo=False)


def test_signals_stop_the_cli_with_130_or_143_and_one_line(tmp_path, mols):
    for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / f"runs{signum}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "manytask.cli", "train", "moleculenet", "hard_sharing",
                                 f"data.path={mols}", "widths=16", "epochs=100000", "patience=0", "data.bits=64",
                                 "progress=false", "data.fractions=0.5,0.25,0.25", "--out", str(out)],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list(out.glob("*/checkpoint.safetensors")) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == status, err
        run = only_run(out)
        lines = [ln for ln in err.splitlines() if ln.startswith("manytask: interrupted")]
        assert len(lines) == 1 and lines[0].endswith(f"--resume {run}"), err
        assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
        assert (run / "model.safetensors").exists()


def test_cli_resume_completes_the_run(tmp_path, mols, hooks_spy):
    spec = spec_for(mols, epochs="4")
    interrupt(spec, tmp_path, "cut", 3, hooks_spy)
    r = cli("train", "moleculenet", "hard_sharing", "progress=false", "--resume", tmp_path / "cut", cwd=tmp_path)
    assert "mean over 2 of 2 tasks" in r.stdout and "resuming" in r.stderr and "after epoch 2 of 4" in r.stderr
    info = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert info["status"] == "completed" and info["argv"][-2:] == ["--resume", str(tmp_path / "cut")]
    assert len(epochs_without_time(tmp_path / "cut")) == 4


def test_diverging_training_fails_the_run(tmp_path, mols):
    r = cli("train", "moleculenet", "hard_sharing", f"data.path={mols}", "optimizer=sgd", "lr=1e30", "batch_size=4",
            *TINY, "--out", "runs", cwd=tmp_path, check=False)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("manytask: error")]
    assert len(errors) == 1 and "training loss is nan in epoch 1" in errors[0] and "marked failed" in errors[0], r.stderr
    run = only_run(tmp_path / "runs")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and info["error"]["epoch"] == 1 and "training loss is nan" in info["error"]["reason"]
    assert not (run / "model.safetensors").exists() and not (run / "results.json").exists()
    with pytest.raises(ConfigError, match="failed in epoch 1 .* it holds no trained model"):
        runs.Predictor(run)


def test_run_json_records_the_process(tmp_path, mols):
    run = runs.train_run(spec_for(mols, epochs="1"), out=tmp_path, echo=False).dir
    info = json.loads((run / "run.json").read_text())
    import manytask
    assert info["status"] == "completed" and info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["argv"] == sys.argv and info["started"] <= info["ended"]
    assert info["versions"]["manytask"] == manytask.__version__ and info["versions"]["torch"] == torch.__version__
    assert not list(run.glob(".*tmp"))  # atomic writes leave no temporary file
    config = json.loads((run / "config.json").read_text())
    assert config["data_cfg"]["path"] == str(mols) and Path(config["data_cfg"]["path"]).is_absolute()
    assert config["model"] == {"tasks": [{"name": "A", "kind": "binary", "outputs": 1, "input": "x", "metric": "",
                                          "shift": 0.0, "scale": 1.0},
                                         {"name": "B", "kind": "binary", "outputs": 1, "input": "x", "metric": "",
                                          "shift": 0.0, "scale": 1.0}],
                               "input_shapes": {"x": [128]}}


def command(*args, capsys) -> tuple[str, str]:
    """`manytask ARGS` in this process (parsed and run as the console script does, without its exit codes)
    -> (stdout, stderr)."""
    from manytask.cli import parser
    capsys.readouterr()
    parsed = parser().parse_args(list(map(str, args)))
    parsed.fn(parsed)
    return capsys.readouterr()


def test_version_and_relative_paths_stored_absolute(tmp_path, mols, monkeypatch, capsys):
    import manytask
    with pytest.raises(SystemExit):
        command("--version", capsys=capsys)
    assert capsys.readouterr().out.strip() == f"manytask {manytask.__version__}"
    monkeypatch.chdir(mols.parent)
    spec = runs.resolve("moleculenet", "stl", {"data.path": "mols.csv"})
    assert spec.data_cfg.path == os.path.join(os.getcwd(), "mols.csv")


def test_runs_lists_newest_first_with_status_and_test_metric(tmp_path, mols, hooks_spy):
    spec = spec_for(mols, epochs="3")
    runs.train_run(spec, out=tmp_path / "runs", name="first", echo=False)
    interrupt(spec, tmp_path / "runs", "second", 2, hooks_spy)
    third = tmp_path / "runs" / "exp" / "hard_sharing" / "seed0"  # an experiment's run, two levels down
    third.parent.mkdir(parents=True)
    hooks_spy(Hooks())
    runs.train_run(spec, out=third.parent, name="seed0", echo=False)
    stamps = {"first": "2026-01-01T10:00:00+00:00", "second": "2026-01-01T12:30:00+02:00",  # 10:30 UTC
              "exp/hard_sharing/seed0": "2026-01-01T11:00:00+00:00"}
    for name, started in stamps.items():
        info = json.loads((tmp_path / "runs" / name / "run.json").read_text())
        (tmp_path / "runs" / name / "run.json").write_text(json.dumps({**info, "started": started}))
    listed = runs.list_runs(tmp_path / "runs")
    assert [Path(r["path"]).relative_to(tmp_path / "runs").as_posix() for r in listed] == \
        ["exp/hard_sharing/seed0", "second", "first"]
    first = next(r for r in listed if r["path"].endswith("first"))
    mean_auc = json.loads((tmp_path / "runs" / "first" / "results.json").read_text())["mean"]["test"]["auc"]
    assert first["status"] == "completed" and first["test"] == f"auc {mean_auc:.3f}" and first["epochs"] == "3/3"
    second = next(r for r in listed if r["path"].endswith("second"))
    assert second["status"] == "interrupted" and second["test"] == "" and second["epochs"] == "1/3"
    out = cli("runs", "runs", cwd=tmp_path).stdout.splitlines()
    assert out[0].split() == ["started", "status", "epochs", "data", "method", "test", "run"]
    assert "interrupted" in out[3] and out[3].endswith("runs/second")


def test_shown_status_of_a_run_whose_process_is_gone():
    gone = subprocess.Popen(["true"])
    gone.wait()
    here = socket.gethostname()
    assert runs.shown_status({"status": "running", "host": here, "pid": gone.pid, "argv": ["x"]}) == "dead"
    assert runs.shown_status({"status": "running", "host": here, "pid": os.getpid(), "argv": sys.argv}) == "running"
    assert runs.shown_status({"status": "running", "host": here, "pid": os.getpid(), "argv": ["x", "other"]}) == "dead"
    assert runs.shown_status({"status": "running", "host": here + ".other", "pid": 1}) == "running?"
    assert runs.shown_status({"status": "interrupted"}) == "interrupted"


def test_checkpoint_layout_round_trips_without_pickle(tmp_path):
    state = {"n": 3, "x": math.inf, "none": None, "t": (1, "a", [2.5]), 7: {"v": torch.arange(3)},
             "step": torch.tensor(4.0), "same": [torch.ones(2), torch.ones(2)]}
    tensors = {}
    layout = runs._pack(state, tensors, "")
    back = runs._unpack(json.loads(json.dumps(layout)), tensors)
    assert back["t"] == (1, "a", [2.5]) and back["x"] == math.inf and back["none"] is None and back["n"] == 3
    assert torch.equal(back[7]["v"], torch.arange(3)) and back["step"].shape == () and len(tensors) == 4
    with pytest.raises(TypeError, match="a checkpoint holds tensors and JSON values; obj is a object"):
        runs._pack({"obj": object()}, {}, "")


def test_predict_needs_only_the_run_directory(tmp_path, mols, monkeypatch, capsys):
    run = runs.train_run(spec_for(mols, epochs="2"), out=tmp_path / "runs", echo=False).dir
    moved = mols.rename(tmp_path / "moved.csv")  # the training data is gone from where the run saw it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,SMILES,weight\n1,CCO,3\n2,C1CC(,4\n3,c1ccccc1O,5\n")
    one = command("predict", run, "--file", "in.csv", capsys=capsys).out.splitlines()
    assert one[0] == "smiles,valid,A,B" and one[2] == "C1CC(,false,," and len(one) == 4
    assert one[1].startswith("CCO,true,") and one[3].startswith("c1ccccc1O,true,")
    assert all(0 < float(v) < 1 for v in one[1].split(",")[2:])
    (tmp_path / "plain.smi").write_text("CCO first\n# a comment\n\nC1CC(\nc1ccccc1O\n")
    out, err = command("predict", run, "--file", "plain.smi", "--chunk", "1", "--out", "p.csv", capsys=capsys)
    assert (tmp_path / "p.csv").read_text().splitlines() == one and out == ""
    assert "predicted 2 of 3 inputs (1 unreadable)" in err
    with pytest.raises(ConfigError, match=f"which is not there any more; give its new place: manytask evaluate {run} "
                                          "data.path=NEW.csv"):
        command("evaluate", run, capsys=capsys)
    out, _ = command("evaluate", run, f"data.path={moved.name}", capsys=capsys)
    assert "matches the saved results.json exactly" in out
    assert runs.predict_run(run, ["CCO", "C1CC("])[1] == ("C1CC(", None)


def test_cli_resume_key_is_the_same_as_the_flag(tmp_path, mols, hooks_spy):
    spec = spec_for(mols, epochs="4")
    interrupt(spec, tmp_path, "cut", 3, hooks_spy)
    r = cli("train", "moleculenet", "hard_sharing", "progress=false", f"resume={tmp_path / 'cut'}", cwd=tmp_path)
    assert "after epoch 2 of 4" in r.stderr
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "completed"
    assert len(epochs_without_time(tmp_path / "cut")) == 4
