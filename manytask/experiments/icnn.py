"""The thesis's experiments (Ramabaja 2018, thesis 000): embedded Tox21, seeded random split, 3 seeds.

    manytask run icnn-tox21         Table 1: ICNN vs NN MTL, NN STL, NN2 STL
    manytask run icnn-tox21-noise   Table 2: the same with 4 random correlated tasks added
    manytask run icnn-tox21-fake    section 5.3: each assay alone with 11 fake correlated tasks
    manytask run icnn-prune         sections 6.2 and 8: prune connectors after training, fine-tune

The four contenders (thesis section 4, scenario 1):
    ICNN      icnn with widths W_I per subnetwork (icnn_widths=, default 128,64)
    NN_MTL    hard sharing, widths W_M (mtl_widths=, default 1024,512; x N/12 when tasks are added, as the
              thesis grew it by 33% for 16 tasks)
    NN_STL    one net per task whose units sum to NN MTL's (network A): widths W_M / N per task
    NN2_STL   one net per task with as many parameters as one ICNN subnetwork's root weights and biases
              (network B): stl params_per_task = mlp_params(d, W_I, 1)
icnn-tox21 adds ICNN_joint: the same ICNN trained without gradient isolation (isolate=false), an ablation.
Other keys go to compare(): seeds=, training keys (epochs=, lr=...), data.KEY=, LABEL.KEY= (e.g.
ICNN.dropout=0.5). Every ICNN run directory gets connectors.csv/png (the last inter-layer's heatmap).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from safetensors.torch import save_model

from ..config import ConfigError, split_overrides
from ..data.base import MultiTaskData
from ..metrics import mean_over_tasks
from ..nn.interconnected import apply_masks, count_connectors, prune_connectors
from ..nn.mlp import mlp_params
from ..registry import register_experiment
from ..report import fmt, heatmap, mean_std, pm, text_table, write_csv
from ..runs import load_data, load_run, n_params, resolve
from ..train import Hooks, Trainer, evaluate_split
from .runner import Contender, ExperimentResult, compare

# Thesis Table 1 and Table 2 (test AUC, mean of 3 trainings), task names as in our Tox21 file.
_T1 = {  # task: (ICNN MTL, NN MTL, NN STL, NN2 STL)
    "NR-AhR": (0.81, 0.77, 0.78, 0.65), "NR-AR": (0.71, 0.66, 0.64, 0.46), "NR-AR-LBD": (0.52, 0.54, 0.56, 0.47),
    "NR-Aromatase": (0.71, 0.69, 0.71, 0.59), "NR-ER": (0.71, 0.75, 0.74, 0.68), "NR-ER-LBD": (0.63, 0.61, 0.61, 0.53),
    "NR-PPAR-gamma": (0.71, 0.62, 0.59, 0.49), "SR-ARE": (0.70, 0.67, 0.70, 0.64), "SR-ATAD5": (0.72, 0.62, 0.71, 0.43),
    "SR-HSE": (0.63, 0.55, 0.57, 0.49), "SR-MMP": (0.80, 0.76, 0.77, 0.67), "SR-p53": (0.75, 0.69, 0.73, 0.48)}
_T2 = {
    "NR-AhR": (0.79, 0.78, 0.78, 0.65), "NR-AR": (0.70, 0.69, 0.64, 0.46), "NR-AR-LBD": (0.62, 0.59, 0.56, 0.47),
    "NR-Aromatase": (0.72, 0.65, 0.71, 0.59), "NR-ER": (0.72, 0.74, 0.74, 0.68), "NR-ER-LBD": (0.63, 0.60, 0.61, 0.53),
    "NR-PPAR-gamma": (0.69, 0.66, 0.59, 0.49), "SR-ARE": (0.70, 0.68, 0.70, 0.64), "SR-ATAD5": (0.71, 0.72, 0.71, 0.43),
    "SR-HSE": (0.65, 0.60, 0.57, 0.49), "SR-MMP": (0.79, 0.76, 0.77, 0.67), "SR-p53": (0.71, 0.73, 0.73, 0.48)}
COLUMNS = ("ICNN", "NN_MTL", "NN_STL", "NN2_STL")
TOX21 = tuple(_T1)


def paper_table(table: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    """{column: {task: AUC}} for compare(paper=...)."""
    return {c: {t: v[j] for t, v in table.items()} for j, c in enumerate(COLUMNS)}


# Training settings of every experiment here (before the user's overrides), the same for every contender:
# early stopping on the mean validation loss with a short patience, and L2 weight decay (Adam's
# weight_decay) 5e-4, chosen on seed 0 by the ICNN's mean VALIDATION AUC among 0, 1e-4, 5e-4, 1e-3, 3e-3, 1e-2
# (docs/icnn.md, "Choosing the recipe"): without it every network overfits Tox21 within 3 epochs.
TRAIN = ["epochs=40", "patience=3", "weight_decay=5e-4"]


def _widths(kv: dict[str, str], key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if key not in kv:
        return default
    try:
        w = tuple(int(s) for s in kv.pop(key).split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"{key}=...: expected comma-separated integers, e.g. {key}=128,64") from None
    if len(w) < 2 or min(w) < 1:
        raise ConfigError(f"{key}: need at least two positive widths, e.g. {key}=128,64")
    return w


def contenders(data: MultiTaskData, icnn_w: tuple[int, ...], mtl_w: tuple[int, ...]) -> list[Contender]:
    """The thesis's four networks for `data` (see the module docstring)."""
    N, d = len(data.tasks), math.prod(data.input_shapes["x"])
    stl_w = tuple(max(1, round(w / N)) for w in mtl_w)  # network A: units sum to NN MTL's
    roots = mlp_params(d, icnn_w, 1)  # one ICNN subnetwork's roots + biases + head
    csv_ = lambda w: ",".join(map(str, w))
    return [Contender("ICNN", "icnn", {"widths": csv_(icnn_w)}),
            Contender("NN_MTL", "hard_sharing", {"widths": csv_(mtl_w)}),
            Contender("NN_STL", "stl", {"widths": csv_(stl_w)}),
            Contender("NN2_STL", "stl", {"widths": csv_(icnn_w), "params_per_task": str(roots)})]


