"""`manytask tune`: search spaces, the tune end to end (resume, recipe, confirm), workers sharing a study,
a killed worker, bad input."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from manytask.cli import main
from manytask.config import apply, option, spec_of
from manytask.registry import METHODS, load_all
from manytask.runs import resolve
from manytask import tune as tune_module
from manytask.train import TrainConfig
from manytask.tune import fail_lost_trials, open_storage, search_space, suggest, text

TINY = ["data.bits=64", "data.fractions=0.5,0.25,0.25", "epochs=2", "widths=16"]
load_all()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_space_gives_valid_configs(method):
    """Each declared range's ends and each choice pass the config's own checks, and sampled trials resolve."""
    space = search_space(method)
    assert {"lr", "batch_size", "weight_decay"} <= set(space) and len(space) > 3  # the method searches keys of its own
    for cls in (TrainConfig, METHODS[method].config):
        for f in dataclasses.fields(cls):
            search = spec_of(f).search
            if search is None:
                continue
            values = search[1] if search[0] == "choice" else search[1:]
            for v in values:
                apply(cls(), {f.name: v}, "test")  # a ConfigError if outside the field's range or type
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        values = {k: suggest(trial, k, *space[k]) for k in space}
        spec = resolve("tox21", method, values)
        for k, v in values.items():
            assert getattr(spec.train if k in TrainConfig.__dataclass_fields__ else spec.method_cfg, k) == v
        assert {k: text(v) for k, v in values.items()} == trial.params


def test_the_docs_list_what_each_method_searches():
    docs = (Path(__file__).parents[1] / "docs" / "tuning.md").read_text()
    tables = [*((f"`{m}`", METHODS[m].config) for m in sorted(METHODS)), ("training keys (every method)", TrainConfig)]
    for name, cls in tables:
        rows = "; ".join(f"`{f.name}` {spec_of(f).searched()}" for f in dataclasses.fields(cls) if spec_of(f).search)
        assert f"| {name} | {rows} |" in docs


@pytest.mark.parametrize("search", [("log", 0.0, 1.0), ("int", 3, 1), ("choice", (1,)), ("grid", 0, 1), ("float", 0)])
def test_malformed_search_declaration_is_an_error_where_declared(search):
    with pytest.raises(ValueError, match="search="):
        option(1.0, "x", search=search)


def tune(tmp_path, mols, *keys):
    main(["tune", "moleculenet", "hard_sharing", f"data.path={mols}", *TINY, *map(str, keys),
          "--out", str(tmp_path / "runs")])
    return tmp_path / "runs" / "tune-moleculenet-hard_sharing"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tune_writes_recipe_table_plots_resumes_and_confirms(tmp_path, mols, capsys):
    folder = tune(tmp_path, mols, "trials=3")
    out, err = capsys.readouterr()
    assert {"best.json", "trials.csv", "history.png", "importances.png", "importances.csv", "study.db"} <= \
        {p.name for p in folder.iterdir()}
    for png in ("history.png", "importances.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(folder / "trials.csv")
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert not any("test" in column for column in rows[0]) and "test auc" not in out + err  # no test split
    assert sum(line.startswith("tune: trial ") for line in err.splitlines()) == 3  # one line per trial
    best = json.loads((folder / "best.json").read_text())
    vals = {int(r["number"]): float(r["val_auc"]) for r in rows}
    assert best["val"] == max(vals.values()) and vals[best["trial"]] == best["val"]
    searched = {"dropout", "batch_size", "lr", "weight_decay"}
    assert set(best["keys"]) == searched | {"epochs", "widths"}  # not progress, seed, data.*
    assert best["keys"]["widths"] == [16] and best["keys"]["epochs"] == 2
    assert best["keys"]["lr"] == float(rows[best["trial"]]["lr"])

    # the recipe trains; a key on the command line overrides it
    main(["train", "moleculenet", "hard_sharing", f"data.path={mols}", "data.bits=64", "data.fractions=0.5,0.25,0.25",
          f"recipe={folder / 'best.json'}", "lr=0.0123", "progress=false", "--out", str(tmp_path / "train")])
    (run,) = (tmp_path / "train").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["lr"] == 0.0123 and config["train"]["batch_size"] == best["keys"]["batch_size"]
    assert config["method_cfg"]["dropout"] == best["keys"]["dropout"] and config["method_cfg"]["widths"] == [16]

    # the same command resumes the study up to the new total, then confirms on fresh seeds
    capsys.readouterr()
    tune(tmp_path, mols, "trials=5", "confirm_seeds=2")
    out, err = capsys.readouterr()
    again = read_csv(folder / "trials.csv")
    assert [r["number"] for r in again] == ["0", "1", "2", "3", "4"] and again[:3] == rows
    assert "3 of 5 trials done" in err and sum(line.startswith("tune: trial ") for line in err.splitlines()) == 2
    assert len({(r["lr"], r["dropout"]) for r in again}) == 5  # no repeated draws on resume
    confirm = read_csv(folder / "confirm" / "results.csv")
    assert {r["seed"] for r in confirm} == {"1", "2"} and {r["split"] for r in confirm} == {"train", "val", "test"}
    best = json.loads((folder / "best.json").read_text())
    tests = [float(r["value"]) for r in confirm if r["task"] in "AB" and r["split"] == "test" and r["metric"] == "auc"]
    assert len(tests) == 4 and "test auc" in out and "val auc" in out
    assert (folder / "confirm" / "seed1" / "model.safetensors").exists()


def test_trials_behind_the_median_are_pruned(tmp_path, mols, capsys):
    """Every trial reports its validation AUC after each epoch; after five completed trials, one whose value at
    an epoch (from the second on) is below the median of the earlier completed trials' stops there."""
    folder = tune(tmp_path, mols, "trials=8", "epochs=4", "patience=0")
    study = optuna.load_study(study_name=folder.name, storage=open_storage(f"sqlite:///{folder / 'study.db'}"))
    trials = study.get_trials()
    assert [t.state.name for t in trials[:5]] == ["COMPLETE"] * 5  # no pruning before five completed trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in trials if t.state.name == "COMPLETE")
    for t in pruned:
        step = max(t.intermediate_values)
        assert 2 <= step < 4
        earlier = [u.intermediate_values[step] for u in trials[:t.number] if u.state.name == "COMPLETE"]
        assert max(t.intermediate_values.values()) < np.median(earlier)
    err = capsys.readouterr().err
    assert all(f"tune: trial {t.number} pruned after epoch {max(t.intermediate_values)}" in err for t in pruned)


