"""Bad input, case by case: one table of cases, each a `manytask` command line run in this process
(manytask.cli.main), with the outcome it declares:

- error: exit status 2, one line on stderr starting with "manytask: error:" that says what is wrong, and
  nothing written: no run directory, no file or folder added, changed or removed;
- ok: exit status 0, a completed run whose results.json holds finite metrics;
- interrupted: a signal during training gives the exit status 128 + its number, run.json says
  interrupted, and `manytask train DATA METHOD --resume RUN` completes the run.

Every case runs in a fresh folder holding the files of FILES and, for the cases about run directories,
a copy of one small trained run. The table is also in docs/reliability.md ("Bad input, case by case");
test_docs_table_lists_every_case checks that the two agree. A real external Ctrl-C of the console script
is tests/test_lifecycle.py's test_signals_stop_the_cli_with_130_or_143_and_one_line.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

import manytask.runs as runs
from manytask import create_model, load_dataset
from manytask.cli import main
from manytask.data.cache import cache_dir
from manytask.tasks import Task

from .data.test_moleculenet import SMILES
from .test_lifecycle import SignalAt

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
BUILD = runs.build  # the method's own model and hooks

# the small settings every `train` command gets, before the case's own keys (which win)
SMALL_TRAINING = ("epochs=1", "progress=false", "batch_size=16")
SMALL_DATA = {"moleculenet": ("data.bits=64", "data.fractions=0.5,0.25,0.25"), "table": ()}
SMALL_METHOD = {"hard_sharing": ("widths=8",), "stl": ("widths=8",)}


def molecules(header: str = "smiles,A,B") -> str:
    """36 rows (SMILES's 12, three times; one is not a molecule) with two 0/1 columns."""
    return header + "\n" + "".join(f"{s},{i % 2},{(i // 2) % 2}\n" for i, s in enumerate(SMILES * 3))


def table(header: str = "f1,f2,y", rows: int = 30, change: dict[int, str] | None = None,
          target: Callable[[float, float], str] = lambda a, b: f"{a + b:.3f}") -> str:
    """A numeric CSV: `rows` rows of two features and a target (default their sum); change = {row index:
    that row's text}."""
    cells = [f"{a:.3f},{b:.3f},{target(a, b)}" for a, b in np.random.default_rng(0).normal(size=(rows, 2))]
    for i, text in (change or {}).items():
        cells[i] = text
    return header + "\n" + "\n".join(cells) + "\n"


def first_column_target() -> str:
    """table() with the target y as the first column (a byte-order mark would end up in its name)."""
    lines = table().splitlines()
    return "\n".join(",".join([ln.split(",")[2], *ln.split(",")[:2]]) for ln in lines) + "\n"


# the files every case finds in its folder: name -> bytes
FILES: dict[str, bytes] = {
    "mols.csv": molecules().encode(),
    "toxcast.csv": molecules("smiles,NVS_GPCR_hDRD4.4,B").encode(),
    "no_smiles.csv": molecules("name,A,B").encode(),
    "table.csv": table().encode(),
    "dotted.csv": table("f1,f2,NVS_GPCR_hDRD4.4").encode(),
    "bom.csv": b"\xef\xbb\xbf" + first_column_target().encode(),
    "plain.csv.gz": table().encode(),  # named .gz, holds plain text
    "inf.csv": table(change={2: "inf,0.1,0.2"}).encode(),
    "huge.csv": table(change={2: "1e300,0.1,0.2"}).encode(),
    "no_target.csv": table(target=lambda a, b: "").encode(),
    "three.csv": table(rows=3).encode(),
    "truncated.csv.gz": gzip.compress(table().encode())[:60],
    "ragged.csv": table(change={4: "0.5,0.1"}).encode(),
    "latin1.csv": table("f1,f2,höhe").encode("latin-1"),
    "empty.csv": b"",
    "index.csv": table(",f1,y").encode(),  # a pandas index column without a name
    "twice.csv": table("f1,f1,y").encode(),
    "nonbinary.csv": table(change={0: "0.1,0.2,2"}, target=lambda a, b: str(int(a + b > 0))).encode(),
    "afile": b"not a folder\n",
    "notes/readme.txt": b"a folder that is no run\n",
}


@dataclass
class Context:
    """What a case's setup may use: its folder, the trained run to copy, pytest's monkeypatch."""

    tmp: Path
    trained: Path
    monkeypatch: pytest.MonkeyPatch
    factory: pytest.TempPathFactory

    def run_copy(self) -> Path:
        """tmp/run: a copy of the trained run."""
        return Path(shutil.copytree(self.trained, self.tmp / "run"))


@dataclass(frozen=True)
class Case:
    kind: str  # settings, csv, weights, cache, signals
    args: tuple[str, ...]  # the command line after `manytask`; `train` commands also get the SMALL_* keys
    expect: str  # "error", "ok" or "interrupted"
    says: str  # error: part of the message; ok: a warning logged or a task of results.json; interrupted: the signal
    note: str = ""  # what the case sets up beyond the command line, in words (the docs table shows it)
    setup: Callable[[Context], None] | None = None
    exit: int | None = None  # the exit status of an interrupted run

    @property
    def command(self) -> str:
        return "manytask " + " ".join(self.args)

    @property
    def id(self) -> str:
        return f"{self.kind}: {' '.join(self.args)}" + (f" ({self.note})" if self.note else "")


def no_cuda(ctx: Context) -> None:
    ctx.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ctx.monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def trained_run(ctx: Context) -> None:
    ctx.run_copy()


def without_weights(ctx: Context) -> None:
    (ctx.run_copy() / "model.safetensors").unlink()


def garbage_weights(ctx: Context) -> None:
    (ctx.run_copy() / "model.safetensors").write_bytes(b"these bytes are no safetensors file" * 10)


def truncated_weights(ctx: Context) -> None:
    weights = ctx.run_copy() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])


