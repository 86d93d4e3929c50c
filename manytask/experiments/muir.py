"""MUiR recipes (paper 003): the grouped linear regression benchmark and a small cross-modal run.

muir-synthetic   30 linear tasks in 3 rank-one groups (Kang et al. 2011), clean and noisy: single-task
                 (per-task minimum-norm least squares), no-sharing (MUiR's reparameterised model with one
                 hypermodule per task, never aligned), an oracle alignment that knows the groups, and MUiR;
                 RMSE = sqrt(mean over tasks of test MSE), seeds 0,1,2, next to the poster's table.
muir-crossmodal  a conv net on digits, an LSTM on SMILES characters (one Tox21 assay) and an MLP on
                 Tox21 fingerprints (another assay): no-sharing vs MUiR, per-task table, sharing figure.

Sharing statistics of every MUiR run: sharing.csv (generation, modules in use, share of modules used by
each subset of tasks) and sharing.png / modules.png in the run directory.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LinearRegression

from ..config import ConfigError, split_overrides
from ..data.base import MultiTaskData, Split, combine, model_input
from ..methods.muir import MuirHooks
from ..registry import get_dataset, register_dataset, register_experiment
from ..report import line_plot, mean_std, text_table, write_csv
from ..runs import RunSpec, build, evaluate_all, resolve
from ..tasks import Task
from ..train import Trainer
from .runner import Contender, compare

# ---- sharing statistics -------------------------------------------------------------------------


def subset_shares(sharing: dict, tasks: list[str]) -> dict[str, float]:
    """{"a+b": share of the modules in use whose users are exactly tasks a and b} over all non-empty
    subsets that occur; sharing = {module: [task names]}."""
    counts: dict[str, int] = {}
    for users in sharing.values():
        key = "+".join(t for t in tasks if t in set(users))
        counts[key] = counts.get(key, 0) + 1
    total = max(1, len(sharing))
    return {k: v / total for k, v in counts.items()}


def write_sharing(history: list[dict], tasks: list[str], out: Path, label: str = "") -> None:
    """sharing.csv (one row per generation and subset), modules.png and sharing.png under `out`."""
    subsets = sorted({k for h in history for k in subset_shares(h["sharing"], tasks)}, key=lambda s: (s.count("+"), s))
    rows = []
    for h in history:
        shares = subset_shares(h["sharing"], tasks)
        rows += [(h["generation"], h["step"], h["modules"], h["changed"], s, shares.get(s, 0.0)) for s in subsets]
    write_csv(out / "sharing.csv", ("generation", "step", "modules", "changed", "subset", "share"), rows)
    gens = [h["generation"] for h in history]
    line_plot({"modules in use": (gens, [h["modules"] for h in history])}, out / "modules.png",
              f"{label} hypermodules in use", "generation", "modules")
    if len(subsets) <= 12:  # one line per subset of tasks; with many tasks the CSV is the record
        line_plot({s: (gens, [subset_shares(h["sharing"], tasks).get(s, 0.0) for h in history]) for s in subsets},
                  out / "sharing.png", f"{label} share of modules used exactly by each subset of tasks",
                  "generation", "share of modules in use")


# ---- muir-synthetic -----------------------------------------------------------------------------

POSTER = {"clean": {"single-task": 1.35, "oracle": 0.77, "muir": 0.00},  # no "no-sharing" row in the poster
          "noisy": {"single-task": 1.49, "oracle": 0.37, "muir": 0.38}}
SYNTH_METHOD = {"widths": "", "bias": "false", "context": "1", "challengers": "4",
                "soft_lr": "0.01", "steps_per_generation": "100", "challenger_mass": "0.8"}  # 0.8: uniform start


def fit_steps(spec: RunSpec, data: MultiTaskData, steps: int) -> tuple[torch.nn.Module, MuirHooks, float]:
    """Full-batch training for `steps` steps of the hooks' schedule (it may stop earlier), without the
    per-epoch validation of Trainer.fit: every task here is a dense regression task with the same number
    of points, so the mean task loss is one stacked MSE (equal to tasks.mean_loss on such data)."""
    model, hooks = build(spec, data)
    tr = Trainer(model, data, spec.train, hooks)
    x = model_input({k: v.to(tr.device) for k, v in data.train.inputs.items()})
    y = torch.stack([data.train.labels[t.name] for t in data.tasks]).to(tr.device)  # (tasks, n)
    if torch.isnan(y).any():
        raise ConfigError("muir-synthetic's full-batch loop needs labels without NaN")
    t0 = time.perf_counter()
    hooks.before_training(tr)
    for _ in range(steps):
        out = model(x)
        pred = torch.stack([out[t.name][:, 0] for t in data.tasks])  # (tasks, n)
        loss = ((pred - y) ** 2).mean()
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tr.optimizer.step()
        tr.step += 1
        hooks.after_step(tr)
        if tr.stop:
            break
    return model, hooks, time.perf_counter() - t0


def least_squares(data: MultiTaskData) -> tuple[dict, float]:
    """Single-task learning, the benchmark's reference: per task, the minimum-norm least-squares weight
    vector on its own training points, no bias (scikit-learn's LinearRegression, an lstsq solve; with 10
    points in 20 dimensions the weights outside the data's span are 0). -> ({split: {task: {"mse"}}}, s)."""
    t0 = time.perf_counter()
    tables = {name: {} for name in ("train", "val", "test")}
    for t in data.tasks:
        x, y = t.select(data.train.inputs).flatten(1).numpy(), data.train.labels[t.name].numpy()  # (n, d), (n,)
        known = ~np.isnan(y)
        fit = LinearRegression(fit_intercept=False).fit(x[known], y[known])
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
            xs, ys = t.select(split.inputs).flatten(1).numpy(), split.labels[t.name].numpy()
            k = ~np.isnan(ys)
            tables[name][t.name] = {"mse": float(np.mean((fit.predict(xs[k]) - ys[k]) ** 2)) if k.any() else math.nan}
    return tables, time.perf_counter() - t0


def rmse(tables: dict, tasks: list[Task]) -> float:
    """sqrt(mean over tasks of test MSE)."""
    return math.sqrt(float(np.mean([tables["test"][t.name]["mse"] for t in tasks])))


@register_experiment("muir-synthetic", "MUiR on 30 grouped linear tasks, clean and noisy: single-task, no-sharing, oracle, MUiR; "
                     "3 seeds; default 1000 + 200 generations = 120,000 steps per run (5-7 min per run on one CPU core)")
def synthetic(overrides: list[str], out: Path):
    """Overrides: seeds=0,1,2, settings=clean,noisy, noise=0.31, generations=N and final=N (generations of
    the EA and after it; no-sharing and oracle train as many steps), contenders=single-task,no-sharing,oracle,muir,
    data.path=FILE.npz (then settings is ignored), and any muir key or training key (lr=...)."""
    kv = split_overrides(list(overrides))
    seeds = tuple(int(s) for s in kv.pop("seeds", "0,1,2").split(","))
    settings = [s for s in kv.pop("settings", "clean,noisy").split(",") if s]
    noise = float(kv.pop("noise", "0.31"))
    if "data.path" in kv:
        settings = ["file"]
    gens, final = int(kv.pop("generations", "1000")), int(kv.pop("final", "200"))
    only = [c for c in kv.pop("contenders", "single-task,no-sharing,oracle,muir").split(",") if c]
    out.mkdir(parents=True, exist_ok=True)
    rows, summary = [], {}
    t_all = time.perf_counter()
    for setting in settings:
        data_kv = {k: v for k, v in kv.items() if k.startswith("data.")}
        if setting != "file":
            data_kv["data.noise"] = str(noise if setting == "noisy" else 0.0)
        rest = {k: v for k, v in kv.items() if not k.startswith("data.")}
        base = resolve("grouped_regression", "muir", {**data_kv, **SYNTH_METHOD, "progress": "false", **rest})
        data = get_dataset("grouped_regression").fn(base.data_cfg)
        groups = data.meta.get("groups")
        block = {"block": f"1,{next(iter(data.input_shapes.values()))[0]}"}  # one 1 x d block per task
        total = (gens + final) * int(base.method_cfg.steps_per_generation)
        contenders = {"single-task": None,  # least squares, no training steps
                      "no-sharing": {"generations": "0", "final": str(gens + final)},
                      "muir": {"generations": str(gens), "final": str(final)}}
        if groups is not None:  # one location per task: psi(task) = first task of its group
            first = {g: groups.index(g) for g in groups}
            contenders["oracle"] = {"generations": "0", "final": str(gens + final),
                                    "alignment": ",".join(str(first[g]) for g in groups)}
        unknown = set(only) - set(contenders) - ({"oracle"} if groups is None else set())
        if unknown:
            raise ConfigError(f"contenders={','.join(only)}: unknown {sorted(unknown)}; choose from {', '.join(contenders)}")
        for label, over in ((k, contenders[k]) for k in only if k in contenders):
            vals, secs = [], []
            for seed in seeds:
                spec = resolve("grouped_regression", "muir",
                               {**data_kv, **SYNTH_METHOD, **block, "progress": "false", **rest, **(over or {}),
                                "seed": str(seed), "data.seed": str(seed)})
                data = get_dataset("grouped_regression").fn(spec.data_cfg)
                run = out / setting / label / f"seed{seed}"
                run.mkdir(parents=True, exist_ok=True)
                if over is None:
                    tables, sec = least_squares(data)
                    record = {"solver": "per-task minimum-norm least squares (sklearn LinearRegression, no intercept)"}
                    config = {"data": spec.data, "data_cfg": spec.to_json()["data_cfg"]}
                    what = "least squares"
                else:
                    model, hooks, sec = fit_steps(spec, data, total)
                    tables = evaluate_all(model, data, spec.train)
                    record = {"steps": hooks.steps, "modules": hooks.history[-1]["modules"],
                              "final_sharing": hooks.history[-1]["sharing"]}
                    config = spec.to_json()
                    what = f"{record['modules']} modules, {hooks.steps} steps"
                    if label == "muir":
                        write_sharing(hooks.history, [t.name for t in data.tasks], run, f"{setting} seed {seed}:")
                vals.append(rmse(tables, data.tasks))
                secs.append(sec)
                (run / "config.json").write_text(json.dumps(config, indent=2))
                (run / "results.json").write_text(json.dumps({"rmse": vals[-1], "seconds": sec, **record, "splits": tables},
                                                             indent=2))
                print(f"[muir-synthetic] {setting} {label} seed {seed}: RMSE {vals[-1]:.4f}, {what}, {sec:.0f} s", flush=True)
            rows.append((setting, label, *mean_std(vals), float(np.mean(secs)), POSTER.get(setting, {}).get(label, math.nan)))
            summary.setdefault(setting, {})[label] = {"rmse": vals, "seconds": secs}
    table = text_table(("setting", "contender", "RMSE mean", "std", "s per run", "poster"), rows)
    write_csv(out / "table.csv", ("setting", "contender", "rmse_mean", "rmse_std", "seconds_per_run", "poster"), rows)
    wall = time.perf_counter() - t_all
    (out / "summary.json").write_text(json.dumps({"seeds": seeds, "generations": gens, "final": final,
                                                  "wall_seconds": wall, "results": summary}, indent=2))
    print(table)
    print(f"muir-synthetic: {len(seeds)} seed(s), {wall:.0f} s; results in {out}")
    return summary


# ---- muir-crossmodal ----------------------------------------------------------------------------

@dataclass
class CrossModalConfig:
    lstm_assay: str = "NR-AhR"  # read by the LSTM from SMILES characters
    mlp_assay: str = "SR-MMP"  # read by the MLP from Morgan fingerprints
    max_len: int = 80  # SMILES characters kept (the first max_len), left-padded with 0
    bits: int = 1024  # fingerprint bits
    split_seed: int = 0


def smiles_tokens(smiles: list[str], vocab: dict[str, int], max_len: int) -> torch.Tensor:
    """SMILES -> (n, max_len) float token ids, 0 = left padding, unknown characters -> len(vocab) + 1."""
    out = torch.zeros(len(smiles), max_len)
    for i, s in enumerate(smiles):
        ids = [vocab.get(ch, len(vocab) + 1) for ch in s[:max_len]]
        if ids:
            out[i, max_len - len(ids):] = torch.tensor(ids, dtype=torch.float32)
    return out


@register_dataset("crossmodal", CrossModalConfig, "digits (images) + Tox21 SMILES characters (one assay) + Tox21 "
                  "fingerprints (another assay): three inputs, three architectures (MUiR's cross-modal setting)")
def crossmodal_data(cfg: CrossModalConfig) -> MultiTaskData:
    if cfg.lstm_assay == cfg.mlp_assay:
        raise ConfigError(f"data.lstm_assay and data.mlp_assay must differ (both are {cfg.lstm_assay!r})")
    digits = get_dataset("digits").fn(get_dataset("digits").config(split_seed=cfg.split_seed))
    mol_cfg = get_dataset("tox21").config
    fp = get_dataset("tox21").fn(mol_cfg(tasks=(cfg.mlp_assay,), bits=cfg.bits, split_seed=cfg.split_seed))
    seq = get_dataset("tox21").fn(mol_cfg(tasks=(cfg.lstm_assay,), bits=8, split_seed=cfg.split_seed))
    chars = sorted({ch for s in seq.meta["smiles"]["train"] for ch in s})
    vocab = {ch: i + 1 for i, ch in enumerate(chars)}  # 0 = padding

    def tokens(split: str) -> Split:
        s = seq.split(split)
        return Split({"x": smiles_tokens(seq.meta["smiles"][split], vocab, cfg.max_len)}, dict(s.labels))

    seq = MultiTaskData("smiles", [Task(f"{cfg.lstm_assay}(smiles)", "binary")],
                        *(Split(tokens(s).inputs, {f"{cfg.lstm_assay}(smiles)": seq.split(s).labels[cfg.lstm_assay]})
                          for s in ("train", "val", "test")), {"vocab": vocab})
    fp = MultiTaskData("tox21", [Task(f"{cfg.mlp_assay}(fingerprint)", "binary")],
                       *(Split(fp.split(s).inputs, {f"{cfg.mlp_assay}(fingerprint)": fp.split(s).labels[cfg.mlp_assay]})
                         for s in ("train", "val", "test")))
    data = combine(digits, seq, fp, name="crossmodal")
    data.meta["vocab_size"] = len(vocab) + 2
    return data


CROSS_METHOD = {"arch": "smiles:lstm", "vocab": "64", "block": "16,16", "context": "4", "challengers": "1",
                "challenger_mass": "0.5", "soft_lr": "0.1", "steps_per_generation": "50", "burn_in": "2",
                "generations": "1000"}


@register_experiment("muir-crossmodal", "MUiR across a conv net (digits), an LSTM (SMILES) and an MLP (Tox21 "
                     "fingerprints) vs the same models without sharing; per-task table and sharing figure")
def crossmodal(overrides: list[str], out: Path):
    """Overrides as for every compare() experiment: seeds=0,1, epochs=..., data.KEY=..., LABEL.KEY=..."""
    contenders = [Contender("no-sharing", "muir", {**CROSS_METHOD, "generations": "0"}),
                  Contender("muir", "muir", CROSS_METHOD)]
    result = compare("muir-crossmodal", "crossmodal", contenders, seeds=(0,),
                     overrides=["epochs=10", "patience=0", "progress=false", *overrides], out=out)
    tasks = [t.name for t in result.data.tasks]
    for run in result.runs["muir"]:
        write_sharing(run.trainer.hooks.history, tasks, run.dir, "cross-modal:")
        final = run.trainer.hooks.history[-1]
        shares = subset_shares(final["sharing"], tasks)
        print(f"muir seed {run.spec.train.seed}: {final['modules']} hypermodules in use of "
              f"{run.model.muir.n_locations} locations after generation {final['generation']}; shares: "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])))
    return result