def test_a_resumed_study_keeps_its_keys(tmp_path, mols, capsys):
    tune(tmp_path, mols, "trials=1", "space=lr")
    with pytest.raises(SystemExit) as exit_info:
        tune(tmp_path, mols, "trials=2", "space=lr,dropout")
    assert exit_info.value.code == 2
    assert "was started with other space" in capsys.readouterr().err


@pytest.mark.parametrize("keys, message", [
    (("trials=0",), "trials=0"),
    (("storage=nonsense",), "storage=nonsense: not a database URL"),
    (("storage=nosuchdb://x/y",), "storage=nosuchdb://x/y"),
    (("space=lr,nosuchkey",), "nosuchkey has no search range"),
    (("space=lr", "lr=0.01"), "lr is set on the command line and named in space="),
    (("nosuchkey=1",), "unknown key 'nosuchkey'"),
    (("workers=0",), "workers=0"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, mols, capsys, keys, message):
    with pytest.raises(SystemExit) as exit_info:
        tune(tmp_path, mols, *keys)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("manytask: error:") and message in err[0]
    assert not (tmp_path / "runs").exists()


def test_unknown_method_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "tox21", "nosuchmethod", "--out", str(tmp_path / "runs")])
    assert exit_info.value.code == 2 and "nosuchmethod" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_recipe_of_another_method_or_missing_is_refused(tmp_path, mols, capsys):
    recipe = tmp_path / "best.json"
    recipe.write_text(json.dumps({"method": "stl", "keys": {"lr": 0.01}}))
    for path, message in ((recipe, "was tuned for stl, not hard_sharing"), (tmp_path / "no.json", "no such file")):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "moleculenet", "hard_sharing", f"data.path={mols}", f"recipe={path}",
                  "--out", str(tmp_path / "runs")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials made by hand, not by Study.optimize
