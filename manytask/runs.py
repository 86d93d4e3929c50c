"""Runs: resolve a config, train, and write one new directory that evaluate and predict can reload.

A run directory holds
    run.json        status: running, then completed, interrupted or failed (with the epoch and the reason);
                    the versions of manytask, torch and Python, the command line, host, pid, start and end
                    times; rewritten atomically when the run starts and whenever its status changes
    config.json     data set, method, the three resolved configs (data, method, train; data paths absolute),
                    and the model's tasks and input shapes, from which predict rebuilds the model without data
    metrics.jsonl   one JSON line per finished epoch
    checkpoint.safetensors  the training state after the last finished epoch, for --resume; removed when the
                    run completes
    results.json    per-task metrics for every split, their means and how many tasks each mean covers
                    (mean_tasks: the tasks with a defined value), epochs, timing, parameter count
    results.csv     the same in the long format of every result: contender (the method), seed, task, split,
                    metric, value
    model.safetensors  the weights (and buffers such as masks); of an interrupted run, the best so far
    curves.png      training and validation curves
    NAME.csv/.png   the matrices of the model's optional artifacts() -> (figures, [report.Matrix]), e.g.
                    mixing weights; the figures dict goes to results.json as "artifacts"
An existing directory is never overwritten: a name that is taken gets a -2, -3, ... suffix.

An ensemble run (training key ensemble=K, seed=S) trains K members with seeds S, S+1, ..., S+K-1 on the same
data and split (the split is a data key), one after another, each as a run of its own in members/seedS+j/ (a
complete run directory, ensemble=1). The ensemble's directory holds run.json, config.json, results.json
and results.csv, whose tables come from the members' averaged predictions (Ensemble); no weights of its own.
evaluate_run, Predictor and load_run average the members; resume_run keeps the finished members and resumes
the interrupted one from its last checkpoint.

A run that ends early says so in run.json and raises RunStopped: SIGINT or SIGTERM stop it after the current
minibatch (status interrupted; model.safetensors holds the best weights so far, and resume_run, i.e.
`manytask train DATA METHOD --resume DIR`, continues from the last finished epoch and ends where an
uninterrupted run would); a non-finite training loss or non-finite weights fail it (status failed, no model.safetensors).

The training key metric= picks the primary metric (choose_metric): what the tables, the progress line, `manytask
runs` and comparisons show. Where a split leaves a task's primary metric undefined (e.g. ROC-AUC of a task
with one class only), a run logs one line per split when it ends, naming those tasks (metrics.undefined_note).
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import logging
import math
import os
import platform
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .nn.dmpnn import check_graph_method
from .files import replacing, write_text
from .config import ConfigError, apply, did_you_mean, field_types, from_dict, to_dict
from .data.base import MultiTaskData
from .metrics import IN_TARGET_UNITS, covered, mean_over_tasks, primary, scales_differ, undefined_note
from .registry import get_dataset, get_method
from .report import mean_label, plot_history, text_table, write_matrix, write_results
from .tasks import METRICS, Task
from .train import (Hooks, TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted, evaluate_split, resolve_device,
                    seed_everything, stop_on_signals)

log = logging.getLogger("manytask")
SPLITS = ("train", "val", "test")
RUN_FILE, CONFIG_FILE, CHECKPOINT, WEIGHTS = "run.json", "config.json", "checkpoint.safetensors", "model.safetensors"
PATH_KEYS = ("path", "dir")  # data config keys naming a file or folder: stored absolute
# where the data is, how to run and what to report: may change on resume
RESUME_KEYS = ("data.path", "data.dir", "device", "progress", "metric")


@dataclass
class RunSpec:
    """Everything needed to rebuild a run: names plus the three resolved configs."""

    data: str
    method: str
    data_cfg: Any
    method_cfg: Any
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> dict:
        return {"data": self.data, "method": self.method, "data_cfg": to_dict(self.data_cfg),
                "method_cfg": to_dict(self.method_cfg), "train": to_dict(self.train)}

    @classmethod
    def from_json(cls, d: dict) -> "RunSpec":
        return cls(d["data"], d["method"], from_dict(get_dataset(d["data"]).config, d["data_cfg"]),
                   from_dict(get_method(d["method"]).config, d["method_cfg"]), from_dict(TrainConfig, d["train"]))


def resolve(data: str, method: str, overrides: dict[str, str], base: RunSpec | None = None) -> RunSpec:
    """Defaults (or the configs of `base`) plus overrides. `data.k=v` sets the data config, `method.k=v` the
    method's; a bare key goes to the training config if it has it, else to the method's config. Training keys
    not given take the method's training defaults (method_training); on graphs (data.encoder=dmpnn) keys not
    given first take the method's `graph_defaults` (a class attribute of its config, if any). Relative data
    paths (data.path, data.dir) become absolute, so that the run directory finds its data from anywhere."""
    data_cls, method_cls = get_dataset(data).config, get_method(method).config
    train_keys, method_keys = field_types(TrainConfig), field_types(method_cls)
    data_values, method_values, train_values = {}, {}, {}
    for key, value in overrides.items():
        if key.startswith("data."):
            data_values[key[5:]] = value
        elif key.startswith("method."):
            method_values[key[7:]] = value
        elif key in train_keys:
            train_values[key] = value
        elif key in method_keys:
            method_values[key] = value
        else:
            valid = sorted(train_keys) + sorted(method_keys) + [f"data.{x}" for x in sorted(field_types(data_cls))]
            raise ConfigError(f"unknown key {key!r} for {data}/{method}{did_you_mean(key, valid)}; "
                              f"valid keys: {', '.join(valid)}")
    data_cfg = apply(base.data_cfg if base else data_cls(), data_values, f"{data} data", prefix="data.")
    if base is None:  # the method's recipe on graphs, if any
        graph = graph_defaults(method_cls, data_cfg)
        train_values = {**{k: v for k, v in graph.items() if k in train_keys}, **train_values}
        method_values = {**{k: v for k, v in graph.items() if k not in train_keys}, **method_values}
    paths = {k: os.path.abspath(os.path.expanduser(getattr(data_cfg, k))) for k in PATH_KEYS
             if k in field_types(data_cls) and getattr(data_cfg, k)}
    return RunSpec(data, method, dataclasses.replace(data_cfg, **paths),
                   apply(base.method_cfg if base else method_cls(), method_values, f"{method} method"),
                   apply(base.train if base else method_training(method), train_values, "training"))


def graph_defaults(method_cls: type, data_cfg: Any) -> dict[str, Any]:
    """The keys a method defaults to on graphs (its config's `graph_defaults`) when `data_cfg` gives molecule
    graphs (data.encoder=dmpnn); {} otherwise."""
    return getattr(method_cls, "graph_defaults", {}) if getattr(data_cfg, "encoder", None) == "dmpnn" else {}


def method_training(method: str) -> TrainConfig:
    """The training defaults of `method`: TrainConfig's, with the keys its config's `train_defaults`
    (a class attribute, if any) sets; what `manytask list METHOD` shows."""
    return apply(TrainConfig(), getattr(get_method(method).config, "train_defaults", {}), f"{method} training")


def load_dataset(name: str, **cfg: Any) -> MultiTaskData:
    """A registered data set. cfg: its keys (`manytask list NAME`) as typed values or text; an unknown key
    or a value outside its range is a ConfigError naming the valid keys or values.

        data = load_dataset("tox21", bits=1024, split="scaffold")
    """
    entry = get_dataset(name)
    return entry.fn(apply(entry.config(), cfg, f"{name} data"))


def create_model(name: str, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]],
                 **cfg: Any) -> tuple[nn.Module, Hooks]:
    """A registered method's model for `tasks` and the hooks it trains with (default Hooks()).
    input_shapes: {input name: shape of one example}, as MultiTaskData.input_shapes. cfg: the method's keys
    (`manytask list NAME`) as typed values or text; an unknown key or a value outside its range is a
    ConfigError naming the valid keys or values. Seeds nothing: for repeatable weights seed first
    (train.seed_everything).

        model, hooks = create_model("hard_sharing", data.tasks, data.input_shapes, widths=(256, 128))
    """
    entry = get_method(name)
    check_graph_method(name, entry.config, input_shapes)
    built = entry.fn(list(tasks), dict(input_shapes), apply(entry.config(), cfg, f"{name} method"))
    return built if isinstance(built, tuple) else (built, Hooks())


def load_data(spec: RunSpec) -> MultiTaskData:
    return load_dataset(spec.data, **fields_of(spec.data_cfg))


def choose_metric(data: MultiTaskData, metric: str) -> MultiTaskData:
    """`data` with the primary metric `metric` (a TrainConfig.metric value) for every task whose kind has it;
    the others, and all with auto, get their kind's default. A metric no task has is a ConfigError."""
    fits = [t for t in data.tasks if metric in METRICS[t.kind]]
    if metric != "auto" and not fits:
        kinds = sorted({t.kind for t in data.tasks})
        valid = ["auto", *dict.fromkeys(m for k in kinds for m in METRICS[k])]
        raise ConfigError(f"metric={metric}: the {' and '.join(kinds)} tasks of {data.name} have no {metric}; "
                          f"use one of {', '.join(valid)}")
    tasks = [dataclasses.replace(t, metric=metric if t in fits else "") for t in data.tasks]
    return data if tasks == data.tasks else dataclasses.replace(data, tasks=tasks)


def build(spec: RunSpec, data: MultiTaskData) -> tuple[nn.Module, Hooks]:
    """The method's model (seeded by train.seed) and its training hooks."""
    return build_model(spec, data.tasks, data.input_shapes)


def build_model(spec: RunSpec, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]]) -> tuple[nn.Module, Hooks]:
    seed_everything(spec.train.seed)
    return create_model(spec.method, tasks, input_shapes, **fields_of(spec.method_cfg))


