"""Runs: resolve a config, train, and write one new directory that evaluate and predict can reload.

A run directory holds
    config.json     data set, method, and the three resolved configs (data, method, train)
    metrics.jsonl   one JSON line per epoch
    results.json    per-task metrics for every split, their means, epochs, timing, parameter count
    results.csv     the same as rows: split, task, metric, value
    model.safetensors  the weights (and buffers such as masks)
    curves.png      training and validation curves
    ...             whatever the model's optional write_artifacts(run_dir) -> dict writes (its dict goes to
                    results.json as "artifacts")
An existing directory is never overwritten: a name that is taken gets a -2, -3, ... suffix.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from .config import ConfigError, apply, field_types, from_dict, to_dict
from .data.base import MultiTaskData
from .metrics import mean_over_tasks, primary
from .registry import get_dataset, get_method
from .report import plot_history, text_table, write_csv
from .train import Hooks, TrainConfig, Trainer, evaluate_split, seed_everything

log = logging.getLogger("manytask")
SPLITS = ("train", "val", "test")


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


def resolve(data: str, method: str, overrides: dict[str, str]) -> RunSpec:
    """Defaults plus overrides. `data.k=v` sets the data config, `method.k=v` the method's; a bare key
    goes to the training config if it has it, else to the method's config."""
    dcls, mcls = get_dataset(data).config, get_method(method).config
    tkeys, mkeys = field_types(TrainConfig), field_types(mcls)
    d_o, m_o, t_o = {}, {}, {}
    for k, v in overrides.items():
        if k.startswith("data."):
            d_o[k[5:]] = v
        elif k.startswith("method."):
            m_o[k[7:]] = v
        elif k in tkeys:
            t_o[k] = v
        elif k in mkeys:
            m_o[k] = v
        else:
            valid = sorted(tkeys) + sorted(mkeys) + [f"data.{x}" for x in sorted(field_types(dcls))]
            raise ConfigError(f"unknown key {k!r} for {data}/{method}; valid keys: {', '.join(valid)}")
    return RunSpec(data, method, apply(dcls(), d_o, f"{data} data"), apply(mcls(), m_o, f"{method} method"),
                   apply(TrainConfig(), t_o, "training"))


def load_data(spec: RunSpec) -> MultiTaskData:
    return get_dataset(spec.data).fn(spec.data_cfg)


