"""`manytask tune DATA METHOD trials=N`: search a method's keys with Optuna, on the validation split only.

The search space is declared beside each key: `option(..., search=("log", 1e-4, 1e-2))` in the training
config and in every method's config (manytask/config.py). A trial draws every searched key with Optuna's
TPE sampler, trains on the training split without writing a run directory, reports the mean validation
primary metric after every validated epoch (the median rule stops trials that fall behind: pruning) and
returns the mean validation primary metric of its best epoch's weights (when the tasks' primary metrics
differ, binary and regression tasks together, the mean validation loss instead). Only validation figures of a trial
are kept or shown (runs.train_run also evaluates the test split when it ends; a trial drops those values).

The study lives in an Optuna RDB storage: by default SQLite, OUT/NAME/study.db, NAME = tune-DATA-METHOD or
study=NAME. The same command again resumes it: trials=N is the total, so only the missing trials run (a
study started with other keys is an error). Workers (workers=K local processes, or the same command on
several machines against one storage=URL, e.g. PostgreSQL) take trials one at a time while fewer than N
are done or running: locally behind a file lock in OUT/NAME, so the count is exact (across machines each
check is separate: up to one extra trial per further machine). A worker that dies
loses only its running trial: its RUNNING trial is marked FAIL by the next worker on that host that sees
its process gone, or after GRACE seconds without a heartbeat on any host (Optuna's fail_stale_trials).

OUT/NAME gets best.json (the recipe: `manytask train DATA METHOD recipe=best.json`), trials.csv, history.png
(every completed trial's value and the best so far), importances.csv/.png (Optuna's default importance
evaluator, PED-ANOVA: how much each key's value separates the best trials from the rest).
confirm_seeds=K trains the best keys again on K seeds no trial used and only then shows test metrics,
beside the validation ones: OUT/NAME/confirm/.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import TrialState

from .config import ConfigError, apply, field_types, option, spec_of, split_overrides
from .data.base import MultiTaskData
from .files import write_text
from .metrics import HIGHER_IS_BETTER, ranking_metric, ranking_note
from .registry import get_method
from .report import line_plot, mean_pm, text_table, write_csv, write_results
from .runs import RunStopped, choose_metric, flat_config, graph_defaults, load_data, records, resolve, train_run
from .train import TrainConfig, TrainingDiverged

HEARTBEAT, GRACE = 10, 60  # seconds: a trial's heartbeat; silent this long, another worker marks it FAIL
NOT_IN_RECIPE = ("seed", "progress", "device")  # how trials ran, not what they chose
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneConfig:
    trials: int = option(20, "trials in all; a study that has some already runs only the rest", low=1)
    workers: int = option(1, "local processes that share the study", low=1)
    confirm_seeds: int = option(0, "then train the best keys on this many fresh seeds and show their test metrics",
                                low=0)
    storage: str = option("", "Optuna storage URL, e.g. postgresql://USER:PASSWORD@HOST/DB (default: "
                              "sqlite:///OUT/NAME/study.db)")
    study: str = option("", "the study's name and folder under --out (default: tune-DATA-METHOD)")
    space: tuple[str, ...] = option((), "the keys to search (default: every key of the training and the method's "
                                        "config that declares a search range and is not set on the command line)")
    prune: bool = option(True, "stop trials whose validation metric falls below the median of earlier trials "
                               "at the same epoch")
    sampler_seed: int = option(0, "seed of the TPE sampler", low=0)


def search_space(method: str) -> dict[str, tuple[tuple, Any]]:
    """{key: (search declaration, field type)} of the training keys and the method's keys that declare a
    search range (the training key wins a name both have, as in runs.resolve)."""
    space = {}
    for cls in (get_method(method).config, TrainConfig):
        types = field_types(cls)
        space.update({f.name: (spec_of(f).search, types[f.name]) for f in dataclasses.fields(cls)
                      if spec_of(f).search is not None})
    return space


def text(value: Any) -> Any:
    """A tuple as the command line writes it ("1024,512"), for an Optuna categorical; other values as they are."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def suggest(trial: optuna.Trial, key: str, search: tuple, tp: Any) -> Any:
    """One key's value for `trial` from its search declaration: a typed value of the field's type."""
    kind, *args = search
    if kind == "choice":
        shown = [text(v) for v in args[0]]
        return args[0][shown.index(trial.suggest_categorical(key, shown))]
    if kind == "int" or (kind == "log" and tp is int):
        return trial.suggest_int(key, int(args[0]), int(args[1]), log=kind == "log")
    return trial.suggest_float(key, float(args[0]), float(args[1]), log=kind == "log")