def prepare(overrides: list[str], data_defaults: list[str]) -> tuple[MultiTaskData, list[Contender], list[str]]:
    """Pop the experiment keys, build the data once, and the four contenders."""
    kv = split_overrides(list(overrides))
    icnn_w = _widths(kv, "icnn_widths", (128, 64))
    data_kv = {**split_overrides(data_defaults), **{k: v for k, v in kv.items() if k.startswith("data.")}}
    data = load_data(resolve("tox21", "icnn", data_kv))
    scale = len(data.tasks) / 12  # the thesis grew NN MTL by 33% when it added 4 tasks to 12
    mtl_w = _widths(kv, "mtl_widths", tuple(round(w * scale) for w in (1024, 512)))
    rest = [f"{k}={v}" for k, v in kv.items()]
    return data, contenders(data, icnn_w, mtl_w), [*TRAIN, *data_defaults, *rest]


def heatmaps(result: ExperimentResult, label: str = "ICNN") -> np.ndarray:
    """The mean over seeds of the connectors.csv that every ICNN run directory holds (ICNN.write_artifacts),
    as CSV and PNG in the experiment directory; -> the mean (N_src, N_dst) matrix of the last inter-layer."""
    names = [t.name for t in result.data.tasks]
    mats = []
    for r in result.runs[label]:
        mats.append(np.loadtxt(r.dir / "connectors.csv", delimiter=",", skiprows=1, usecols=range(1, len(names) + 1)))
    mean = np.mean(mats, axis=0)
    write_csv(result.dir / "connectors_mean.csv", ("source", *names), [(n, *row) for n, row in zip(names, mean)])
    shown = mean.copy()
    np.fill_diagonal(shown, np.nan)
    heatmap(shown, names, names, result.dir / "connectors_mean.png",
            title=f"sum |W(source->target)|, last inter-layer, mean of {len(mats)} seeds (diagonal omitted)",
            xlabel="target subnetwork", ylabel="source subnetwork")
    return mean


def diff_line(result: ExperimentResult, tasks: list[str], a: str = "ICNN", b: str = "NN2_STL") -> tuple[float, float, str]:
    """Mean test AUC over `tasks` of a minus b, per seed -> (mean, std, text)."""
    ts = [t for t in result.data.tasks if t.name in tasks]
    per = [mean_over_tasks(ra.tables["test"], ts)["auc"] - mean_over_tasks(rb.tables["test"], ts)["auc"]
           for ra, rb in zip(result.runs[a], result.runs[b])]
    m, s = mean_std(per)
    return m, s, f"{a} - {b}, mean test AUC over {len(ts)} tasks: {pm(per)} (per seed {[round(v, 4) for v in per]})"


def means_over(result: ExperimentResult, tasks: list[str]) -> dict[str, list[float]]:
    ts = [t for t in result.data.tasks if t.name in tasks]
    return {label: [mean_over_tasks(r.tables["test"], ts)["auc"] for r in runs] for label, runs in result.runs.items()}


