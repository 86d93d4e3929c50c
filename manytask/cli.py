"""`manytask` console script: list, train (and --resume), run, compare, tune, runs, cache, evaluate, predict.

main() tunes the CPU allocator (manytask.allocator) before anything imports torch; this module and the two
it imports at the top (config, registry) do not import torch, the commands import what they need."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Iterator

from . import __version__
from .allocator import tune_allocator
from .config import ConfigError, as_text, describe, split_overrides
from .files import replacing
from .registry import DATASETS, EXPERIMENTS, METHODS, find, get_experiment, load_all

KEYS_HELP = ("keys: `manytask list METHOD` and `manytask list DATA` print every key with its type, default "
             "and help; `manytask list train` the training keys. Data keys are written data.KEY=value.")


def cmd_list(args) -> None:
    """Without a name: every method, data set and experiment. With one: its keys."""
    from .report import text_table
    if args.name is None:
        load_all()
        for title, table in (("methods", METHODS), ("data sets", DATASETS), ("experiments", EXPERIMENTS)):
            print(f"{title}:")
            width = max(map(len, table)) if table else 0
            for name in sorted(table):
                print(f"  {name.ljust(width)}  {table[name].description}")
        print("\n`manytask list NAME` prints the keys of one of them; `manytask list train` the training keys.")
        return
    header = ("key", "type", "default", "help")
    if args.name == "train":
        from .train import TrainConfig
        print("training keys (every method; manytask train DATA METHOD key=value):")
        print(text_table(header, describe(TrainConfig), left=4))
        return
    kind, entry = find(args.name)
    print(f"{kind} {entry.name}: {entry.description}")
    if kind == "data set":
        print(text_table(header, describe(entry.config, "data."), left=4))
    elif kind == "method":
        print(text_table(header, describe(entry.config), left=4))
        from .runs import method_training
        own, train = getattr(entry.config, "train_defaults", {}), method_training(entry.name)
        print("plus the training keys: manytask list train" + (
            "; this method's own defaults of them: " + " ".join(f"{k}={getattr(train, k)}" for k in own) if own else ""))
        graph = getattr(entry.config, "graph_defaults", {})
        if graph:
            print("on graphs (data.encoder=dmpnn) keys not given default to: "
                  + " ".join(f"{k}={as_text(v)}" for k, v in graph.items()))
    else:
        print(text_table(header, describe(entry.config), left=4))
        tables = entry.config.key_tables()
        for prefix, table in tables:
            print(f"\n{type(table).__name__} keys, with this experiment's defaults:")
            print(text_table(header, describe(table, prefix), left=4))
        if entry.config.takes_overrides and not tables:
            print("plus keys for the contenders: training keys (manytask list train), data.KEY, a method's keys, "
                  "and LABEL.KEY for one contender")


def launch_processes(argv: list[str], nproc: str) -> None:
    """`manytask train ... nproc=K`: the same command in K processes on this machine, started by torchrun
    (torch.distributed.run), which replaces this process."""
    try:
        k = int(nproc)
    except ValueError:
        k = 0
    if k < 1:
        raise ConfigError(f"nproc={nproc}: give the number of training processes, an integer >= 1")
    rest = [a for a in argv if not a.startswith("nproc=")]
    if k == 1:
        return main(rest)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}",
               "-m", "manytask", *rest]
    print(f"manytask: {k} processes: torchrun {' '.join(command[3:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, command)


def cmd_train(args) -> None:
    from .runs import check_run, one_process, read_spec, resolve, resume_run, train_run
    overrides = split_overrides(args.overrides)
    if "recipe" in overrides:  # recipe=best.json of manytask tune: its keys, then the command line's
        from .tune import with_recipe
        overrides = with_recipe(overrides, args.method)
    if "nproc" in overrides:  # checked here first, once: keys, data (featurised into the cache), model
        nproc, resume = overrides.pop("nproc"), overrides.get("resume") or args.resume
        spec = read_spec(Path(resume)) if resume else resolve(args.data, args.method, overrides)
        if nproc != "1":
            one_process(spec, f"nproc={nproc}")
        if not resume:
            check_run(spec)
        return launch_processes(args.argv, nproc)
    resume = overrides.pop("resume", None) or args.resume  # --resume RUN_DIR, or resume=RUN_DIR like the keys
    if resume:
        resume_run(resume, args.data, args.method, overrides)
    else:
        train_run(resolve(args.data, args.method, overrides), out=args.out)


@contextmanager
def experiment_dir(root: str, stem: str) -> Iterator[Path]:
    """A new directory root/STEM-TIME for an experiment; removed again (with root, if made here) when a
    ConfigError leaves it empty: the contenders' keys failed before anything was written."""
    from .runs import new_run_dir
    made_root = not Path(root).exists()
    out = new_run_dir(root, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        yield out
    except ConfigError:
        if not any(out.iterdir()):
            out.rmdir()
            if made_root and not any(out.parent.iterdir()):
                out.parent.rmdir()
        raise


def cmd_run(args) -> None:
    from .experiments.runner import parse_experiment
    from .runs import RunStopped
    entry = get_experiment(args.experiment)
    cfg = parse_experiment(entry.config, args.overrides, entry.name)  # the experiment's own keys: before anything is written
    try:
        with experiment_dir(args.out, args.experiment) as out:
            entry.fn(cfg, out)
    except RunStopped as e:  # one contender's run stopped; that run can be resumed, the experiment runs again
        raise RunStopped(f"{e} (that completes this contender's run only; for the experiment's results run "
                         f"manytask run {args.experiment} again)", e.exit_status) from None


def cmd_compare(args) -> None:
    from .experiments.compare import CompareConfig, compare_methods
    from .experiments.runner import parse_experiment
    methods = [m for m in args.methods.split(",") if m]
    cfg = parse_experiment(CompareConfig, args.overrides, "compare")  # seeds, baseline: before anything is written
    with experiment_dir(args.out, f"compare-{args.data}") as out:
        compare_methods(args.data, methods, cfg, out)


def cmd_tune(args) -> None:
    from .tune import tune
    tune(args.data, args.method, args.overrides, args.out)


def cmd_runs(args) -> None:
    from .report import text_table
    from .runs import list_runs
    rows = list_runs(args.folder)
    if not rows:
        print(f"no runs under {args.folder}")
        return
    here = Path.cwd()
    shown = [(r["started"], r["status"], r["epochs"], r["data"], r["method"], r["test"],
              os.path.relpath(r["path"], here) if Path(r["path"]).resolve().is_relative_to(here) else r["path"])
             for r in rows]
    print(text_table(("started", "status", "epochs", "data", "method", "test", "run"), shown, left=7))


def evaluate_keys(args) -> tuple[str | None, str | None]:
    """evaluate's keys -> (data.path=NEW: the run's data file has moved, metric=NAME: the primary metric to show)."""
    overrides = split_overrides(args.overrides)
    unknown = set(overrides) - {"data.path", "metric"}
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r}: evaluate takes only data.path=FILE (where the run's "
                          "data file is now) and metric=NAME (the metric to show)")
    if "metric" in overrides:
        from .config import apply
        from .train import TrainConfig
        apply(TrainConfig(), {"metric": overrides["metric"]}, "training")  # a ConfigError naming the choices
    return overrides.get("data.path"), overrides.get("metric")