def typed(params: dict[str, Any], space: dict[str, tuple[tuple, Any]]) -> dict[str, Any]:
    """A trial's params -> typed values (a categorical tuple's text back to the tuple)."""
    out = {}
    for key, value in params.items():
        search = space[key][0]
        out[key] = search[1][[text(v) for v in search[1]].index(value)] if search[0] == "choice" else value
    return out


@dataclass
class Plan:
    """Everything a worker needs, checked: picklable, for worker processes."""

    data: str
    method: str
    fixed: dict[str, str]  # key=value from the command line besides the tune's own keys
    space: list[str]  # the keys searched
    cfg: TuneConfig
    dir: Path
    storage: str  # the full URL

    @property
    def name(self) -> str:
        return self.dir.name

    def settings(self) -> dict:
        """What a resumed study must have been started with."""
        return {"data": self.data, "method": self.method, "space": self.space,
                "fixed": {k: v for k, v in self.fixed.items() if k not in ("progress", "device")}}

    def recipe_keys(self) -> dict[str, Any]:
        """The fixed keys that belong in the recipe, typed: the training and method keys (not data.*, seed, ...),
        and on graphs the method's graph defaults that the trials trained with."""
        spec = resolve(self.data, self.method, self.fixed)
        values, keys = flat_config(spec), [k.removeprefix("method.") for k in self.fixed]
        keys += list(graph_defaults(get_method(self.method).config, spec.data_cfg))
        return {k: values[k] for k in keys if not k.startswith("data.") and k not in NOT_IN_RECIPE}

    def data_keys(self) -> str:
        """The fixed data.* keys as the command line gives them: the recipe holds none."""
        return "".join(f"{k}={v} " for k, v in self.fixed.items() if k.startswith("data."))


def plan(data: str, method: str, args: Sequence[str], out: str | Path) -> Plan:
    """Parse and check every key (the tune's own, the fixed run keys, space=, storage=) -> a Plan. Writes
    nothing: every error is a ConfigError before the tune's folder exists."""
    kv = split_overrides(list(args))
    own = set(field_types(TuneConfig))
    cfg = apply(TuneConfig(), {k: v for k, v in kv.items() if k in own}, "tune")
    fixed = {"progress": "false", **{k: v for k, v in kv.items() if k not in own}}
    if resolve(data, method, fixed).train.ensemble > 1:  # (and a bad fixed key or value)
        raise ConfigError(f"ensemble={fixed['ensemble']}: tune trains and scores single models; tune without it, "
                          f"then train the best keys as an ensemble: manytask train {data} {method} recipe=BEST.json "
                          f"ensemble={fixed['ensemble']}")
    searchable = search_space(method)
    given = {k.removeprefix("method.") for k in fixed}
    for key in cfg.space:
        if key not in searchable:
            raise ConfigError(f"space={','.join(cfg.space)}: {key} has no search range; searchable keys of "
                              f"{method}: {', '.join(sorted(searchable))}")
        if key in given:
            raise ConfigError(f"{key} is set on the command line and named in space=; set it or search it")
    space = list(cfg.space) or [k for k in searchable if k not in given]
    if not space:
        raise ConfigError(f"nothing to search: every searchable key of {method} ({', '.join(sorted(searchable))}) "
                          "is set on the command line")
    name = cfg.study or f"tune-{data}-{method}"
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"study={name}: a study name is a folder name under --out, without /")
    folder = Path(out) / name
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; give another --out or study=NAME")
    storage = cfg.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    check_url(storage)
    return Plan(data, method, fixed, space, cfg, folder, storage)