def other_models_weights(ctx: Context) -> None:
    """model.safetensors replaced by the weights of an stl model for the same tasks."""
    run = ctx.run_copy()
    card = json.loads((run / "config.json").read_text())["model"]
    tasks = [Task(**t) for t in card["tasks"]]
    model, _ = create_model("stl", tasks, {k: tuple(v) for k, v in card["input_shapes"].items()}, widths=(8,))
    save_model(model, str(run / "model.safetensors"))


def edit_config(change: Callable[[dict], None]) -> Callable[[Context], None]:
    def setup(ctx: Context) -> None:
        path = ctx.run_copy() / "config.json"
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))
    return setup


def overwrite(name: str, text: str) -> Callable[[Context], None]:
    def setup(ctx: Context) -> None:
        (ctx.run_copy() / name).write_text(text)
    return setup


def damaged_cache_entry(ctx: Context) -> None:
    """A cache of its own, holding the fingerprints of mols.csv, then overwritten with other bytes."""
    ctx.monkeypatch.setenv("MANYTASK_CACHE", str(ctx.factory.mktemp("cache")))
    load_dataset("moleculenet", path=str(ctx.tmp / "mols.csv"), bits=64, fractions=(0.5, 0.25, 0.25))
    (entry,) = cache_dir().glob("morgan-*.npz")
    entry.write_bytes(b"PK\x03\x04 not a whole zip file")


def cache_in_a_file(ctx: Context) -> None:
    ctx.monkeypatch.setenv("MANYTASK_CACHE", str(ctx.tmp / "afile" / "cache"))


def signal_in_epoch_2(signum: int) -> Callable[[Context], None]:
    """The run trains with hooks that send this process `signum` after the first step of epoch 2."""
    def setup(ctx: Context) -> None:
        ctx.monkeypatch.setattr(runs, "build", lambda spec, data: (BUILD(spec, data)[0], SignalAt(2, signum)))
    return setup


MOLS = ("train", "moleculenet", "hard_sharing", "data.path=mols.csv")
TABLE = ("train", "table", "hard_sharing")