def build(spec: RunSpec, data: MultiTaskData) -> tuple[nn.Module, Hooks]:
    """The method's model (seeded by train.seed) and its training hooks."""
    seed_everything(spec.train.seed)
    built = get_method(spec.method).fn(data.tasks, data.input_shapes, spec.method_cfg)
    model, hooks = built if isinstance(built, tuple) else (built, Hooks())
    return model, hooks


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def new_run_dir(root: Path | str, stem: str) -> Path:
    """A fresh directory root/stem (or stem-2, stem-3, ...); never an existing one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
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


def results_rows(tables: dict[str, dict[str, dict]]) -> list[tuple]:
    return [(s, task, m, v) for s, tab in tables.items() for task, ms in tab.items() for m, v in ms.items()]


def task_table(data: MultiTaskData, tables: dict[str, dict[str, dict]]) -> str:
    """Per-task primary metric on every split, plus the mean row."""
    rows = [(t.name, primary(t), *(tables[s][t.name][primary(t)] for s in SPLITS)) for t in data.tasks]
    kinds = sorted({primary(t) for t in data.tasks})
    for m in kinds:
        ts = [t for t in data.tasks if primary(t) == m]
        rows.append((f"mean ({len(ts)} tasks)", m, *(mean_over_tasks(tables[s], ts)[m] for s in SPLITS)))
    return text_table(("task", "metric", *SPLITS), rows)


@dataclass
class RunResult:
    dir: Path | None
    spec: RunSpec
    tables: dict[str, dict[str, dict]]
    summary: dict
    model: nn.Module
    trainer: Trainer


def train_run(spec: RunSpec, data: MultiTaskData | None = None, out: Path | str | None = "runs",
              name: str | None = None, echo: bool = True) -> RunResult:
    """Train one method on one data set; with `out`, write a new run directory under it."""
    data = data or load_data(spec)
    model, hooks = build(spec, data)
    run_dir = new_run_dir(out, name or f"{spec.data}-{spec.method}-seed{spec.train.seed}-{time.strftime('%Y%m%d-%H%M%S')}") if out else None
    metrics_file = open(run_dir / "metrics.jsonl", "w") if run_dir else None
    if run_dir:
        (run_dir / "config.json").write_text(json.dumps(spec.to_json(), indent=2))

    def log_row(row):
        if metrics_file:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    t0 = time.perf_counter()
    try:
        trainer = Trainer(model, data, spec.train, hooks, log=log_row).fit()
    finally:
        if metrics_file:
            metrics_file.close()
    wall = time.perf_counter() - t0
    tables = evaluate_all(model, data, spec.train)
    summary = {"data": spec.data, "method": spec.method, "tasks": [dataclasses.asdict(t) for t in data.tasks],
               "params": n_params(model), "epochs": trainer.epoch, "best_epoch": trainer.best_epoch,
               "train_seconds": round(trainer.train_seconds, 3), "wall_seconds": round(wall, 3),
               "samples_per_second": round(trainer.samples_per_second, 1), "device": str(trainer.device),
               "mean": {s: mean_over_tasks(tables[s], data.tasks) for s in SPLITS}}
    if run_dir:
        save_model(model, str(run_dir / "model.safetensors"))
        if hasattr(model, "write_artifacts"):  # optional: a model's own plots and tables, e.g. mixing weights
            summary["artifacts"] = model.write_artifacts(run_dir) or {}
        (run_dir / "results.json").write_text(json.dumps({**summary, "splits": tables}, indent=2))
        write_csv(run_dir / "results.csv", ("split", "task", "metric", "value"), results_rows(tables))
        plot_history(trainer.history, run_dir / "curves.png")
    if echo:
        print(task_table(data, tables))
        print(f"{spec.method} on {spec.data}: {summary['params']:,} parameters, {trainer.epoch} epochs "
              f"(best {trainer.best_epoch}), {wall:.1f} s, {summary['samples_per_second']:,.0f} samples/s "
              f"on {trainer.device}" + (f"\nrun directory: {run_dir}" if run_dir else ""))
    return RunResult(run_dir, spec, tables, summary, model, trainer)


def load_run(run_dir: Path | str) -> tuple[RunSpec, MultiTaskData, nn.Module]:
    """Rebuild the data and the model of a run directory and load its weights."""
    run_dir = Path(run_dir)
    cfg_file, weights = run_dir / "config.json", run_dir / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.exists():
            raise ConfigError(f"{run_dir} is not a finished run directory: {f.name} is missing")
    spec = RunSpec.from_json(json.loads(cfg_file.read_text()))
    data = load_data(spec)
    model, _ = build(spec, data)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except RuntimeError as e:
        raise ConfigError(f"{weights} does not match the {spec.method} model of config.json "
                          f"({str(e).splitlines()[0][:200]}); was the file replaced or the config edited?") from None
    if missing or unexpected:
        raise ConfigError(f"{weights} does not match the {spec.method} model of config.json: "
                          f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; "
                          "was the file replaced or the config edited?")
    return spec, data, model


def evaluate_run(run_dir: Path | str, echo: bool = True) -> tuple[dict, bool]:
    """Recompute every split's table from the saved weights; -> (tables, equal to results.json)."""
    spec, data, model = load_run(run_dir)
    tables = evaluate_all(model, data, spec.train)
    saved_file = Path(run_dir) / "results.json"
    same = saved_file.exists() and json.loads(saved_file.read_text())["splits"] == json.loads(json.dumps(tables))
    if echo:
        print(task_table(data, tables))
        print("matches the saved results.json exactly" if same else "DIFFERS from the saved results.json")
    return tables, same


def predict_run(run_dir: Path | str, strings: list[str]) -> list[tuple[str, dict[str, float] | None]]:
    """Per-task predictions for raw inputs (SMILES for molecule data). An input the featuriser cannot
    read gets None instead of predictions; the others are still predicted."""
    spec, data, model = load_run(run_dir)
    featurize = get_dataset(spec.data).featurize
    if featurize is None:
        raise ConfigError(f"data set {spec.data!r} has no featuriser for raw inputs; predict works on "
                          "molecule runs (SMILES)")
    x, valid = featurize(strings, spec.data_cfg)
    model.eval()
    with torch.no_grad():
        out = model(x) if len(strings) else {}
    rows = []
    for i, s in enumerate(strings):
        if not valid[i]:
            rows.append((s, None))
            continue
        rows.append((s, {t.name: float(t.predict(out[t.name][i:i + 1])[0]) for t in data.tasks
                         if t.kind != "multiclass"}))
    return rows