def check_url(url: str) -> None:
    """A database URL SQLAlchemy can use (dialect and driver installed); else a ConfigError. Connects to nothing."""
    from sqlalchemy import create_engine, exc
    from sqlalchemy.engine import make_url
    try:
        create_engine(make_url(url))
    except exc.ArgumentError:
        raise ConfigError(f"storage={url}: not a database URL; give e.g. sqlite:///study.db or "
                          "postgresql://USER:PASSWORD@HOST/DB") from None
    except (exc.NoSuchModuleError, ImportError) as e:
        raise ConfigError(f"storage={shown_url(url)}: this database is not available here ({e}); install the driver "
                          "it names (for postgresql://: pip install 'psycopg[binary]')") from None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage with a heartbeat (HEARTBEAT, GRACE); SQLite waits for the lock of another worker
    instead of failing. A database that cannot be reached is a ConfigError."""
    from sqlalchemy import exc
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT,
                                              grace_period=GRACE)
    except exc.SQLAlchemyError as e:
        raise ConfigError(f"storage={shown_url(url)}: cannot open it ({str(e).splitlines()[0][:160]})") from None


def shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)


def open_study(p: Plan, storage: optuna.storages.RDBStorage, direction: str, worker: int = 0) -> optuna.Study:
    """The plan's study, created if new; an existing one must have been started with the plan's settings.
    The sampler's seed differs per worker and per number of trials already made (and, with storage=, per
    host and process), so that no two workers, no resumed tune and no two machines repeat each other's
    random start-up draws; the same command on a fresh study draws the same keys."""
    made = 0
    if p.name in {s.study_name for s in storage.get_all_studies()}:
        made = storage.get_n_trials(storage.get_study_id_from_name(p.name))
    where = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) if p.cfg.storage else 0
    sampler = optuna.samplers.TPESampler(seed=(p.cfg.sampler_seed + 7919 * worker + 104729 * made + where) % 2**32,
                                         constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2) if p.cfg.prune \
        else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, study_name=p.name, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    saved, settings = study.user_attrs.get("settings"), json.loads(json.dumps(p.settings()))
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        differ = [k for k in settings if saved.get(k) != settings[k]]
        raise ConfigError(f"study {p.name} in {shown_url(p.storage)} was started with other {differ[0]} "
                          f"({saved[differ[0]]}); run it with those, or start another with study=NAME")
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {p.name} {study.direction.name.lower()}s its value, this tune would {direction}")
    return study


# ---- workers ------------------------------------------------------------------------------------------------

def gone(pid: int) -> bool:
    """Whether process `pid` of this host has ended (a zombie, ended but not yet reaped, has too)."""
    if Path("/proc/self/stat").exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def fail_lost_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone: on this host, a process that has ended; on any
    host, no heartbeat for GRACE seconds. -> their numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host, lost = socket.gethostname(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") == host and gone(t.user_attrs.get("pid", os.getpid())):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                storage.set_trial_user_attr(trial_id, "error", "its worker process ended during the trial")
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
                lost.append(t.number)
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker marked it first
                pass
    return lost


def counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in (*DONE, TrialState.FAIL, TrialState.RUNNING)}


def work(p: Plan, worker: int = 0, processes: int = 1, data: MultiTaskData | None = None) -> None:
    """One worker: train trials one at a time while fewer than p.cfg.trials are done or running. Checking the
    count and creating the trial happen under a file lock in the tune's folder (exact on one host). `data`:
    the plan's data set, already loaded (else loaded here)."""
    if processes > 1:
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets one line of ours instead
    base = resolve(p.data, p.method, p.fixed)
    data = choose_metric(data or load_data(base), base.train.metric)
    metric = ranking_metric(data.tasks)
    storage = open_storage(p.storage)
    study = open_study(p, storage, direction_of(metric), worker)
    space = {k: search_space(p.method)[k] for k in p.space}
    with open(p.dir / "study.lock", "a") as lock:
        def objective(trial: optuna.Trial) -> float:
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("pid", os.getpid())
            fcntl.flock(lock, fcntl.LOCK_UN)  # the trial exists and is RUNNING: others may count it now
            spec = resolve(p.data, p.method, {**p.fixed, **{k: suggest(trial, k, *space[k]) for k in p.space}})

            def report(row: dict) -> None:
                value = row.get(f"val_{metric}", math.nan)
                trial.set_user_attr("epochs", row["epoch"])
                if math.isfinite(value):
                    trial.report(value, row["epoch"])
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"at epoch {row['epoch']}, val {metric} {value:.4f}")
            try:
                result = train_run(spec, data, out=None, echo=False, on_epoch=report)
            except (ConfigError, TrainingDiverged) as e:  # these keys do not train: the trial fails, the tune goes on
                trial.set_user_attr("error", str(e))
                raise
            value = result.summary["mean"]["val"][metric]
            if not math.isfinite(value):  # Optuna fails such a trial
                trial.set_user_attr("error", f"val {metric} is {value} (undefined on every task)")
            return value

        while True:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                fail_lost_trials(study, storage)
                n = counts(study)
                if n["complete"] + n["pruned"] + n["running"] >= p.cfg.trials:
                    break
                study.optimize(objective, n_trials=1, catch=(ConfigError, TrainingDiverged),
                               callbacks=[lambda s, t: progress(s, t, p.cfg.trials, metric)])
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def direction_of(metric: str) -> str:
    return "maximize" if HIGHER_IS_BETTER[metric] else "minimize"