CASES = [
    # settings: every value is parsed and range-checked before anything is written
    Case("settings", (*MOLS, "epochs=0"), "error", "epochs=0: must be >= 1"),
    Case("settings", (*MOLS, "epochs=-1"), "error", "epochs=-1: must be >= 1"),
    Case("settings", (*MOLS, "epochs=1.5"), "error", "epochs=1.5: expected an integer"),
    Case("settings", (*MOLS, "batch_size=-3"), "error", "batch_size=-3: must be >= 1"),
    Case("settings", (*MOLS, "batch_size=0"), "error", "batch_size=0: must be >= 1"),
    Case("settings", (*MOLS, "lr=0"), "error", "lr=0.0: must be > 0"),
    Case("settings", (*MOLS, "lr=-1"), "error", "lr=-1.0: must be > 0"),
    Case("settings", (*MOLS, "lr=nan"), "error", "lr=nan: must be > 0"),
    Case("settings", (*MOLS, "lr=inf"), "error", "lr=inf: must be a finite number"),
    Case("settings", (*MOLS, "momentum=1"), "error", "momentum=1.0: must be in [0, 1)"),
    Case("settings", (*MOLS, "optimizer=lbfgs"), "error", "optimizer=lbfgs: choose one of adam, adamw, sgd"),
    Case("settings", (*MOLS, "seed=-1"), "error", "seed=-1: must be >= 0"),
    Case("settings", (*MOLS, "dropout=1"), "error", "dropout=1.0: must be in [0, 1)"),
    Case("settings", (*MOLS, "dropout=1.5"), "error", "dropout=1.5: must be in [0, 1)"),
    Case("settings", (*MOLS, "widths=0"), "error", "widths=0: must be >= 1"),
    Case("settings", (*MOLS, "widths="), "error", "widths=: need >= 1, at least 1 value"),
    Case("settings", (*MOLS, "widths=8,x"), "error", "widths=x: expected an integer"),
    Case("settings", (*MOLS, "activation=swish"), "error", "activation=swish: choose one of relu"),
    Case("settings", (*MOLS, "device=tpu"), "error", "device=tpu: expected auto, cpu, cuda or cuda:N"),
    Case("settings", (*MOLS, "device=cuda"), "error", "device=cuda: this machine has 0 CUDA device(s)",
         "a machine without CUDA", no_cuda),
    Case("settings", (*MOLS, "data.fractions=0.5,0.5"), "error",
         "data.fractions=0.5,0.5: need in [0, 1], at least 3 values"),
    Case("settings", (*MOLS, "data.fractions=0.6,0.3,0.3"), "error", "data.fractions=0.6,0.3,0.3: need three "
         "fractions (train, val, test), each >= 0, summing to 1"),
    Case("settings", (*MOLS, "data.fractions=0.5,0.6,-0.1"), "error", "data.fractions=0.5,0.6,-0.1: must be in [0, 1]"),
    Case("settings", (*MOLS, "data.fractions=0.9,0.1,0"), "error", "mols: the test split is empty; every split needs "
         "examples"),
    Case("settings", (*MOLS, "data.bits=0"), "error", "data.bits=0: must be >= 1"),
    Case("settings", (*MOLS, "data.split=cluster"), "error", "data.split=cluster: choose one of random, scaffold"),
    Case("settings", (*MOLS, "data.bogus=1"), "error", "unknown moleculenet data key 'data.bogus'"),
    Case("settings", (*MOLS, "bogus=1"), "error", "unknown key 'bogus' for moleculenet/hard_sharing"),
    Case("settings", (*MOLS, "encoder=dmpnn"), "error",
         "unknown key 'encoder' for moleculenet/hard_sharing; did you mean data.encoder=?"),
    Case("settings", (*MOLS, "epochs"), "error", "expected key=value, got 'epochs'"),
    Case("settings", (*MOLS, "--out", "afile"), "error", "--out afile: cannot make a folder there"),
    Case("settings", ("train", "moleculenet", "nope", "data.path=mols.csv"), "error", "unknown method 'nope'"),
    Case("settings", ("train", "tox22", "stl"), "error", "unknown data set 'tox22'"),
    Case("settings", ("list", "nope"), "error", "'nope' is no method, data set or experiment"),
    Case("settings", ("run", "nope"), "error", "unknown experiment 'nope'"),
    Case("settings", ("run", "muir-synthetic", "generations=abc"), "error", "generations=abc: expected an integer"),
    Case("settings", ("run", "soft-order-digits", "seeds=a"), "error", "seeds=a: expected an integer"),
    Case("settings", ("run", "soft-order-digits", "seeds="), "error", "seeds=: need >= 0, at least 1 value"),
    Case("settings", ("run", "demo", "epochs=0"), "error", "epochs=0: must be >= 1"),
    Case("settings", ("run", "demo", "--out", "afile"), "error", "--out afile: cannot make a folder there"),
    # CSV files: written into the case's folder (FILES)
    Case("csv", (*TABLE, "data.path=inf.csv", "data.target=y"), "error",
         "inf.csv, line 4, column 'f1': 'inf' is beyond the float32 range"),
    Case("csv", (*TABLE, "data.path=huge.csv", "data.target=y"), "error",
         "huge.csv, line 4, column 'f1': '1e300' is beyond the float32 range"),
    Case("csv", (*TABLE, "data.path=no_target.csv", "data.target=y"), "error",
         "no_target.csv: target column 'y' has no values (every row blank)"),
    Case("csv", (*TABLE, "data.path=three.csv", "data.target=y"), "error",
         "three.csv: 3 rows leave the val split empty"),
    Case("csv", (*TABLE, "data.path=truncated.csv.gz", "data.target=y"), "error",
         "truncated.csv.gz: damaged or truncated gzip file"),
    Case("csv", (*TABLE, "data.path=ragged.csv", "data.target=y"), "error",
         "ragged.csv, line 6: 2 fields where the header has 3"),
    Case("csv", (*TABLE, "data.path=latin1.csv", "data.target=y"), "error",
         "latin1.csv, line 1: not UTF-8 text (byte 0xf6); save the file as CSV UTF-8"),
    Case("csv", (*TABLE, "data.path=empty.csv", "data.target=y"), "error", "empty.csv is empty"),
    Case("csv", (*TABLE, "data.path=index.csv", "data.target=y"), "error",
         "index.csv, line 1: column 1 of the header has no name"),
    Case("csv", (*TABLE, "data.path=twice.csv", "data.target=y"), "error",
         "twice.csv, line 1: column name 'f1' appears twice"),
    Case("csv", (*TABLE, "data.path=nonbinary.csv", "data.target=y", "data.kind=binary"), "error",
         "nonbinary.csv: target column 'y' is binary but holds"),
    Case("csv", (*TABLE, "data.path=table.csv"), "error", "name the target column(s) with data.target=COL"),
    Case("csv", (*TABLE, "data.path=missing.csv", "data.target=y"), "error", "missing.csv does not exist"),
    Case("csv", ("train", "moleculenet", "hard_sharing", "data.path=no_smiles.csv"), "error",
         "no_smiles.csv has no SMILES column 'smiles'"),
    Case("csv", (*TABLE, "data.path=bom.csv", "data.target=y"), "ok", "y", "a UTF-8 byte-order mark before `y`"),
    Case("csv", (*TABLE, "data.path=plain.csv.gz", "data.target=y"), "ok", "y", "plain text under a .gz name"),
    Case("csv", (*TABLE, "data.path=dotted.csv", "data.target=NVS_GPCR_hDRD4.4"), "ok", "NVS_GPCR_hDRD4.4"),
    Case("csv", ("train", "moleculenet", "hard_sharing", "data.path=toxcast.csv"), "ok", "NVS_GPCR_hDRD4.4"),
    Case("csv", ("train", "moleculenet", "stl", "data.path=toxcast.csv"), "ok", "NVS_GPCR_hDRD4.4"),
    # run directories: a copy of a small trained run, damaged or edited
    Case("weights", ("predict", "run", "CCO"), "error", "run is not a finished run directory: model.safetensors is "
         "missing", "model.safetensors deleted", without_weights),
    Case("weights", ("evaluate", "run"), "error", "model.safetensors is missing", "model.safetensors deleted",
         without_weights),
    Case("weights", ("predict", "run", "CCO"), "error", "run/model.safetensors is damaged or not a safetensors file",
         "model.safetensors overwritten with other bytes", garbage_weights),
    Case("weights", ("evaluate", "run"), "error", "run/model.safetensors is damaged or not a safetensors file",
         "model.safetensors cut to 300 bytes", truncated_weights),
    Case("weights", ("predict", "run", "CCO"), "error", "run/model.safetensors does not match the hard_sharing model "
         "of config.json", "model.safetensors replaced by an stl model's", other_models_weights),
    Case("weights", ("predict", "run", "CCO"), "error", "does not match the hard_sharing model of config.json (size "
         "mismatch for", "config.json edited: widths 8 -> 16",
         edit_config(lambda c: c["method_cfg"].update(widths=[16]))),
    Case("weights", ("predict", "run", "CCO"), "error", "saved config has keys ['bogus'] that HardSharingConfig does "
         "not know", "config.json edited: an unknown method key",
         edit_config(lambda c: c["method_cfg"].update(bogus=1))),
    Case("weights", ("predict", "run", "CCO"), "error", "run/config.json is not readable JSON",
         "config.json cut short", overwrite("config.json", '{"data": "moleculenet",')),
    Case("weights", ("predict", "run", "CCO"), "error", "run/run.json is not readable JSON", "run.json cut short",
         overwrite("run.json", '{"status": ')),
    Case("weights", ("predict", "notes", "CCO"), "error", "notes is not a run directory: config.json is missing"),
    Case("weights", ("predict", "run", "--file", "missing.smi"), "error", "missing.smi: no such file",
         setup=trained_run),
    Case("weights", ("predict", "run", "CCO", "--out", "nowhere/p.csv"), "error",
         "--out nowhere/p.csv: the folder nowhere does not exist", setup=trained_run),
    Case("weights", ("predict", "run", "CCO", "--out", "notes"), "error", "--out notes: is a folder",
         setup=trained_run),
    Case("weights", ("predict", "run"), "error", "nothing to predict", setup=trained_run),
    Case("weights", ("predict", "run", "mols.csv"), "error", "'mols.csv' is a file, not a SMILES: pass it with --file "
         "mols.csv", setup=trained_run),
    Case("weights", ("evaluate", "run", "epochs=3"), "error", "evaluate takes only data.path=FILE", setup=trained_run),
    Case("weights", ("train", "moleculenet", "hard_sharing", "--resume", "run"), "error",
         "run: the run is completed; there is nothing to resume", setup=trained_run),
    # the feature cache
    Case("cache", MOLS, "ok", "is damaged", "the cached fingerprints of mols.csv overwritten", damaged_cache_entry),
    Case("cache", MOLS, "error", "cannot create the cache directory", "MANYTASK_CACHE=afile/cache", cache_in_a_file),
    # signals: the process gets the signal itself, from the training hooks, as from Ctrl-C or kill
    Case("signals", (*MOLS, "epochs=3"), "interrupted", "SIGINT", "SIGINT in epoch 2", signal_in_epoch_2(signal.SIGINT),
         exit=130),
    Case("signals", (*MOLS, "epochs=3"), "interrupted", "SIGTERM", "SIGTERM in epoch 2",
         signal_in_epoch_2(signal.SIGTERM), exit=143),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A completed hard_sharing run on mols.csv with the small settings, made once for the module."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "mols.csv").write_bytes(FILES["mols.csv"])
    keys = dict(k.split("=", 1) for k in (*SMALL_TRAINING, *SMALL_DATA["moleculenet"], *SMALL_METHOD["hard_sharing"]))
    with pytest.MonkeyPatch.context() as mp:  # the test run's cache, as conftest's fixture sets it for each test
        mp.setenv("MANYTASK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        spec = runs.resolve("moleculenet", "hard_sharing", {"data.path": str(folder / "mols.csv"), **keys})
        return runs.train_run(spec, out=folder, name="run", echo=False).dir


def full_args(case: Case) -> list[str]:
    """The case's command line with the small settings after `train DATA METHOD` (the case's keys win)."""
    args = list(case.args)
    if args[0] != "train" or "--resume" in args:
        return args
    data, method = args[1], args[2]
    return [*args[:3], *SMALL_TRAINING, *SMALL_DATA.get(data, ()), *SMALL_METHOD.get(method, ()), *args[3:]]


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under folder -> "dir" or the sha256 of the file."""
    return {p.relative_to(folder).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*")}


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """manytask.cli.main(args) -> (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(args)
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def finite_results(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    values = [v for table in results["splits"].values() for metrics in table.values() for v in metrics.values()]
    assert values and all(math.isfinite(v) for v in values), results["splits"]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    return results


def new_runs(tmp: Path) -> list[Path]:
    return [p for p in (tmp / "runs").iterdir()] if (tmp / "runs").exists() else []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, trained, monkeypatch, capsys, caplog, tmp_path_factory):
    for name, content in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    if case.setup:
        case.setup(Context(tmp_path, trained, monkeypatch, tmp_path_factory))
    before = snapshot(tmp_path)
    caplog.set_level("WARNING", logger="manytask")
    status, out, err = cli(full_args(case), capsys)

    if case.expect == "error":
        assert (status, err.count("\n")) == (2, 1) and err.startswith("manytask: error: "), err
        assert case.says in err, err
        assert snapshot(tmp_path) == before  # nothing written, nothing changed
    elif case.expect == "ok":
        assert status == 0, err
        (run,) = new_runs(tmp_path)
        results = finite_results(run)
        assert case.says in caplog.text or case.says in [t["name"] for t in results["tasks"]], caplog.text
        if case.kind == "cache":  # rebuilt: the same run as on a sound cache
            assert results["splits"] == json.loads((trained / "results.json").read_text())["splits"]
            assert len(list(cache_dir().glob("morgan-*.npz"))) == 1
    else:
        (run,) = new_runs(tmp_path)
        assert status == case.exit
        assert err.startswith(f"manytask: interrupted by {case.says} after epoch 1;") and err.count("\n") == 1, err
        resume = f"manytask train moleculenet hard_sharing --resume {run.relative_to(tmp_path)}"
        assert err.rstrip().endswith(f"resume with: {resume}"), err
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "interrupted" and info["interrupted"] == {"epoch": 1, "signal": case.says}
        monkeypatch.setattr(runs, "build", BUILD)  # train with the method's own hooks again
        status, out, err = cli(resume.split()[1:], capsys)  # the command it printed
        assert status == 0 and "after epoch 1 of 3" in err, err
        finite_results(run)
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def docs_rows() -> list[list[str]]:
    """The rows of docs/reliability.md's table under "Bad input, case by case": [class, input, what happens]."""
    text = DOCS.read_text()
    section = text[text.index("## Bad input, case by case"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[1:]]


def documented_outcome(case: Case) -> str:
    outcomes = {"error": "error, exit 2", "ok": "works, exit 0", "interrupted": f"interrupted, exit {case.exit}"}
    return outcomes[case.expect]


def test_docs_table_lists_every_case():
    """docs/reliability.md shows each case once: its class, command (and setup), outcome and the words of
    the message; no row is left that is not a case."""
    rows = docs_rows()
    shown = [(kind, inputs) for kind, inputs, _ in rows]
    expected = [(c.kind, f"`{c.command}`" + (f", {c.note}" if c.note else "")) for c in CASES]
    assert shown == expected
    for case, (_, _, outcome) in zip(CASES, rows):
        assert outcome.startswith(documented_outcome(case)), (case.id, outcome)
        assert case.says.replace("|", "\\|") in outcome, (case.id, outcome)
    assert len(CASES) >= 40