def finish(result: ExperimentResult, name: str, extra: dict) -> None:
    finish_dir(result.dir, name, extra)


def finish_dir(out: Path, name: str, extra: dict) -> None:
    """Append the experiment's own figures to out/summary.json and print them."""
    summary = json.loads((out / "summary.json").read_text())
    summary.update(extra)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{name}: " + json.dumps(extra, indent=1))


@register_experiment("icnn-tox21", "thesis Table 1: ICNN vs NN MTL / NN STL / NN2 STL on Tox21, 3 seeds")
def icnn_tox21(overrides: list[str], out: Path):
    data, cons, rest = prepare(overrides, [])
    icnn = cons[0]  # ablation: the same network trained jointly, without gradient isolation
    cons.append(Contender("ICNN_joint", "icnn", {**icnn.overrides, "isolate": "false"}))
    result = compare("icnn-tox21", "tox21", cons, (0, 1, 2), rest, out, paper=paper_table(_T1), data=data)
    mean = heatmaps(result)
    m, s, line = diff_line(result, TOX21)
    print(line)
    finish(result, "icnn-tox21", {"icnn_minus_nn2": {"mean": m, "std": s},
                                  "connector_sum_offdiag": float(mean.sum() - np.trace(mean))})
    return result


@register_experiment("icnn-tox21-noise", "thesis Table 2: Tox21 plus 4 random correlated tasks, 3 seeds")
def icnn_tox21_noise(overrides: list[str], out: Path):
    data, cons, rest = prepare(overrides, ["data.fake_tasks=4"])
    result = compare("icnn-tox21-noise", "tox21", cons, (0, 1, 2), rest, out, paper=paper_table(_T2), data=data)
    mean = heatmaps(result)
    names = [t.name for t in data.tasks]
    real = [i for i, n in enumerate(names) if n in TOX21]
    fake = [i for i, n in enumerate(names) if n not in TOX21]
    off = ~np.eye(len(names), dtype=bool)

    def block(src, dst):  # mean sum|W| per ordered pair between two groups (diagonal excluded)
        sel = np.zeros_like(off)
        sel[np.ix_(src, dst)] = True
        return float(mean[sel & off].mean())

    blocks = {"real->real": block(real, real), "fake->fake": block(fake, fake),
              "real->fake": block(real, fake), "fake->real": block(fake, real)}
    print(text_table(("pair of groups", "mean sum|W| per ordered pair"), list(blocks.items())))
    print(text_table(("contender", "mean test AUC, 12 Tox21 tasks"), [(k, pm(v)) for k, v in means_over(result, TOX21).items()]))
    m, s, line = diff_line(result, TOX21)
    print(line)
    finish(result, "icnn-tox21-noise", {"connector_blocks": blocks, "icnn_minus_nn2_tox21": {"mean": m, "std": s},
                                        "mean_test_auc_tox21": means_over(result, TOX21)})
    return result


@register_experiment("icnn-tox21-fake", "thesis s. 5.3: each Tox21 assay with 11 fake correlated tasks (ICNN), 3 seeds")
def icnn_tox21_fake(overrides: list[str], out: Path):
    """For each assay: data.tasks=ASSAY data.fake_tasks=11, ICNN (and NN MTL with with_mtl=true); the
    assay's test AUC beside its Table 1 value. assays=A,B limits the assays."""
    kv = split_overrides(list(overrides))
    assays = tuple(kv.pop("assays").split(",")) if "assays" in kv else TOX21
    unknown = [a for a in assays if a not in TOX21]
    if unknown:
        raise ConfigError(f"assays=: unknown {unknown}; choose from {', '.join(TOX21)}")
    with_mtl = kv.pop("with_mtl", "false").lower() in ("1", "true", "yes")
    labels = ("ICNN", "NN_MTL") if with_mtl else ("ICNN",)
    rows, csv_rows, heat = [], [], {}
    for assay in assays:
        data, cons, rest = prepare([f"{k}={v}" for k, v in kv.items()], [f"data.tasks={assay}", "data.fake_tasks=11"])
        cons = [c for c in cons if c.label in labels]
        result = compare(f"icnn-tox21-fake {assay}", "tox21", cons, (0, 1, 2), rest, out / assay, data=data, echo=False)
        mean = heatmaps(result)
        heat[assay] = {"to_assay_from_fakes": float(mean[1:, 0].mean()), "fake_to_fake": float(
            mean[1:, 1:][~np.eye(len(mean) - 1, dtype=bool)].mean())}
        vals = {label: result.metric(label, assay) for label in labels}
        rows.append((assay, *(pm(vals[lb]) for lb in labels), fmt(_T1[assay][0], 2), fmt(_T1[assay][1], 2)))
        csv_rows += [(assay, lb, *mean_std(vals[lb]), json.dumps(vals[lb])) for lb in labels]
        print(f"[icnn-tox21-fake] {assay}: " + ", ".join(f"{lb} {pm(vals[lb])}" for lb in labels), flush=True)
    table = text_table(("assay + 11 fake", *(f"{lb} test AUC" for lb in labels), "paper T1 ICNN", "paper T1 NN MTL"), rows)
    print(table)
    write_csv(out / "table.csv", ("assay", "contender", "mean", "std", "per_seed"), csv_rows)
    (out / "summary.json").write_text(json.dumps({"experiment": "icnn-tox21-fake", "assays": list(assays),
                                                  "connector_means": heat}, indent=2))
    (out / "table.txt").write_text(table + "\n")
    return table