def model_card(data: MultiTaskData) -> dict:
    """What rebuilds the model without the data: the tasks (name, kind, outputs, input; a multiclass task's
    outputs are the classes 0..C-1 of its label column) and the shape of one example of each input."""
    return {"tasks": [dataclasses.asdict(t) for t in data.tasks],
            "input_shapes": {k: list(v) for k, v in data.input_shapes.items()}}


def fields_of(cfg: Any) -> dict[str, Any]:
    """A config dataclass's field values by name (not recursing into nested dataclasses, unlike asdict)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def new_run_dir(root: Path | str, stem: str) -> Path:
    """A fresh directory root/stem (or stem-2, stem-3, ...); never an existing one."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file, or a folder that cannot be made
        raise ConfigError(f"--out {root}: cannot make a folder there ({e.strerror}); give a folder for the runs") from None
    for i in range(1, 10_000):
        path = root / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run directory name for {stem} under {root}")


def evaluate_all(model: nn.Module, data: MultiTaskData, train_cfg: TrainConfig) -> dict[str, dict[str, dict]]:
    model.to("cpu")
    return {s: evaluate_split(model, data.split(s), data.tasks, train_cfg.eval_batch_size, "cpu")[0] for s in SPLITS}


def records(label: str, seed: int, tables: dict[str, dict[str, dict]]) -> list[tuple]:
    """{split: {task: {metric: value}}} -> rows of results.csv: (label, seed, task, split, metric, value)."""
    return [(label, seed, task, split, metric, value)
            for split, table in tables.items() for task, ms in table.items() for metric, value in ms.items()]


def task_table(data: MultiTaskData, tables: dict[str, dict[str, dict]]) -> str:
    """Per-task primary metric on every split, plus one mean row per primary metric, labelled with the tasks
    it covers on each split ("mean over 602 of 617 tasks"; "617/610/602 of 617" when the splits differ). A mean
    RMSE or MSE over regression targets of different scales gets a mean nrmse row below it."""
    rows = [(t.name, primary(t), *(tables[s][t.name][primary(t)] for s in SPLITS)) for t in data.tasks]
    for m in sorted({primary(t) for t in data.tasks}):
        ts = [t for t in data.tasks if primary(t) == m]
        for shown in (m, "nrmse") if m in IN_TARGET_UNITS and scales_differ(ts) else (m,):  # nrmse: scale-free
            rows.append((mean_label([covered(tables[s], ts, shown) for s in SPLITS], len(ts)), shown,
                         *(mean_over_tasks(tables[s], ts)[shown] for s in SPLITS)))
    return text_table(("task", "metric", *SPLITS), rows)


def log_undefined(tables: dict[str, dict[str, dict]], tasks: list[Task]) -> None:
    """One warning per split that leaves some task's primary metric undefined (metrics.undefined_note)."""
    for s in SPLITS:
        note = undefined_note(s, tables[s], tasks)
        if note:
            log.warning(note)


def mean_coverage(tables: dict[str, dict[str, dict]], tasks: list[Task]) -> dict[str, dict[str, int]]:
    """{split: {metric: how many tasks have a defined value}}: what each of results.json's means covers."""
    return {s: {m: covered(tables[s], tasks, m) for m in mean_over_tasks(tables[s], tasks)} for s in tables}


# ---- files written safely: run.json, checkpoints ------------------------------------------------------------