def progress(study: optuna.Study, t: optuna.trial.FrozenTrial, total: int, metric: str) -> None:
    """One line on stderr per finished trial: its state, value, keys, time, and the best so far."""
    n = counts(study)
    keys = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
    seconds = t.duration.total_seconds() if t.duration else math.nan
    if t.state == TrialState.COMPLETE:
        what = f"val {metric} {t.value:.4f}"
    elif t.state == TrialState.PRUNED:
        steps = t.intermediate_values
        what = f"pruned after epoch {max(steps)} (val {metric} {steps[max(steps)]:.4f})" if steps else "pruned"
    else:
        what = f"failed: {t.user_attrs.get('error', 'see the error above')}"
    try:
        best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "no completed trial yet"
    print(f"tune: trial {t.number} {what}  {keys}  {seconds:.1f} s; {n['complete'] + n['pruned']}/{total} done, "
          f"{best}", file=sys.stderr, flush=True)


# ---- the command ----------------------------------------------------------------------------------------------

def tune(data: str, method: str, args: Sequence[str], out: str | Path = "runs") -> Path:
    """`manytask tune DATA METHOD key=value ...` -> the tune's folder (see the module docstring)."""
    p = plan(data, method, args, out)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets one line of ours instead
    base = resolve(p.data, p.method, p.fixed)
    data = choose_metric(load_data(base), base.train.metric)  # a bad data file: nothing written
    metric = ranking_metric(data.tasks)
    if note := ranking_note(data.tasks):
        print(f"tune: {note}", file=sys.stderr, flush=True)
    storage = open_storage(p.storage) if p.cfg.storage else None  # an unreachable database: nothing written
    made = not p.dir.exists()
    p.dir.mkdir(parents=True, exist_ok=True)
    try:
        storage = storage or open_storage(p.storage)
        study = open_study(p, storage, direction_of(metric))
    except ConfigError:
        if made:
            for f in p.dir.iterdir():
                f.unlink()
            p.dir.rmdir()
        raise
    lost = fail_lost_trials(study, storage)
    n = counts(study)
    done = n["complete"] + n["pruned"]
    print(f"tune: study {p.name} ({shown_url(p.storage)}): {done} of {p.cfg.trials} trials done"
          + (f", trials {lost} of ended workers marked failed" if lost else "")
          + f"; searching {', '.join(p.space)} on the validation {metric}", file=sys.stderr, flush=True)
    if p.cfg.workers == 1:
        work(p, data=data)
    else:
        run_workers(p, study, storage)
    best = write_outputs(p, study, metric)
    if p.cfg.confirm_seeds and best is not None:
        confirm(p, best, base.train.seed, data)
    return p.dir