def test_running_trials_of_ended_local_workers_are_failed(tmp_path):
    """A RUNNING trial whose process on this host has ended becomes FAIL; one of a live process, or of
    another host (left to the heartbeat), stays RUNNING."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    ended = subprocess.Popen(["true"])
    ended.wait()
    owners = [(socket.gethostname(), ended.pid), (socket.gethostname(), os.getpid()), ("elsewhere", ended.pid)]
    for host, pid in owners:
        trial = study.ask()
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
    assert fail_lost_trials(study, storage) == [0]
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "RUNNING", "RUNNING"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_of_another_host_without_heartbeat_for_the_grace_period_is_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_module, "GRACE", 1)
    monkeypatch.setattr(tune_module, "HEARTBEAT", 1)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.set_user_attr("host", "elsewhere")
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), 0))
    fail_lost_trials(study, storage)
    assert study.get_trials()[0].state.name == "RUNNING"  # its heartbeat is recent
    time.sleep(2.2)
    fail_lost_trials(study, storage)
    assert study.get_trials()[0].state.name == "FAIL"


def test_two_workers_share_the_study_and_a_killed_worker_loses_only_its_trial(tmp_path, mols):
    folder = tmp_path / "runs" / "tune-moleculenet-hard_sharing"
    command = [sys.executable, "-m", "manytask", "tune", "moleculenet", "hard_sharing", f"data.path={mols}",
               *TINY[:2], "epochs=15", "patience=0", "widths=16", "trials=5", "workers=2", "prune=false",
               "--out", str(tmp_path / "runs")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            with sqlite3.connect(folder / "study.db", timeout=30) as db:
                running = db.execute("SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a ON "
                                     "a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'pid'").fetchall()
        except sqlite3.OperationalError:  # not created yet
            continue
        if running:
            killed = (running[0][0], json.loads(running[0][1]))
            os.kill(killed[1], signal.SIGKILL)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err
    assert killed is not None
    storage = open_storage(f"sqlite:///{folder / 'study.db'}")
    trials = optuna.load_study(study_name=folder.name, storage=storage).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states[killed[0]] == "FAIL" and list(states.values()).count("FAIL") == 1
    assert list(states.values()).count("COMPLETE") == 5 and len(trials) == 6  # the others took over its share
    assert sorted(states) == list(range(6))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # no two trials drew the same keys
    assert len({t.user_attrs["pid"] for t in trials}) == 2 and killed[1] in {t.user_attrs["pid"] for t in trials}
    assert len(read_csv(folder / "trials.csv")) == 6


def test_terminating_the_tune_ends_its_workers(tmp_path, mols):
    """kill PID of a tune with workers=2 ends the worker processes too, instead of leaving them training."""
    command = [sys.executable, "-m", "manytask", "tune", "moleculenet", "hard_sharing", f"data.path={mols}",
               *TINY[:2], "epochs=1000000", "patience=0", "widths=16", "trials=4", "workers=2", "prune=false",
               "--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def running(pid: int) -> bool:  # a process that has ended may stay a zombie until its new parent reaps it
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    pids, deadline = [], time.monotonic() + 120
    try:
        while not pids and time.monotonic() < deadline:  # the line "tune: 2 workers, pids A, B"
            line = proc.stderr.readline()
            if "workers, pids" in line:
                pids = [int(p) for p in line.split("pids")[1].split(",")]
        assert len(pids) == 2
        time.sleep(2)  # the workers are training
        assert all(map(running, pids))
        proc.terminate()
        assert proc.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while any(map(running, pids)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(running, pids))
    finally:
        for pid in [proc.pid, *pids]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_tune_on_graphs_keeps_the_graph_defaults_and_the_data_keys_for_its_recipe(tmp_path):
    """The trials of hard sharing on graphs train with its graph recipe where the space does not search: the
    recipe holds those keys, and the printed command gives the data keys back (the recipe holds none)."""
    p = tune_module.plan("tox21", "hard_sharing", ["data.encoder=dmpnn", "epochs=7"], tmp_path / "tunes")
    keys = p.recipe_keys()
    assert keys["epochs"] == 7 and keys["lr_schedule"] == "noam" and keys["encoder_aggregation"] == "mean"
    assert p.data_keys() == "data.encoder=dmpnn "
    assert tune_module.plan("tox21", "hard_sharing", ["epochs=7"], tmp_path / "tunes").recipe_keys() == {"epochs": 7}