def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def save_weights(model: nn.Module, path: Path) -> None:
    with replacing(path) as tmp:
        save_model(model, str(tmp))


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def start_record(run_dir: Path, previous: dict | None = None, **resumed: Any) -> dict:
    """run.json of a run starting in this process (status running); `previous`: the run.json of the
    attempt this one resumes (kept under "previous"); `resumed`: where it goes on, e.g. resumed_from_epoch=3."""
    from . import __version__
    info = {"status": "running", "started": now(), "ended": None, "argv": list(sys.argv),
            "host": socket.gethostname(), "pid": os.getpid(),
            "versions": {"manytask": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()}}
    if previous is not None:
        info.update(**resumed, previous=previous.pop("previous", []) + [previous])
    write_json(run_dir / RUN_FILE, info)
    return info


def end_record(run_dir: Path, info: dict, status: str, **details: Any) -> None:
    info.update(status=status, ended=now(), **details)
    write_json(run_dir / RUN_FILE, info)


def read_record(run_dir: Path) -> dict:
    """run.json ({} for a run directory written before run.json existed)."""
    return read_json(Path(run_dir) / RUN_FILE) if (Path(run_dir) / RUN_FILE).exists() else {}


def read_json(path: Path) -> Any:
    """A run directory's JSON file; one that is not JSON (edited, damaged) is a ConfigError naming it."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not readable JSON ({e}); was it edited or damaged?") from None


def process_alive(pid: int, argv: list[str]) -> bool:
    """Whether process `pid` of this host still runs the command line `argv` (a reused pid runs another)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    args = argv[1:]
    running = cmdline.read_bytes().decode(errors="replace").split("\0")[:-1]
    return bool(running) and (not args or running[-len(args):] == args)


def shown_status(info: dict) -> str:
    """run.json's status, except for a run marked running whose process is gone: `dead` when it ran on this
    host, `running?` when it runs on another host, where its process cannot be checked from here."""
    status = info.get("status", "unknown")
    if status != "running":
        return status
    if info.get("host") != socket.gethostname():
        return "running?"
    return "running" if process_alive(info["pid"], info.get("argv", [])) else "dead"


def save_checkpoint(trainer: Trainer, path: Path) -> None:
    """trainer.state_dict() -> one safetensors file, written atomically: the tensors, and the structure around
    them (dicts, lists, tuples, numbers, strings) as JSON in the file's metadata. No pickle: loading a
    checkpoint runs no code."""
    tensors: dict[str, torch.Tensor] = {}
    layout = _pack(trainer.state_dict(), tensors, "")
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata={"manytask.state": json.dumps(layout)})