class KeepPruned(Hooks):
    """Fine-tuning after pruning: put the pruned connectors back to zero after every optimizer step."""

    def __init__(self, kept):
        self.kept = kept

    def after_step(self, trainer) -> None:
        apply_masks(self.kept)


@register_experiment("icnn-prune", "thesis s. 6.2: prune ICNN connectors after training, fine-tune, report the change")
def icnn_prune(overrides: list[str], out: Path):
    """Train ICNN on Tox21 (3 seeds) or load trained ICNN runs (from=DIR,...: icnn-tox21 directories, whose
    ICNN/seed* runs are used, or run directories); then zero the prune=FRACTION smallest-|w| connectors
    of each inter-layer and fine-tune finetune=EPOCHS epochs with them held at zero. Reports parameters
    and mean test AUC before, after pruning, and after fine-tuning. connector_l1= trains with the L1
    penalty first (thesis s. 8). The pruned weights go to out/pruned-seedS.safetensors."""
    kv = split_overrides(list(overrides))
    try:
        fraction, ft_epochs = float(kv.pop("prune", "0.9")), int(kv.pop("finetune", "3"))
    except ValueError:
        fraction, ft_epochs = math.nan, 0
    if not (0.0 <= fraction < 1.0) or ft_epochs < 0:
        raise ConfigError("prune= is a fraction in [0, 1) and finetune= a number of epochs >= 0, e.g. prune=0.9 finetune=3")
    source = kv.pop("from", "")
    if source:
        dirs = []
        for src in (Path(s) for s in source.split(",") if s.strip()):
            found = [src] if (src / "config.json").exists() else sorted(src.glob("ICNN/seed*"))
            if not found:
                raise ConfigError(f"from={src}: neither a run directory nor an experiment directory with ICNN/seed* runs")
            dirs += found
        trained = []
        for d in dirs:
            spec, data, model = load_run(d)
            if spec.method != "icnn":
                raise ConfigError(f"from={source}: {d} is a {spec.method} run, not icnn")
            trained.append((spec, data, model))
    else:
        data, cons, rest = prepare([f"{k}={v}" for k, v in kv.items()], [])
        result = compare("icnn-prune", "tox21", cons[:1], (0, 1, 2), rest, out, data=data)
        heatmaps(result)
        trained = [(r.spec, data, r.model) for r in result.runs["ICNN"]]
    rows = []
    for spec, data, model in trained:
        model.to("cpu")
        auc = lambda: mean_over_tasks(evaluate_split(model, data.test, data.tasks)[0], data.tasks)["auc"]
        before_auc, total_before = auc(), n_params(model)
        nz0, _ = count_connectors(model)
        kept = prune_connectors(model, fraction)
        nz1, _ = count_connectors(model)
        pruned_auc, ft_auc = auc(), math.nan
        if ft_epochs > 0:
            cfg = dataclasses.replace(spec.train, epochs=ft_epochs, patience=0, progress=False)
            Trainer(model, data, cfg, KeepPruned(kept)).fit()
            model.to("cpu")
            ft_auc = auc()
        rows.append({"seed": spec.train.seed, "params_before": total_before,
                     "params_after": total_before - (nz0 - count_connectors(model)[0]),
                     "connectors_before": nz0, "connectors_after": nz1, "auc_before": before_auc,
                     "auc_pruned": pruned_auc, "auc_finetuned": ft_auc})
        save_model(model, str(out / f"pruned-seed{spec.train.seed}.safetensors"))
    header = tuple(rows[0])
    write_csv(out / "prune.csv", header, [tuple(r.values()) for r in rows])
    print(text_table(header, [tuple(r.values()) for r in rows], digits=4))
    extra = {"prune": fraction, "finetune_epochs": ft_epochs, "from": source,
             "auc_change_pruned": mean_std([r["auc_pruned"] - r["auc_before"] for r in rows]),
             "auc_change_finetuned": mean_std([r["auc_finetuned"] - r["auc_before"] for r in rows]),
             "params_before": rows[0]["params_before"], "params_after": [r["params_after"] for r in rows]}
    if not (out / "summary.json").exists():
        (out / "summary.json").write_text(json.dumps({"experiment": "icnn-prune"}))
    finish_dir(out, "icnn-prune", extra)
    return rows


