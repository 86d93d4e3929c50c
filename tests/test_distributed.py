"""Several processes train what one process trains: 2 CPU processes (gloo, torch.multiprocessing) against a
single process with the same global minibatch, for every registered method.

The training split has 77 rows and batches of 16: the last global minibatch (13 rows) splits 7/6 over the
processes, and one task has missing labels, so the loss weights of each share (Trainer.share_weights) are
exercised. Dropout is off: the processes draw dropout masks of their own, one process draws them for the
whole minibatch at once."""
from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manytask import distributed
from manytask.registry import METHODS, load_all
from manytask.runs import RunSpec, build
from manytask.train import TrainConfig, Trainer, TrainingInterrupted, seed_everything

from .conftest import tiny_shared

load_all()
METHOD_KEYS = {  # small, dropout off; MUiR: two EA generations and its task moves within the run
    "hard_sharing": {"dropout": 0.0, "widths": (16, 16)},
    "stl": {"dropout": 0.0, "widths": (8,)},
    "icnn": {"dropout": 0.0},
    "rsn2": {"widths": (32, 32)},
    "soft_order": {"dropout": 0.0},
    "muir": {"dropout": 0.0, "widths": (16,), "block": (4, 4), "steps_per_generation": 3, "generations": 2, "refit_steps": 2},
    "evolving": {"noise": 0.0},
}
# Float reductions: a process's share is summed in another order than the whole minibatch, and DDP's
# all-reduce adds the halves: differences of a few float32 ulps, grown by the Adam steps. MUiR's EA makes
# discrete choices (select, task moves) on these weights; the test asserts it makes the same ones.
ATOL = 1e-5


def spec_for(method: str, epochs: int = 2) -> RunSpec:
    cfg = dataclasses.replace(METHODS[method].config(), **{k: v for k, v in METHOD_KEYS[method].items()
                                                           if k in {f.name for f in dataclasses.fields(METHODS[method].config)}})
    return RunSpec("tiny", method, None, cfg, TrainConfig(epochs=epochs, batch_size=16, patience=0, progress=False,
                                                          lr=3e-3, seed=0))


def data():
    return tiny_shared(n=77, seed=3)


def trained(method: str, interrupt_at: int = 0) -> dict:
    """Train `method` on the tiny data (in this process, or as one process of the group) -> its weights
    and what the run recorded."""
    seed_everything(0)
    d = data()
    spec = spec_for(method)
    model, hooks = build(spec, d)
    tr = Trainer(model, d, spec.train, hooks)
    if interrupt_at:  # a signal in process 1 only, at its step `interrupt_at`
        step = hooks.after_step

        def after_step(trainer):
            step(trainer)
            if distributed.rank() == 1 and trainer.step == interrupt_at:
                trainer.interrupt = signal.SIGTERM
        hooks.after_step = after_step
        try:
            tr.fit()
        except TrainingInterrupted as e:
            return {"interrupted": (e.signum, tr.step)}
        return {"interrupted": None}
    tr.fit()
    return {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "history": tr.history, "samples": tr.samples_seen, "extra": getattr(hooks, "history", None)}


def staged() -> dict:
    """RSN2 in two stages (task bin, then the others) -> the test predictions of every task after each stage."""
    from manytask.train import predict_split, train_stages
    seed_everything(0)
    d = data()
    spec = spec_for("rsn2")
    model, hooks = build(spec, d)
    by_name = {t.name: t for t in d.tasks}
    stages = [[by_name["bin"]], [by_name["multi"], by_name["reg"]]]
    out = []
    train_stages(model, hooks, d, stages, [spec.train, spec.train],
                 on_stage=lambda i: out.append(predict_split(model, d.test, d.tasks)))
    return {"after": out}


def resumed() -> dict:
    """hard_sharing WITH dropout for 3 epochs, and again from the state taken after epoch 1 -> both weights."""
    import copy
    d = data()
    spec = dataclasses.replace(spec_for("hard_sharing", epochs=3),
                               method_cfg=METHODS["hard_sharing"].config(widths=(16, 16), dropout=0.25))
    seed_everything(0)
    model, hooks = build(spec, d)
    states = []
    tr = Trainer(model, d, spec.train, hooks, checkpoint=lambda t: states.append(copy.deepcopy(t.state_dict())))
    tr.fit()
    seed_everything(0)
    model2, hooks2 = build(spec, d)
    Trainer(model2, d, spec.train, hooks2).fit(resume=states[0])
    return {"straight": model.state_dict(), "resumed": model2.state_dict(), "ranks": len(states[0]["random_ranks"])}


def icnn_isolation() -> dict:
    """ICNN trained by SGD with only task bin labelled: the weight changes of the other subnetworks (the
    isolation rule of its custom backward, in every process, averaged by DDP)."""
    d = data()
    for t in ("multi", "reg"):
        d.train.labels[t][:] = float("nan")
    spec = RunSpec("tiny", "icnn", None, METHODS["icnn"].config(widths=(8, 6), dropout=0.0),
                   TrainConfig(epochs=1, batch_size=16, patience=0, progress=False, optimizer="sgd", momentum=0.0, lr=0.1))
    seed_everything(0)
    model, hooks = build(spec, d)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, d, spec.train, hooks).fit()
    after = model.state_dict()
    first = (after["first.weight"] - before["first.weight"]).reshape(3, 8, -1)
    inter = after["inter.0.weight"] - before["inter.0.weight"]  # (N_dst, N_src, n, m)
    return {"own": int(torch.count_nonzero(first[0]) + torch.count_nonzero(inter[0])),
            "others": int(torch.count_nonzero(first[1:]) + torch.count_nonzero(inter[1:]))}