def load_checkpoint(path: Path) -> dict:
    """The state_dict() that save_checkpoint wrote (tensors on the CPU)."""
    try:
        with safe_open(str(path), "pt") as f:
            layout = json.loads(f.metadata()["manytask.state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error, missing metadata, bad JSON
        raise ConfigError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                          "the run cannot be resumed: train a new run") from None
    return _unpack(layout, tensors)


def _pack(value: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """A state of nested dicts, lists, tuples, tensors and JSON scalars -> JSON, with each tensor moved to
    `tensors` (under its path, e.g. optimizer.state.0.exp_avg) and replaced by {"tensor": path}. Dicts
    become {"dict": [[key, value], ...]} (int keys stay int), tuples {"tuple": [...]}."""
    if isinstance(value, torch.Tensor):
        key = name if name not in tensors else f"{name}#{len(tensors)}"
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[k, _pack(v, tensors, f"{name}.{k}" if name else str(k))] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_pack(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint holds tensors and JSON values; {name} is a {type(value).__name__}")


def _unpack(layout: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(layout, list):
        return [_unpack(v, tensors) for v in layout]
    if isinstance(layout, dict):
        (kind, body), = layout.items()
        if kind == "tensor":
            return tensors[body]
        if kind == "tuple":
            return tuple(_unpack(v, tensors) for v in body)
        return {k: _unpack(v, tensors) for k, v in body}
    return layout


# ---- training a run ----------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """A trained run. Of an ensemble: model is the Ensemble, trainer the last member's trained in this process
    (None when every member had completed before), members the members' RunResults (trainer None for a member
    that had completed before: its model and tables are loaded from its directory)."""
    dir: Path | None
    spec: RunSpec
    tables: dict[str, dict[str, dict]]
    summary: dict
    model: nn.Module
    trainer: Trainer | None
    members: list["RunResult"] = field(default_factory=list)


class RunStopped(Exception):
    """A run ended before its last epoch, and its directory says so (run.json). str(): the one line for the
    user; exit_status: 130 (SIGINT), 143 (SIGTERM) or 1 (training failed)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def train_run(spec: RunSpec, data: MultiTaskData | None = None, out: Path | str | None = "runs",
              name: str | None = None, echo: bool = True,
              on_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """Train one method on one data set; with `out`, write a new run directory under it (every setting is
    checked first: a bad one leaves no directory), saving a checkpoint every epoch. There SIGINT and SIGTERM
    stop training after the current minibatch: RunStopped, run interrupted, resumable with resume_run.
    on_epoch(row): called with each validated epoch's metrics row (e.g. to prune a tuning trial).
    Under torchrun every process trains its share (manytask.distributed) and only rank 0 writes.
    With ensemble=K > 1: train_ensemble."""
    if spec.train.ensemble > 1:
        return train_ensemble(spec, data, out, name, echo, on_epoch)
    distributed.start(spec.train.device)
    with distributed.local_main_first():  # featurise once per machine into the cache
        data = choose_metric(data or load_data(spec), spec.train.metric)
    check_splits(data)
    model, hooks = build(spec, data)
    resolve_device(spec.train.device)
    if not out or not distributed.is_main():
        return _train(spec, data, model, hooks, None, echo and distributed.is_main(), on_epoch=on_epoch)
    run_dir = new_run_dir(out, name or f"{spec.data}-{spec.method}-seed{spec.train.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    write_json(run_dir / CONFIG_FILE, {**spec.to_json(), "model": model_card(data)})
    (run_dir / "metrics.jsonl").touch()
    return _train(spec, data, model, hooks, run_dir, echo, start_record(run_dir), on_epoch=on_epoch)


def check_run(spec: RunSpec) -> None:
    """Everything train_run checks before it writes (the data loads, every split has examples, the method
    builds, the device exists): a ConfigError if not. The features land in the cache."""
    data = choose_metric(load_data(spec), spec.train.metric)
    check_splits(data)
    build(spec, data)
    resolve_device(spec.train.device)


def check_splits(data: MultiTaskData) -> None:
    """Every split holds examples of every input: training, early stopping and the results need all three."""
    for split in SPLITS:
        empty = [k for k, v in data.split(split).inputs.items() if v.shape[0] == 0]
        if empty:
            raise ConfigError(f"{data.name}: the {split} split is empty"
                              + ("" if data.shared_input else f" (input {empty[0]})")
                              + "; every split needs examples: give data.fractions three values > 0, or add rows")


def resume_run(run_dir: Path | str, data: str, method: str, overrides: dict[str, str] | None = None,
               echo: bool = True) -> RunResult:
    """Continue an interrupted run (or one whose process died) in its own directory, from its last finished
    epoch with the saved optimizer and random state: it ends where an uninterrupted run would. `data`,
    `method` and `overrides` must agree with the saved config, except data.path, data.dir (the data moved),
    device and progress."""
    run_dir = Path(run_dir)
    saved, info = read_spec(run_dir), read_record(run_dir)
    status = shown_status(info)
    if status not in ("interrupted", "dead"):
        raise ConfigError(f"{run_dir}: {not_resumable(info, status)}")
    if (data, method) != (saved.data, saved.method):
        raise ConfigError(f"{run_dir} is a {saved.method} run on {saved.data}; resume it with "
                          f"{resume_command(saved, run_dir)}")
    spec = resolve(data, method, overrides or {}, base=saved)
    old, new = flat_config(saved), flat_config(spec)
    changed = [k for k in new if new[k] != old[k] and k not in RESUME_KEYS]
    if changed:
        raise ConfigError(f"{changed[0]}={new[changed[0]]} differs from the run's {changed[0]}={old[changed[0]]}: a "
                          f"resumed run keeps its settings (only {', '.join(RESUME_KEYS)} may change); train a new run instead")
    if spec.train.ensemble > 1:
        return resume_ensemble(run_dir, spec, info, {k: v for k, v in (overrides or {}).items() if k in RESUME_KEYS},
                               echo)
    distributed.start(spec.train.device)
    with distributed.local_main_first():
        data_set = choose_metric(load_data(spec), spec.train.metric)
    check_splits(data_set)
    model, hooks = build(spec, data_set)
    resolve_device(spec.train.device)
    state = distributed.broadcast(  # rank 0's checkpoint: the run directory need not be on every machine
        load_checkpoint(run_dir / CHECKPOINT) if distributed.is_main() and (run_dir / CHECKPOINT).exists() else None)
    if not distributed.is_main():
        return _train(spec, data_set, model, hooks, None, False, resume=state)
    history, done = (state["history"], state["epoch"]) if state else ([], 0)
    write_json(run_dir / CONFIG_FILE, {**spec.to_json(), "model": model_card(data_set)})
    write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    if echo:
        print(f"resuming {run_dir} after epoch {done} of {spec.train.epochs}", file=sys.stderr)
    info = start_record(run_dir, info, resumed_from_epoch=done)
    return _train(spec, data_set, model, hooks, run_dir, echo, info, state)


def not_resumable(info: dict, status: str) -> str:
    if status == "completed":
        return "the run is completed; there is nothing to resume"
    if status == "failed":
        error = info.get("error", {})
        return (f"the run failed in epoch {error.get('epoch')} ({error.get('reason')}); resuming would fail the "
                "same way: train a new run with other settings")
    if status == "running":
        return f"the run is still running (pid {info['pid']}); stop it first (Ctrl-C, or kill {info['pid']})"
    if status == "running?":
        return (f"run.json says it runs on host {info.get('host')} (pid {info.get('pid')}), which cannot be "
                "checked from here; resume it on that host once that process has ended")
    return "it has no run.json (written by an older manytask), so it cannot be resumed"


def resume_command(spec: RunSpec, run_dir: Path) -> str:
    return f"manytask train {spec.data} {spec.method} --resume {shlex.quote(str(run_dir))}"


def flat_config(spec: RunSpec) -> dict[str, Any]:
    """{key as the user writes it (data.KEY, training and method keys): JSON value} of a spec."""
    d = json.loads(json.dumps(spec.to_json()))
    return {**{f"data.{k}": v for k, v in d["data_cfg"].items()}, **d["method_cfg"], **d["train"]}


def _train(spec: RunSpec, data: MultiTaskData, model: nn.Module, hooks: Hooks, run_dir: Path | None, echo: bool,
           info: dict | None = None, resume: dict | None = None,
           on_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """Fit (from `resume`, a checkpoint's state, when given), evaluate every split and write the results.
    With a run directory: metrics.jsonl and a checkpoint every epoch, SIGINT/SIGTERM caught during training,
    and run.json's status true however the run ends. Without one nothing is written; in a distributed run,
    signals are still caught so that every process stops after the same minibatch."""
    t0 = time.perf_counter()
    trainer = Trainer(model, data, spec.train if distributed.is_main() else quiet(spec.train), hooks)
    trainer.log = on_epoch if distributed.is_main() else None
    if run_dir is None:
        if not distributed.active():
            trainer.fit(resume)
        else:  # a process of a distributed run that writes nothing: it stops with the others on a signal
            with stop_on_signals(trainer):
                try:
                    trainer.fit(resume)
                except (TrainingInterrupted, TrainingDiverged) as e:  # rank 0 writes what happened
                    raise RunStopped(f"rank {distributed.rank()}: {e}",
                                     128 + e.signum if isinstance(e, TrainingInterrupted) else 1) from None
            if not distributed.is_main():
                return RunResult(None, spec, {}, {}, model, trainer)
        return _results(spec, data, trainer, None, time.perf_counter() - t0, echo)
    try:
        with open(run_dir / "metrics.jsonl", "a") as metrics, stop_on_signals(trainer):
            def log(row):
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                if on_epoch:
                    on_epoch(row)
            trainer.log = log
            trainer.checkpoint = lambda tr: save_checkpoint(tr, run_dir / CHECKPOINT)
            trainer.fit(resume)
        result = _results(spec, data, trainer, run_dir, time.perf_counter() - t0, echo)
    except TrainingInterrupted as e:
        weights = save_best_so_far(model, run_dir)
        end_record(run_dir, info, "interrupted",
                   interrupted={"epoch": e.epoch, "signal": signal.Signals(e.signum).name})
        raise RunStopped(f"{e}; {run_dir} holds {'the best weights so far and ' if weights else ''}"
                         f"{'a checkpoint' if e.epoch else 'no finished epoch'}; resume with: "
                         f"{resume_command(spec, run_dir)}", 128 + e.signum) from None
    except TrainingDiverged as e:
        end_record(run_dir, info, "failed", error={"epoch": e.epoch, "reason": str(e)})
        raise RunStopped(f"error: {e}; {run_dir} is marked failed and holds no trained model", 1) from None
    except KeyboardInterrupt:
        end_record(run_dir, info, "interrupted", interrupted={"epoch": trainer.validated_epoch, "signal": "SIGINT"})
        raise
    except BaseException as e:
        end_record(run_dir, info, "failed", error={"epoch": trainer.epoch, "reason": f"{type(e).__name__}: {e}"})
        raise
    end_record(run_dir, info, "completed")
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return result


def quiet(cfg: TrainConfig) -> TrainConfig:
    """The training settings of a process that does not report (every rank but 0): no progress output."""
    return dataclasses.replace(cfg, progress=False)


def save_best_so_far(model: nn.Module, run_dir: Path) -> bool:
    """model.safetensors <- the best weights of the finished epochs, read from the checkpoint (the last
    epoch's weights when early stopping is off). False when no epoch has finished."""
    if not (run_dir / CHECKPOINT).exists():
        return False
    state = load_checkpoint(run_dir / CHECKPOINT)
    model.load_state_dict(state["best_model"] or state["model"])
    save_weights(model, run_dir / WEIGHTS)
    return True


def still_improving(trainer: Trainer) -> bool:
    """Training ran to its epoch cap (of more than one epoch), with early stopping on and no hook ending it, and
    the best validation epoch is among the last tenth of the epochs (at least the last one)."""
    epochs = trainer.cfg.epochs
    return (epochs > 1 and trainer.cfg.patience > 0 and not trainer.stop and trainer.epoch == epochs
            and trainer.best_epoch > epochs - max(1, epochs // 10))


def _results(spec: RunSpec, data: MultiTaskData, trainer: Trainer, run_dir: Path | None, wall: float,
             echo: bool) -> RunResult:
    """A trained run's weights, curves, tables and summary, written to run_dir and printed (_report)."""
    if run_dir:
        save_weights(trainer.model.to("cpu"), run_dir / WEIGHTS)  # evaluated on the CPU too (evaluate_all)
        plot_history(trainer.history, run_dir / "curves.png")
    sps = round(trainer.samples_per_second, 1)
    how = (f"{trainer.epoch} epochs (best {trainer.best_epoch}), {wall:.1f} s, {sps:,.0f} samples/s on "
           f"{trainer.device}")
    result = _report(spec, data, trainer.model, run_dir, wall, echo, how, trainer,
                     epochs=trainer.epoch, best_epoch=trainer.best_epoch,
                     train_seconds=round(trainer.train_seconds, 3), samples_per_second=sps, device=str(trainer.device))
    if echo and still_improving(trainer):
        log.warning(f"validation was still improving at the epochs={trainer.cfg.epochs} cap (best epoch "
                    f"{trainer.best_epoch}); more epochs may help, e.g. epochs={2 * trainer.cfg.epochs}")
    return result


def _report(spec: RunSpec, data: MultiTaskData, model: nn.Module, run_dir: Path | None, wall: float, echo: bool,
            how: str, trainer: Trainer | None, members: list[RunResult] | None = None, **details: Any) -> RunResult:
    """Evaluate `model` on every split -> RunResult; with run_dir, write results.json (the summary: `details`
    and the means), results.csv and the model's artifacts; with echo, print the table and one line: the
    method, data, parameters and `how` it trained."""
    tables = evaluate_all(model, data, spec.train)
    summary = {"data": spec.data, "method": spec.method, "tasks": [dataclasses.asdict(t) for t in data.tasks],
               "params": n_params(model), **details, "wall_seconds": round(wall, 3),
               "mean": {s: mean_over_tasks(tables[s], data.tasks) for s in SPLITS},
               "mean_tasks": mean_coverage(tables, data.tasks)}
    if run_dir:
        if hasattr(model, "artifacts"):  # optional: a model's own figures and matrices, e.g. mixing weights
            figures, matrices = model.artifacts()
            files = [p.name for m in matrices for p in write_matrix(run_dir, m)]
            summary["artifacts"] = {**figures, "files": files}
        write_json(run_dir / "results.json", {**summary, "splits": tables})
        write_results(run_dir, records(spec.method, spec.train.seed, tables))
    if echo:
        print(task_table(data, tables))
        log_undefined(tables, data.tasks)
        print(f"{spec.method} on {spec.data}: {summary['params']:,} parameters, {how}"
              + (f"\nrun directory: {run_dir}" if run_dir else ""))
    return RunResult(run_dir, spec, tables, summary, model, trainer, members or [])


# ---- ensembles: K members with seeds S, S+1, ..., their predictions averaged ----------------------------------

MEMBERS = "members"  # an ensemble run's folder of members: MEMBERS/seedS, each a run directory


class Ensemble(nn.Module):
    """Models of the same tasks as one model: forward(x) -> {task: (n, outputs)} whose Task.predict is the mean
    over the members of theirs (averaged in float64): the mean probability of a binary task and of each class
    of a multiclass task, the mean value of a regression task, in the target's units. Evaluation (its loss is
    that of the averaged prediction) and prediction then treat it as any model."""

    def __init__(self, members: list[nn.Module], tasks: list[Task]):
        super().__init__()
        self.members, self.tasks = nn.ModuleList(members), list(tasks)

    def forward(self, x):
        outs = [member(x) for member in self.members]
        return {t.name: t.output_of(torch.stack([t.predict(o[t.name].double()) for o in outs]).mean(0)).float()
                for t in self.tasks}


def member_specs(spec: RunSpec) -> list[RunSpec]:
    """The members of an ensemble: `spec` with ensemble=1 and seed S, S+1, ..., S+K-1 (same data and split)."""
    return [dataclasses.replace(spec, train=dataclasses.replace(spec.train, seed=spec.train.seed + j, ensemble=1))
            for j in range(spec.train.ensemble)]


def member_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / MEMBERS / f"seed{seed}"


def finished_members(run_dir: Path, seed: int, size: int) -> int:
    """How many of an ensemble run's members have completed."""
    return sum(shown_status(read_record(member_dir(run_dir, seed + j))) == "completed" for j in range(size))


def ensemble_label(spec: RunSpec) -> str:
    k, s = spec.train.ensemble, spec.train.seed
    return f"ensemble of {k} (seeds {s}-{s + k - 1})"


def one_process(spec: RunSpec, processes: str | None = None) -> None:
    """An ensemble trains its members one after another in one process: with several (`processes`: how they
    were asked for, e.g. nproc=2; default: torchrun, when this process is one of several) a ConfigError."""
    processes = processes or ("torchrun" if distributed.launched() else None)
    if spec.train.ensemble > 1 and processes:
        raise ConfigError(f"ensemble={spec.train.ensemble} with {processes}: an ensemble trains its members one after "
                          f"another in one process; drop {processes}, or train each seed with ensemble=1")


def train_ensemble(spec: RunSpec, data: MultiTaskData | None = None, out: Path | str | None = "runs",
                   name: str | None = None, echo: bool = True,
                   on_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """train_run of an ensemble (spec.train.ensemble = K > 1): every setting checked first (a bad one leaves no
    directory), then, with `out`, a new run directory whose members train in members/seedS (_ensemble)."""
    one_process(spec)
    data = choose_metric(data or load_data(spec), spec.train.metric)
    check_splits(data)
    build(member_specs(spec)[0], data)  # a method key that does not build: before anything is written
    resolve_device(spec.train.device)
    if not out:
        return _ensemble(spec, data, None, echo, None, on_epoch=on_epoch)
    stem = f"{spec.data}-{spec.method}-ensemble{spec.train.ensemble}-seed{spec.train.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = new_run_dir(out, name or stem)
    write_json(run_dir / CONFIG_FILE, {**spec.to_json(), "model": model_card(data)})
    return _ensemble(spec, data, run_dir, echo, start_record(run_dir), on_epoch=on_epoch)


def resume_ensemble(run_dir: Path, spec: RunSpec, info: dict, overrides: dict[str, str], echo: bool) -> RunResult:
    """resume_run of an ensemble: the members that completed are kept, the stopped one resumes from its last
    checkpoint, the rest train. overrides: the RESUME_KEYS given, for the member resumed."""
    one_process(spec)
    data = choose_metric(load_data(spec), spec.train.metric)
    check_splits(data)
    done = finished_members(run_dir, spec.train.seed, spec.train.ensemble)
    write_json(run_dir / CONFIG_FILE, {**spec.to_json(), "model": model_card(data)})
    if echo:
        print(f"resuming {run_dir}: {done} of {spec.train.ensemble} members finished", file=sys.stderr)
    return _ensemble(spec, data, run_dir, echo, start_record(run_dir, info, resumed_from_member=done + 1), overrides)


def _ensemble(spec: RunSpec, data: MultiTaskData, run_dir: Path | None, echo: bool, info: dict | None,
              overrides: dict[str, str] | None = None, on_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """Train the members one after another (_member), then evaluate and write their averaged predictions
    (_report). A member stopped by a signal or a failure stops the ensemble (RunStopped): run.json says which
    member and how; the members that completed stay."""
    t0, k, members = time.perf_counter(), spec.train.ensemble, []
    if echo:
        print(f"{ensemble_label(spec)}: {spec.method} on {spec.data}", flush=True)
    try:
        for j, member in enumerate(member_specs(spec)):
            members.append(_member(member, data, run_dir, overrides or {}, echo, on_epoch))
            if echo:
                done = members[-1].summary
                print(f"member {j + 1}/{k} (seed {member.train.seed}): test {mean_summary(done)}, {done['epochs']} "
                      f"epochs{'' if members[-1].trainer else ', completed before'}", flush=True)
        metrics = sorted({primary(t) for t in data.tasks})
        average = ", ".join(f"{m} {np.mean([r.summary['mean']['test'].get(m, math.nan) for r in members]):.3f}"
                            for m in metrics)
        details = {"ensemble": {"size": k, "seeds": [r.spec.train.seed for r in members], "members": [
            {"seed": r.spec.train.seed, "epochs": r.summary["epochs"], "best_epoch": r.summary["best_epoch"],
             "mean_test": r.summary["mean"]["test"]} for r in members]},
            "epochs": sum(r.summary["epochs"] for r in members),
            "train_seconds": round(sum(r.summary["train_seconds"] for r in members), 3)}
        trained, wall = [r.trainer for r in members if r.trainer is not None], time.perf_counter() - t0
        result = _report(spec, data, Ensemble([r.model for r in members], data.tasks), run_dir, wall, echo,
                         f"{ensemble_label(spec)}, {wall:.1f} s; its members' mean test {average}",
                         trained[-1] if trained else None, members, **details)
    except RunStopped as e:
        if run_dir is None:
            raise
        raise _member_stopped(spec, run_dir, info, len(members), e) from None
    except (ConfigError, KeyboardInterrupt) as e:  # a member that cannot resume (the user can fix it), Ctrl-C
        if run_dir is not None:
            seed = spec.train.seed + len(members)
            end_record(run_dir, info, "interrupted", interrupted={"member": len(members) + 1, "seed": seed,
                                                                   "reason": str(e) or type(e).__name__})
        raise
    except BaseException as e:
        if run_dir is not None:
            end_record(run_dir, info, "failed", error={"member": len(members) + 1, "epoch": None,
                                                       "reason": f"{type(e).__name__}: {e}"})
        raise
    if run_dir is not None:
        end_record(run_dir, info, "completed")
    return result


def _member(member: RunSpec, data: MultiTaskData, run_dir: Path | None, overrides: dict[str, str], echo: bool,
            on_epoch: Callable[[dict], None] | None) -> RunResult:
    """One member of an ensemble: trained (in memory without run_dir; else into run_dir/members/seedS), or, in
    a resumed ensemble, loaded when it completed before (trainer None) and resumed when it was stopped."""
    if run_dir is None:
        return train_run(member, data, out=None, echo=False, on_epoch=on_epoch)
    folder = member_dir(run_dir, member.train.seed)
    if not folder.exists():
        return train_run(member, data, folder.parent, folder.name, echo=False, on_epoch=on_epoch)
    if shown_status(read_record(folder)) != "completed":
        if echo:
            print(f"resuming member seed {member.train.seed} in {folder}", file=sys.stderr, flush=True)
        return resume_run(folder, member.data, member.method, overrides, echo=False)
    saved = read_json(folder / "results.json")
    return RunResult(folder, member, saved.pop("splits"), saved, _load(folder, with_data=False)[3], None)


def _member_stopped(spec: RunSpec, run_dir: Path, info: dict, j: int, stopped: RunStopped) -> RunStopped:
    """The ensemble's run.json and RunStopped when member j (0-based) stopped: interrupted (resumable: the
    members that completed are kept) or failed."""
    seed = spec.train.seed + j
    where, member = f"member {j + 1} of {spec.train.ensemble} (seed {seed})", read_record(member_dir(run_dir, seed))
    if member.get("status") == "interrupted":
        cut = member["interrupted"]
        end_record(run_dir, info, "interrupted", interrupted={"member": j + 1, "seed": seed, **cut})
        return RunStopped(f"interrupted by {cut['signal']} after epoch {cut['epoch']} of {where}; {run_dir} keeps its "
                          f"{j} completed member{'' if j == 1 else 's'}; resume with: {resume_command(spec, run_dir)}",
                          stopped.exit_status)
    error = member.get("error", {})
    end_record(run_dir, info, "failed", error={"member": j + 1, "seed": seed, "epoch": error.get("epoch"),
                                               "reason": f"{where}: {error.get('reason')}"})
    return RunStopped(f"error: {where} failed: {error.get('reason')}; {run_dir} is marked failed and holds no "
                      "trained ensemble", stopped.exit_status)


# ---- using a run: evaluate, predict, list -------------------------------------------------------------------

def read_spec(run_dir: Path) -> RunSpec:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    saved = read_json(path)
    try:
        return RunSpec.from_json(saved)
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path} lacks the run's settings ({type(e).__name__}: {e}); was it edited?") from None


def load_run(run_dir: Path | str, with_data: bool = True,
             data_path: str | None = None) -> tuple[RunSpec, MultiTaskData | None, nn.Module]:
    """Rebuild a run's model from its directory and load its weights -> (spec, data, model). The model needs
    no data (config.json holds its tasks and input shapes); with_data loads the run's data too (None
    otherwise), from `data_path` when the file has moved. An ensemble run's model is the Ensemble of its
    members."""
    spec, data, _, model = _load(Path(run_dir), with_data, data_path)
    return spec, data, model


def _load(run_dir: Path, with_data: bool, data_path: str | None = None):
    """-> (spec, data or None, tasks, model) of a run directory."""
    spec, info = read_spec(run_dir), read_record(run_dir)
    weights = run_dir / WEIGHTS
    if info.get("status") == "failed":
        error = info.get("error", {})
        raise ConfigError(f"{run_dir} failed in epoch {error.get('epoch')} ({error.get('reason')}); it holds no "
                          "trained model")
    ensemble = spec.train.ensemble > 1
    if ensemble and info.get("status") != "completed":
        done = finished_members(run_dir, spec.train.seed, spec.train.ensemble)
        raise ConfigError(f"{run_dir} is an unfinished ensemble ({done} of {spec.train.ensemble} members completed)"
                          + (f"; resume it with {resume_command(spec, run_dir)}" if shown_status(info) in ("interrupted", "dead") else ""))
    if not ensemble and not weights.exists():
        raise ConfigError(f"{run_dir} is not a finished run directory: {WEIGHTS} is missing"
                          + (f"; resume it with {resume_command(spec, run_dir)}" if shown_status(info) in ("interrupted", "dead") else ""))
    if info.get("status") == "interrupted":
        log.warning("%s was interrupted after epoch %s: its weights are the best so far", run_dir,
                    info.get("interrupted", {}).get("epoch"))
    if data_path:
        if "path" not in field_types(type(spec.data_cfg)):
            raise ConfigError(f"data set {spec.data!r} has no data.path key")
        spec = dataclasses.replace(spec, data_cfg=dataclasses.replace(spec.data_cfg, path=os.path.abspath(data_path)))
    card = read_json(run_dir / CONFIG_FILE).get("model")
    data = None
    if with_data or card is None:  # a run written before config.json held the model's tasks: from its data
        moved = getattr(spec.data_cfg, "path", "")
        if moved and not Path(moved).exists():
            raise ConfigError(f"{run_dir} was trained on {moved}, which is not there any more; give its new place: "
                              f"manytask evaluate {shlex.quote(str(run_dir))} data.path=NEW.csv")
        data = choose_metric(load_data(spec), spec.train.metric)
    tasks = data.tasks if card is None else [Task(**t) for t in card["tasks"]]
    shapes = data.input_shapes if card is None else {k: tuple(v) for k, v in card["input_shapes"].items()}
    if ensemble:
        members = [_load(member_dir(run_dir, m.train.seed), with_data=False)[3] for m in member_specs(spec)]
        return spec, data, tasks, Ensemble(members, tasks)
    manytask_log = logging.getLogger("manytask")
    level = manytask_log.level
    manytask_log.setLevel(logging.ERROR)  # the build's warnings were shown when the run was trained
    try:
        model, _ = build_model(spec, tasks, shapes)
    finally:
        manytask_log.setLevel(level)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except RuntimeError as e:  # the first line names only the model; the next the first mismatch
        why = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e).strip())
        raise ConfigError(f"{weights} does not match the {spec.method} model of config.json "
                          f"({why[:200]}); was the file replaced or the config edited?") from None
    except SafetensorError as e:
        raise ConfigError(f"{weights} is damaged or not a safetensors file ({e}); was the file replaced?") from None
    if missing or unexpected:
        raise ConfigError(f"{weights} does not match the {spec.method} model of config.json: "
                          f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; "
                          "was the file replaced or the config edited?")
    return spec, data, tasks, model


def evaluate_run(run_dir: Path | str, echo: bool = True, data_path: str | None = None,
                 metric: str | None = None) -> tuple[dict, bool | None]:
    """Recompute every split's table from the saved weights -> (tables, equal to results.json; None when the
    run has no results.json, e.g. an interrupted run). data_path: the data file's new place; metric: the
    primary metric to show (a TrainConfig.metric value; default: the run's)."""
    spec, data, model = load_run(run_dir, data_path=data_path)
    if metric is not None:
        data = choose_metric(data, metric)
    tables = evaluate_all(model, data, spec.train)
    saved_file = Path(run_dir) / "results.json"
    same = same_tables(read_json(saved_file).get("splits"), tables) if saved_file.exists() else None
    if echo:
        print(task_table(data, tables))
        log_undefined(tables, data.tasks)
        print({True: "matches the saved results.json exactly", False: "DIFFERS from the saved results.json",
               None: "no results.json to compare with (the run has not completed)"}[same])
    return tables, same


def same_tables(saved: Any, tables: dict[str, dict[str, dict]]) -> bool:
    """Whether results.json's splits hold every recomputed split and task, and every value they hold is the
    recomputed one (NaN equal to NaN). A metric the file lacks (written before that metric existed, as
    prc_auc) is no difference."""
    def same(a: Any, b: float) -> bool:
        return isinstance(a, (int, float)) and (a == b or (math.isnan(a) and math.isnan(b)))
    try:
        return all(set(saved[s][t]) <= set(ms) and all(same(v, ms[m]) for m, v in saved[s][t].items())
                   for s, table in tables.items() for t, ms in table.items())
    except (KeyError, TypeError):
        return False


class Predictor:
    """A run's model for raw inputs (SMILES for molecule runs), rebuilt from the run directory alone.
    predictor(inputs) -> (valid (n,) bool, predictions (n, len(columns)) float32, NaN where not valid).
    columns: one per binary (probability of 1) or regression task (the value); one per class of a multiclass
    task, TASK:k (probability of class k)."""

    def __init__(self, run_dir: Path | str):
        self.spec, _, self.tasks, self.model = _load(Path(run_dir), with_data=False)
        self.featurize = get_dataset(self.spec.data).featurize
        if self.featurize is None:
            raise ConfigError(f"data set {self.spec.data!r} has no featuriser for raw inputs; predict works on "
                              "molecule runs (SMILES)")
        self.input_column = getattr(self.spec.data_cfg, "smiles_col", "input")  # the CSV column of the inputs
        self.columns = [t.name if t.outputs == 1 else f"{t.name}:{k}" for t in self.tasks for k in range(t.outputs)]
        self.model.to("cpu").eval()

    @torch.no_grad()
    def __call__(self, inputs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        preds = np.full((len(inputs), len(self.columns)), np.nan, dtype=np.float32)
        if not inputs:
            return np.zeros(0, dtype=bool), preds
        x, valid = self.featurize(inputs, self.spec.data_cfg)
        out = self.model(x if hasattr(x, "to") else torch.as_tensor(x))  # a tensor, or a batch of graphs
        preds[:] = torch.cat([t.predict(out[t.name]).reshape(len(inputs), -1) for t in self.tasks], 1).numpy()
        preds[~valid] = np.nan
        return np.asarray(valid, dtype=bool), preds


def predict_run(run_dir: Path | str, strings: list[str]) -> list[tuple[str, dict[str, float] | None]]:
    """Predictions for raw inputs: (input, {column: value}) per input (columns as Predictor's), or (input,
    None) for an input the featuriser cannot read; the others are still predicted."""
    predictor = Predictor(run_dir)
    valid, preds = predictor(list(strings))
    return [(s, dict(zip(predictor.columns, map(float, p))) if ok else None) for s, ok, p in zip(strings, valid, preds)]


def read_inputs(lines: Iterator[str], column: str) -> Iterator[str]:
    """Raw inputs from the lines of a file: a CSV whose header names `column` (any case) gives that column;
    any other file holds one input per line (its first field; blank lines, # comments and a first line
    starting with the column name, as in .smi files, skipped)."""
    first = next(lines, "")
    names = [h.strip().lower() for h in next(csv.reader([first]), [])]
    if column.lower() in names:
        index = names.index(column.lower())
        yield from (row[index].strip() if index < len(row) else "" for row in csv.reader(lines))
        return
    if first.lower().split()[:1] == [column.lower()]:
        first = ""
    for line in chain([first], lines):
        if line.strip() and not line.startswith("#"):
            yield line.split()[0]


def file_inputs(path: str | Path, column: str) -> Iterator[str]:
    """The inputs of a file, read lazily (see read_inputs; '-': standard input, .gz: decompressed on the fly).
    A missing file is a ConfigError at once."""
    if str(path) == "-":
        return read_inputs(iter(sys.stdin), column)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give a CSV with a {column} column or a file with one input per line")

    def lines() -> Iterator[str]:
        with (gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")) as f:
            yield from f
    return read_inputs(lines(), column)


def predict_csv(predictor: Predictor, inputs: Iterable[str], out: IO[str], column: str = "smiles",
                chunk: int = 4096, progress: bool = True) -> tuple[int, int]:
    """Stream raw inputs through a run's model into CSV on `out`: the input (header `column`), `valid`
    (true/false), one column per prediction (Predictor.columns; empty where not valid). Featurises and
    predicts `chunk` inputs at a time, so memory does not grow with the input; a tqdm bar on a terminal.
    -> (inputs, invalid inputs)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([column, "valid", *predictor.columns])
    blank = [""] * len(predictor.columns)
    n = invalid = 0
    inputs = iter(inputs)
    with tqdm(desc="predict", unit=" inputs", disable=None if progress else True, leave=False) as bar:
        while batch := list(islice(inputs, chunk)):
            valid, preds = predictor(batch)
            writer.writerows([s, "true", *(f"{v:.6g}" for v in p)] if ok else [s, "false", *blank]
                             for s, ok, p in zip(batch, valid, preds))
            n, invalid = n + len(batch), invalid + int((~valid).sum())
            bar.update(len(batch))
    return n, invalid


def mean_summary(results: dict) -> str:
    """The mean test primary metric of a results.json, e.g. "auc 0.811", and, when some tasks have no
    value there, how many it covers: "auc 0.802 (602 of 617 tasks)"."""
    tasks = [Task(**t) for t in results["tasks"]]
    shown = []
    for m in sorted({primary(t) for t in tasks}):
        n = results.get("mean_tasks", {}).get("test", {}).get(m)  # absent from runs of older versions
        total = sum(primary(t) == m for t in tasks)
        shown.append(f"{m} {results['mean']['test'].get(m, math.nan):.3f}"
                     + (f" ({n} of {total} tasks)" if n is not None and n < total else ""))
    return ", ".join(shown)


def list_runs(folder: Path | str) -> list[dict]:
    """Every run directory under `folder` (an experiment's runs too), newest first: {started, status, epochs,
    data, method, test (the mean test primary metric of a completed run), path}; status as shown_status. An
    ensemble is one row (method "M (ensemble of K)", epochs: its members completed), its members none."""
    rows = []
    for config_file in Path(folder).rglob(CONFIG_FILE):
        run_dir = config_file.parent
        try:
            config, info = json.loads(config_file.read_text()), read_record(run_dir)
            results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else None
        except (OSError, ValueError):
            continue
        if "method" not in config or (run_dir.parent.name == MEMBERS and (run_dir.parent.parent / CONFIG_FILE).exists()):
            continue  # not a run; an ensemble's member, listed as the ensemble
        if info:
            status = shown_status(info)
        else:  # written before run.json existed
            status = "completed" if results else "unknown"
        started = info.get("started") or datetime.fromtimestamp(config_file.stat().st_mtime).astimezone().isoformat(timespec="seconds")
        test = ""
        if results:
            done = results["epochs"]
            test = mean_summary(results)
        else:
            path = run_dir / "metrics.jsonl"
            done = len(path.read_text().splitlines()) if path.exists() else 0
        size, method, epochs = config["train"].get("ensemble", 1), config["method"], f"{done}/{config['train']['epochs']}"
        if size > 1:
            method += f" (ensemble of {size})"
            epochs = f"{finished_members(run_dir, config['train']['seed'], size)}/{size} members"
        rows.append({"started": started, "status": status, "epochs": epochs, "data": config["data"],
                     "method": method, "test": test, "path": str(run_dir)})
    return sorted(rows, key=lambda r: datetime.fromisoformat(r["started"]), reverse=True)