@register_experiment("icnn-merge", "merge icnn-tox21(-noise) directories run with different seeds= into one table")
def icnn_merge(overrides: list[str], out: Path):
    """from=DIR1,DIR2,...: directories of the SAME experiment (icnn-tox21 or icnn-tox21-noise) run with
    different seeds (e.g. in parallel processes); writes the combined table.csv / table.txt /
    summary.json to out, with the paper's column and the ICNN - NN2 STL difference over all seeds."""
    kv = split_overrides(list(overrides))
    dirs = [Path(d) for d in kv.pop("from", "").split(",") if d.strip()]
    if kv or not dirs:
        raise ConfigError("icnn-merge takes only from=DIR1,DIR2,... (experiment directories with table.csv)")
    summaries = []
    for d in dirs:
        if not (d / "summary.json").exists():
            raise ConfigError(f"from=: {d} has no summary.json; is it a finished icnn-tox21 run?")
        summaries.append(json.loads((d / "summary.json").read_text()))
    names = {s["experiment"] for s in summaries}
    if len(names) != 1 or names - {"icnn-tox21", "icnn-tox21-noise"}:
        raise ConfigError(f"from=: need directories of one experiment (icnn-tox21 or icnn-tox21-noise), got {sorted(names)}")
    name = names.pop()
    seeds = [s for sm in summaries for s in sm["seeds"]]
    per: dict[tuple[str, str], list[float]] = {}
    for d in dirs:
        for r in csv.DictReader(open(d / "table.csv")):
            per.setdefault((r["contender"], r["task"]), []).extend(json.loads(r["per_seed"]))
    labels = list(dict.fromkeys(c for c, _ in per))
    tasks = list(dict.fromkeys(t for _, t in per))
    paper = paper_table(_T1 if name == "icnn-tox21" else _T2)
    rows = [[t, *(pm(per[(lb, t)]) for lb in labels), *(fmt(paper[p].get(t, math.nan), 2) for p in paper)] for t in tasks]

    def mean_over(label, subset):  # mean over `subset` tasks of the test AUC, one value per seed
        return [float(np.nanmean([per[(label, t)][i] for t in subset])) for i in range(len(seeds))]

    rows.append(["mean auc", *(pm(mean_over(lb, tasks)) for lb in labels), *(fmt(float(np.mean(list(paper[p].values()))), 3) for p in paper)])
    if name == "icnn-tox21-noise":
        rows.append(["mean auc (12 Tox21)", *(pm(mean_over(lb, TOX21)) for lb in labels), *([""] * len(paper))])
    rows.append(["parameters", *(f"{summaries[0]['contenders'][lb]['params']:,}" for lb in labels), *([""] * len(paper))])
    table = text_table(["task", *labels, *(f"paper {p}" for p in paper)], rows)
    diff = [a - b for a, b in zip(mean_over("ICNN", TOX21), mean_over("NN2_STL", TOX21))]
    line = f"ICNN - NN2_STL, mean test AUC over the 12 Tox21 tasks: {pm(diff)} (per seed {[round(v, 4) for v in diff]})"
    print(f"{name}, seeds {seeds}")
    print(table)
    print(line)
    write_csv(out / "table.csv", ("contender", "task", "mean", "std", "per_seed"),
              [(lb, t, *mean_std(per[(lb, t)]), json.dumps(per[(lb, t)])) for lb in labels for t in tasks])
    (out / "table.txt").write_text(f"{name}, seeds {seeds}\n{table}\n{line}\n")
    extra = {k: [sm.get(k) for sm in summaries] for k in ("connector_blocks", "seconds") if k in summaries[0]}
    (out / "summary.json").write_text(json.dumps({"experiment": name, "merged_from": [str(d) for d in dirs], "seeds": seeds,
                                                  "icnn_minus_nn2_tox21": dict(zip(("mean", "std"), mean_std(diff))),
                                                  "mean_test_auc": {lb: mean_over(lb, tasks) for lb in labels}, **extra}, indent=2))
    return table