def worker(rank: int, world: int, init: str, out: str, methods: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        results = {m: trained(m) for m in methods}
        results["interrupt"] = trained("hard_sharing", interrupt_at=3)
        results["stages"] = staged()
        results["resume"] = resumed()
        results["isolation"] = icnn_isolation()
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """{method: result} of a 2-process run, for every registered method, from each process."""
    tmp = tmp_path_factory.mktemp("ddp")
    methods = sorted(METHODS)
    mp.start_processes(worker, args=(2, str(tmp / "init"), str(tmp / "out"), methods), nprocs=2, start_method="spawn")
    return [torch.load(f"{tmp / 'out'}.{r}", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("method", sorted(METHOD_KEYS))
def test_two_processes_train_what_one_process_trains(two_processes, method):
    one = trained(method)
    for rank, results in enumerate(two_processes):
        got = results[method]
        assert got["samples"] == one["samples"], "the global minibatches cover the split once per epoch"
        assert [r["epoch"] for r in got["history"]] == [r["epoch"] for r in one["history"]]
        for row_got, row_one in zip(got["history"], one["history"]):
            assert row_got["val_loss"] == pytest.approx(row_one["val_loss"], abs=1e-4)
            assert row_got["train_loss"] == pytest.approx(row_one["train_loss"], abs=1e-4)
        for name, w in one["weights"].items():
            torch.testing.assert_close(got["weights"][name], w, atol=ATOL, rtol=0, msg=f"{method} rank {rank}: {name}")
    if one["extra"] is not None:  # MUiR: the same EA decisions (changes, moves, sharing) in every process
        for results in two_processes:
            assert [(h["changed"], h["moved"], h["subsets"]) for h in results[method]["extra"]] == \
                   [(h["changed"], h["moved"], h["subsets"]) for h in one["extra"]]


def test_rsn2_earlier_subnetworks_stay_bit_identical_during_a_distributed_later_stage(two_processes):
    one = staged()["after"]
    for results in two_processes:
        first, second = results["stages"]["after"]
        assert torch.equal(first["bin"], second["bin"]), "stage 2 changed the subnetwork of stage 1"
        assert not torch.equal(first["reg"], second["reg"]), "stage 2 trained its own subnetworks"
        for t in ("bin", "multi", "reg"):
            torch.testing.assert_close(second[t], one[1][t], atol=ATOL, rtol=0)


def test_a_resumed_distributed_run_ends_where_the_uninterrupted_one_ends(two_processes):
    """With dropout: every process's random state is in the checkpoint, so the masks continue exactly."""
    for results in two_processes:
        r = results["resume"]
        assert r["ranks"] == 2
        for name, w in r["straight"].items():
            assert torch.equal(r["resumed"][name], w), name


def test_icnn_isolation_holds_in_every_process(two_processes):
    for results in two_processes:
        assert results["isolation"]["own"] > 0 and results["isolation"]["others"] == 0


def test_every_method_is_covered():
    assert set(METHOD_KEYS) == set(METHODS)


def test_a_signal_in_one_process_stops_every_process_at_the_same_step(two_processes):
    got = [r["interrupt"]["interrupted"] for r in two_processes]
    assert got[0] == got[1] == (signal.SIGTERM, 4)  # seen by the others at the next step's all-reduce


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.start()
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.broadcast({"a": 1}) == {"a": 1} and distributed.gather(3) == [3]
    assert os.environ.get("WORLD_SIZE") is None


def test_nproc_2_writes_one_run_directory_with_the_single_process_test_metrics(tmp_path, mols):
    """`manytask train ... nproc=2` starts torchrun (python -m torch.distributed.run -m manytask ...): one run
    directory, written by rank 0, with the test metrics of one process training the same global minibatches."""
    import json
    import subprocess
    import sys
    keys = [f"data.path={mols}", "widths=16", "dropout=0", "epochs=3", "batch_size=16", "patience=0", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, extra in (("one", []), ("two", ["nproc=2"])):
        r = subprocess.run([sys.executable, "-m", "manytask", "train", "moleculenet", "hard_sharing", *keys, *extra,
                            "--out", str(tmp_path / name)], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    (one,), (two,) = [list((tmp_path / n).iterdir()) for n in ("one", "two")]  # ONE directory each
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    for task, row in a["splits"]["test"].items():
        assert b["splits"]["test"][task]["auc"] == pytest.approx(row["auc"], abs=0.01)
        assert b["splits"]["test"][task]["loss"] == pytest.approx(row["loss"], abs=1e-4)
    assert b["samples_per_second"] > 0 and json.loads((two / "run.json").read_text())["status"] == "completed"


def test_only_train_runs_under_torchrun(tmp_path):
    import subprocess
    import sys
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    r = subprocess.run([sys.executable, "-m", "manytask", "compare", "tox21", "hard_sharing,stl", "--out",
                        str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "runs in one process; under torchrun use `manytask train`" in r.stderr
    assert not (tmp_path / "runs").exists()
    bad = subprocess.run([sys.executable, "-m", "manytask", "train", "tox21", "hard_sharing", "nproc=zero"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "nproc=zero: give the number of training processes" in bad.stderr
    assert not (tmp_path / "runs").exists()