def run_workers(p: Plan, study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """p.cfg.workers worker processes on this host; one that is killed loses its running trial only (marked
    FAIL at once), the others take over its remaining trials. One that fails with an error ends the tune.
    Ctrl-C or a SIGTERM of this process ends the workers too (their running trials are marked FAIL by the
    next tune), rather than leaving them to train on."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that has torch's threads running
    procs = [ctx.Process(target=work, args=(p, i, p.cfg.workers), name=f"tune-worker-{i}")
             for i in range(p.cfg.workers)]
    for proc in procs:
        proc.start()
    print(f"tune: {len(procs)} workers, pids {', '.join(str(proc.pid) for proc in procs)}", file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # kill PID ends them too
    try:
        for proc in procs:
            proc.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    for proc in procs:
        if proc.exitcode and proc.exitcode < 0:
            print(f"tune: worker {proc.name} (pid {proc.pid}) was ended by signal {-proc.exitcode}",
                  file=sys.stderr, flush=True)
    fail_lost_trials(study, storage)
    failed = [proc for proc in procs if proc.exitcode and proc.exitcode > 0]
    if failed:
        raise RunStopped(f"tune worker pid {failed[0].pid} ended with an error (above); the study keeps its "
                         "finished trials: run the command again to go on", 1)


def write_outputs(p: Plan, study: optuna.Study, metric: str) -> dict | None:
    """trials.csv, history.png, importances.csv/.png and best.json (the recipe) -> the recipe, or None when
    no trial has completed."""
    trials = study.get_trials(deepcopy=False)
    keys, attrs = list(dict.fromkeys(k for t in trials for k in t.params)), ("epochs", "host", "pid", "error")
    write_csv(p.dir / "trials.csv", ("number", "state", f"val_{metric}", "seconds", *keys, *attrs),
              [(t.number, t.state.name, "" if t.value is None else t.value,
                round(t.duration.total_seconds(), 3) if t.duration else "", *(t.params.get(k, "") for k in keys),
                *(t.user_attrs.get(a, "") for a in attrs)) for t in trials])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    n = counts(study)
    if not complete:
        print(f"tune: no trial has completed ({n}); no best.json", file=sys.stderr)
        return None
    better = max if study.direction.name == "MAXIMIZE" else min
    values = [t.value for t in complete]
    line_plot({f"val {metric}": ([t.number for t in complete], values),
               "best so far": ([t.number for t in complete],
                               [better(values[:i + 1]) for i in range(len(values))])},
              p.dir / "history.png", title=f"{p.data} {p.method}: {len(complete)} completed trials of {len(trials)}",
              xlabel="trial", ylabel=f"val {metric}")
    importances = optuna.importance.get_param_importances(study) if len(complete) > 1 else {}
    if importances:
        write_csv(p.dir / "importances.csv", ("key", "importance"), importances.items())
        bar_plot(importances, p.dir / "importances.png", f"{p.data} {p.method}: importance for val {metric} "
                 f"(PED-ANOVA, {len(complete)} trials)")
    else:
        print("tune: parameter importances need two completed trials; no importances.png", file=sys.stderr)
    best = study.best_trial
    space = search_space(p.method)
    recipe = {"data": p.data, "method": p.method, "study": p.name, "metric": metric,
              "direction": study.direction.name.lower(), "trial": best.number, "val": best.value,
              "keys": {**p.recipe_keys(), **{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in typed(best.params, space).items()}},
              "trials": n, "importances": importances}
    write_text(p.dir / "best.json", json.dumps(recipe, indent=2) + "\n")
    print(f"tune: best trial {best.number}: val {metric} {best.value:.4f}  "
          + " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in recipe["keys"].items())
          + f"\ntune: {n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed; results in {p.dir}; "
          f"train with: manytask train {p.data} {p.method} {p.data_keys()}recipe={p.dir / 'best.json'}",
          file=sys.stderr)
    return recipe


def bar_plot(values: dict[str, float], path: Path, title: str) -> None:
    """{label: value} as horizontal bars, the first on top, in one PNG."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 1.2 + 0.35 * len(values)))
    ax = fig.subplots()
    ax.barh(range(len(values)), list(values.values()))
    ax.set_yticks(range(len(values)), list(values), fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def confirm(p: Plan, recipe: dict, trial_seed: int, data: MultiTaskData) -> None:
    """Train the recipe on confirm_seeds seeds other than the trials' seed (OUT/NAME/confirm/seedS); print
    and write (confirm/results.csv, table.txt) the mean validation and test primary metric per seed."""
    seeds = [trial_seed + 1 + i for i in range(p.cfg.confirm_seeds)]
    keys = {**{k: v for k, v in p.fixed.items() if k.startswith("data.") or k in ("progress", "device")},
            **recipe["keys"]}
    out, metric, rows, recs = p.dir / "confirm", recipe["metric"], [], []
    for seed in seeds:
        spec = resolve(p.data, p.method, {**keys, "seed": seed})
        print(f"tune: confirming trial {recipe['trial']}'s keys with seed {seed}", file=sys.stderr, flush=True)
        run = train_run(spec, data, out, name=f"seed{seed}", echo=False)
        rows.append((seed, run.summary["mean"]["val"][metric], run.summary["mean"]["test"][metric]))
        recs += records(p.method, seed, run.tables)
    val, test = [r[1] for r in rows], [r[2] for r in rows]
    table = text_table(("seed", f"val {metric}", f"test {metric}"), [*rows, ("mean", mean_pm(val), mean_pm(test))])
    write_results(out, recs, table, {"recipe": recipe["keys"], "seeds": seeds, "val": val, "test": test})
    print(f"best keys of {p.name} on {len(seeds)} fresh seeds (the trials used seed {trial_seed}):\n{table}")


# ---- recipes ----------------------------------------------------------------------------------------------------

def read_recipe(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """The keys of a recipe file (a tune's best.json) -> {key: value}; `method`: the method they must be for."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"recipe={path}: no such file; give the best.json that manytask tune wrote")
    try:
        recipe = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"recipe={path} is not readable JSON ({e})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("keys"), dict):
        raise ConfigError(f"recipe={path} has no \"keys\" object; give the best.json that manytask tune wrote")
    if method and recipe.get("method", method) != method:
        raise ConfigError(f"recipe={path} was tuned for {recipe['method']}, not {method}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in recipe["keys"].items()}


def with_recipe(overrides: dict[str, Any], method: str) -> dict[str, Any]:
    """`overrides` with recipe=FILE replaced by the file's keys, which the other overrides override."""
    if "recipe" not in overrides:
        return overrides
    rest = dict(overrides)
    return {**read_recipe(rest.pop("recipe"), method), **rest}
