"""Every key of every registered experiment: a value of the wrong type or out of its range is one line on
stderr, exit status 2, and no run directory. Keys for the contenders are checked before anything trains."""
from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from manytask import cli
from manytask.config import field_types, spec_of
from manytask.registry import EXPERIMENTS, load_all

load_all()


def bad_values(tp, spec) -> list[str]:
    """Values the field must reject: wrong type, out of range, not a choice."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    inner = args[0] if origin in (tuple, list) and args else tp
    out = []
    if inner in (int, float):
        out.append("abc")
        if spec.low is not None:
            out.append(str(spec.low - 1))
        if spec.high is not None:
            out.append(str(spec.high + 1))
    elif inner is bool:
        out.append("maybe")
    if spec.choices is not None or typing.get_origin(inner) is typing.Literal:
        out.append("no-such-choice")
    return out


CASES = [(name, f.name, bad) for name, entry in sorted(EXPERIMENTS.items())
         for f in dataclasses.fields(entry.config) if not f.metadata.get("hidden")
         for bad in bad_values(field_types(entry.config)[f.name], spec_of(f))]


def run_cli(args, tmp_path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--out", str(tmp_path / "runs")])
    return e.value.code, capsys.readouterr().err


def test_every_experiment_declares_its_keys():
    assert set(EXPERIMENTS) >= {"demo", "icnn-tox21", "rsn2-ensemble", "soft-order-digits", "muir-synthetic",
                                "evolving-digits", "schedules"}
    assert all(dataclasses.is_dataclass(e.config) for e in EXPERIMENTS.values())
    assert len(CASES) > 2 * len(EXPERIMENTS)


@pytest.mark.parametrize("name,key,bad", CASES, ids=[f"{n}:{k}={b}" for n, k, b in CASES])
def test_bad_experiment_key_is_one_line_exit_2_and_no_directory(name, key, bad, tmp_path, capsys):
    code, err = run_cli(["run", name, f"{key}={bad}"], tmp_path, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("manytask: error:") and key in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("args", [["demo", "epochs=abc"], ["demo", "lr=-1"], ["demo", "no_such_key=1"],
                                  ["demo", "stl.widths=0"], ["demo", "data.radius=x"], ["demo", "seeds"]])
def test_bad_contender_key_is_one_line_exit_2_and_no_directory(args, tmp_path, capsys):
    code, err = run_cli(["run", *args], tmp_path, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("args,hint", [(["schedules", "seed=1"], "did you mean seeds=?"),
                                       (["demo", "epoch=3"], "did you mean epochs=?"),
                                       (["demo", "data.radiuss=3"], "did you mean data.radius=?"),
                                       (["rsn2-ensemble", "widht=3"], "did you mean widths=?")])
def test_a_misspelt_key_names_the_nearest_one(args, hint, tmp_path, capsys):
    code, err = run_cli(["run", *args], tmp_path, capsys)
    assert code == 2 and hint in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_list_prints_every_key_of_an_experiment_a_method_and_a_data_set(capsys):
    for name, expected in (("icnn-tox21", ["seeds"]), ("icnn", ["widths", "connector_l1"]),
                           ("tox21", ["data.radius", "data.bits"]), ("train", ["epochs", "lr", "weight_decay"])):
        cli.main(["list", name])
        out = capsys.readouterr().out
        for key in expected:
            assert key in out, (name, key, out)
        assert "default" in out