def cmd_cache(args) -> None:
    """Where the feature cache and downloads live, what they hold; --clear deletes them."""
    from .data.cache import cache_dir, cache_info, clear_cache
    if args.clear:
        removed = clear_cache(downloads=not args.keep_downloads)
        print(f"deleted {len(removed)} files ({sum(e.size for e in removed) / 1e6:.1f} MB) under {cache_dir()}")
        return
    entries = cache_info()
    print(f"cache directory: {cache_dir()} (set MANYTASK_CACHE to move it)")
    for kind in ("features", "download", "partial"):
        of_kind = [e for e in entries if e.kind == kind]
        print(f"  {kind}: {len(of_kind)} files, {sum(e.size for e in of_kind) / 1e6:.1f} MB")


def cmd_evaluate(args) -> None:
    from .runs import evaluate_run
    data_path, metric = evaluate_keys(args)
    _, same = evaluate_run(args.run, data_path=data_path, metric=metric)
    if same is False:
        sys.exit(1)


def cmd_predict(args) -> None:
    from .runs import Predictor, file_inputs, predict_csv
    if not args.smiles and not args.file:
        raise ConfigError("nothing to predict: give SMILES as arguments, or --file with a CSV or one SMILES per line")
    if args.chunk < 1:
        raise ConfigError(f"--chunk {args.chunk}: must be >= 1")
    if args.out and (Path(args.out).is_dir() or not Path(args.out).parent.is_dir()):
        raise ConfigError(f"--out {args.out}: " + ("is a folder; give the name of the CSV to write" if Path(args.out).is_dir()
                                                   else f"the folder {Path(args.out).parent} does not exist"))
    for text in args.smiles:
        if os.path.isfile(text):
            raise ConfigError(f"{text!r} is a file, not a SMILES: pass it with --file {text}")
    predictor = Predictor(args.run)
    column = args.column or predictor.input_column
    inputs = chain(args.smiles, file_inputs(args.file, column) if args.file else ())
    t0 = time.perf_counter()
    if args.out:
        with replacing(Path(args.out), ".part") as part, open(part, "w", newline="") as f:  # --out is always complete
            n, invalid = predict_csv(predictor, inputs, f, column, args.chunk)
    else:
        n, invalid = predict_csv(predictor, inputs, sys.stdout, column, args.chunk)
    print(f"manytask: predicted {n - invalid} of {n} inputs ({invalid} unreadable) in {time.perf_counter() - t0:.1f} s"
          + (f" -> {args.out}" if args.out else ""), file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="manytask", description="Deep multi-task learning: train, compare, predict.")
    p.add_argument("--version", action="version", version=f"manytask {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="methods, data sets and experiments; with a NAME, its keys")
    ls.add_argument("name", nargs="?", help="a method, data set or experiment, or `train` for the training keys")
    ls.set_defaults(fn=cmd_list)
    t = sub.add_parser("train", help="train one method on one data set: manytask train tox21 hard_sharing seed=0",
                       epilog=KEYS_HELP)
    t.add_argument("data")
    t.add_argument("method")
    t.add_argument("overrides", nargs="*", help="key=value: training keys, method keys, data.KEY; nproc=K trains "
                   "in K processes on this machine (torchrun; see docs/distributed.md)")
    t.add_argument("--out", default="runs", help="parent of the new run directory (default: runs)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in its directory, from its last "
                   "finished epoch (DATA and METHOD as the run's; only data.path, data.dir, device, progress may change)")
    t.set_defaults(fn=cmd_train)
    r = sub.add_parser("run", help="run a registered experiment: manytask run demo",
                       epilog="keys: `manytask list EXPERIMENT` prints the experiment's own keys")
    r.add_argument("experiment")
    r.add_argument("overrides", nargs="*", help="key=value, e.g. seeds=0,1,2 epochs=50")
    r.add_argument("--out", default="runs")
    r.set_defaults(fn=cmd_run)
    cmp = sub.add_parser(
        "compare", help="several methods side by side on one data set, tested against a baseline: "
        "manytask compare tox21 hard_sharing,stl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Train each METHOD once per seed on DATA (the same split), print the per-task test metric "
        "(mean ± std over seeds) side by side, and test every method against the baseline: mean difference of "
        "the mean test metric, the seeds it is better in, paired t-test and Wilcoxon p, and delta-m (mean "
        "relative improvement over the tasks, %). Writes results.csv, table.txt, summary.json, compare.png and "
        "each run into a new folder under --out.", 100),
        epilog="keys:\n"
        "  seeds=0,1,2        the seeds every method trains with (default 0,1,2)\n"
        "  baseline=METHOD    the method the others are tested against (default: the first)\n"
        "  KEY=VALUE          a training key or data.KEY: every method; a method key: every method that has it\n"
        "  METHOD.KEY=VALUE   one method only, e.g. stl.widths=16\n"
        "  recipe=FILE        the keys of a best.json from manytask tune (METHOD.recipe=FILE: one method's);\n"
        "                     the keys given here override them\n"
        "`manytask list train`, `manytask list METHOD` and `manytask list DATA` print the keys;\n"
        "every key is checked before anything trains.")
    cmp.add_argument("data")
    cmp.add_argument("methods", metavar="METHOD[,METHOD...]", help="registered methods, comma-separated")
    cmp.add_argument("overrides", nargs="*", help="key=value, e.g. seeds=0,1 epochs=50 stl.widths=64")
    cmp.add_argument("--out", default="runs", help="parent of the new experiment folder (default: runs)")
    cmp.set_defaults(fn=cmd_compare)
    tn = sub.add_parser(
        "tune", help="search a method's keys with Optuna on the validation split: manytask tune tox21 icnn trials=50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Train METHOD on DATA with keys drawn by Optuna's TPE sampler, one trial at a time, "
        "stopping trials whose validation metric falls behind; the objective is the mean validation primary metric "
        "(the test split is not used). Writes best.json (train with it: recipe=best.json), trials.csv, history.png "
        "and importances.png into --out/NAME; the same command again resumes the study.", 100),
        epilog="keys (see docs/tuning.md):\n"
        "  trials=N           trials in all (default 20); a resumed study runs only the rest\n"
        "  workers=K          local processes sharing the study (default 1)\n"
        "  confirm_seeds=K    then train the best keys on K fresh seeds and show test metrics\n"
        "  storage=URL        an Optuna RDB URL (default sqlite in --out/NAME), e.g. postgresql://... for several machines\n"
        "  study=NAME         the study and its folder (default tune-DATA-METHOD)\n"
        "  space=KEY,KEY      the keys to search (default: every key with a search range, not set here)\n"
        "  prune=false        train every trial to the end; sampler_seed=S seeds TPE\n"
        "  KEY=VALUE          any training, method or data.KEY key: fixed for every trial")
    tn.add_argument("data")
    tn.add_argument("method")
    tn.add_argument("overrides", nargs="*", help="key=value, e.g. trials=50 epochs=30 data.split=scaffold")
    tn.add_argument("--out", default="runs", help="parent of the tune's folder (default: runs)")
    tn.set_defaults(fn=cmd_tune)
    ls_runs = sub.add_parser("runs", help="the runs under a folder, newest first: status, data, method, test metric")
    ls_runs.add_argument("folder", nargs="?", default="runs", help="default: runs")
    ls_runs.set_defaults(fn=cmd_runs)
    c = sub.add_parser("cache", help="the feature cache and downloads: where, how much; --clear deletes them")
    c.add_argument("--clear", action="store_true", help="delete cached features, partial files and downloads")
    c.add_argument("--keep-downloads", action="store_true", help="with --clear: keep downloaded data files")
    c.set_defaults(fn=cmd_cache)
    e = sub.add_parser("evaluate", help="recompute a run's tables from its saved weights")
    e.add_argument("run")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data.path=FILE: where the run's data file is "
                   "now, if it moved; metric=NAME: the metric to show (default: the run's)")
    e.set_defaults(fn=cmd_evaluate)
    q = sub.add_parser("predict", help="per-task predictions for new SMILES from a run, as CSV")
    q.add_argument("run")
    q.add_argument("smiles", nargs="*")
    q.add_argument("--file", help="a CSV with a SMILES column, or a file with one SMILES per line (.gz read too; - = stdin)")
    q.add_argument("--column", help="the CSV column of the inputs (default: the run's data.smiles_col)")
    q.add_argument("--out", help="the CSV to write (default: standard output)")
    q.add_argument("--chunk", type=int, default=4096, help="inputs featurised and predicted at a time (default 4096)")
    q.set_defaults(fn=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> None:
    tune_allocator()  # first: PyTorch reads THP_MEM_ALLOC_ENABLE at its first CPU allocation
    logging.basicConfig(level=logging.INFO, format="manytask: %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"`manytask {args.command}` runs in one process; under torchrun use `manytask train` "
                              "(compare, tune and experiments train their runs one after another)")
        args.fn(args)
    except ConfigError as e:
        print(f"manytask: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        runs = sys.modules.get("manytask.runs")  # RunStopped lives there; not imported: not raised (no torch import here)
        if runs is None or not isinstance(e, runs.RunStopped):
            raise
        print(f"manytask: {e}", file=sys.stderr)  # interrupted (130 SIGINT, 143 SIGTERM) or failed (1)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        print("manytask: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if "manytask.distributed" in sys.modules:  # leave torchrun's process group cleanly
            sys.modules["manytask.distributed"].stop()


if __name__ == "__main__":
    main()
