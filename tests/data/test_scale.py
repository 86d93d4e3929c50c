"""The synthetic scale data set: a seeded MoleculeNet CSV of real SMILES whose planted task groups
correlate within and not across groups, read by the molecule pipeline and trained through the CLI."""
from __future__ import annotations

import numpy as np
import pytest

from manytask import load_dataset
from manytask.config import ConfigError
from manytask.data import moleculenet as mn, scale
from manytask.data.base import PackedRows
from manytask.report import read_results


def label_correlations(labels: np.ndarray) -> np.ndarray:
    """(T, T) correlations of label columns over the rows where both are present."""
    t = labels.shape[1]
    c = np.eye(t)
    for i in range(t):
        for j in range(i + 1, t):
            both = ~np.isnan(labels[:, i]) & ~np.isnan(labels[:, j])
            c[i, j] = c[j, i] = np.corrcoef(labels[both, i], labels[both, j])[0, 1]
    return c


def test_planted_groups_correlate_within_not_across(tmp_path):
    path = scale.write_scale_csv(tmp_path / "s.csv", tasks=6, rows=4000, groups=2, seed=1, missing=0.25)
    smiles, names, labels = mn.read_csv(path, "smiles", ())
    assert names == ["t0_g0", "t1_g0", "t2_g0", "t3_g1", "t4_g1", "t5_g1"] and len(smiles) == 4000
    assert abs(np.isnan(labels).mean() - 0.25) < 0.02
    known = labels[~np.isnan(labels)]
    assert set(np.unique(known).tolist()) == {0.0, 1.0} and 0.05 < known.mean() < 0.45
    c = label_correlations(labels)
    group = scale.task_groups(6, 2)
    same = (group[:, None] == group[None, :]) & ~np.eye(6, dtype=bool)
    across = group[:, None] != group[None, :]
    assert c[same].min() > 0.25 and np.abs(c[across]).max() < 0.1
    assert c[same].min() > np.abs(c[across]).max() + 0.2


def test_the_latent_scores_read_the_fingerprint_bits(tmp_path):
    """Labels are a function of the molecule (plus noise): rows of one molecule agree more than chance."""
    smiles, bits = scale.smiles_pool()
    z = scale.latent_scores(bits, 3, np.random.default_rng(0))
    assert z.shape == (len(smiles), 3) and len(smiles) > 7000
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-8)
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(3), atol=1e-8)  # uncorrelated, unit variance


def test_seeded_and_cycled_past_the_pool(tmp_path, monkeypatch):
    a = scale.write_scale_csv(tmp_path / "a.csv", 3, 50, 1, seed=4, missing=0.0)
    b = scale.write_scale_csv(tmp_path / "b.csv", 3, 50, 1, seed=4, missing=0.0)
    c = scale.write_scale_csv(tmp_path / "c.csv", 3, 50, 1, seed=5, missing=0.0)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    pool, bits = scale.smiles_pool()
    monkeypatch.setattr(scale, "smiles_pool", lambda sources=(), workers=1: (pool[:20], bits[:20]))
    smiles, _, labels = mn.read_csv(scale.write_scale_csv(tmp_path / "d.csv", 2, 70, 1, 0, 0.0), "smiles", ())
    assert len(smiles) == 70 and set(smiles) == set(pool[:20])  # every molecule of the pool, repeated
    assert not np.isnan(labels).any()


def test_more_sources_join_the_pool(tmp_path, monkeypatch):
    base = tmp_path / "base.csv"
    base.write_text("smiles,A\nCCO,1\nc1ccccc1O,0\nCCO,1\n")
    monkeypatch.setattr(scale, "embedded_tox21", lambda: base)  # a small stand-in for Tox21's 7,831 rows
    extra = tmp_path / "more.csv"
    extra.write_text("name,SMILES\na,CCCCCCCCCCCCCCCCCCCCN\nb,CCO\nc,not_a_smiles\n")
    assert scale.smiles_pool()[0] == ["CCO", "c1ccccc1O"]
    smiles, bits = scale.smiles_pool((str(extra),))
    assert smiles == ["CCO", "c1ccccc1O", "CCCCCCCCCCCCCCCCCCCCN"]  # distinct and readable, in file order
    assert bits.shape == (3, scale.LATENT_BITS // 8) and bits.dtype == np.uint8


def test_the_registered_data_set_goes_through_the_molecule_pipeline():
    data = load_dataset("scale", n_tasks="5", rows="300", groups="2", bits="256", fractions="0.6,0.2,0.2")
    assert [t.name for t in data.tasks] == ["t0_g0", "t1_g0", "t2_g0", "t3_g1", "t4_g1"]
    assert data.meta["groups"] == {"t0_g0": 0, "t1_g0": 0, "t2_g0": 0, "t3_g1": 1, "t4_g1": 1}
    assert isinstance(data.train.inputs["x"], PackedRows) and data.input_shapes == {"x": (256,)}
    assert sum(data.split(s).size("x") for s in ("train", "val", "test")) == 300
    again = load_dataset("scale", n_tasks="5", rows="300", groups="2", bits="256", fractions="0.6,0.2,0.2")
    assert again.meta["smiles"] == data.meta["smiles"]


@pytest.mark.parametrize("keys,msg", [
    ({"groups": "4", "n_tasks": "3"}, "data.groups=4 is more than data.n_tasks=3"),
    ({"missing": "1"}, "missing=1.0: must be in [0, 1)"),
    ({"sources": "/nonexistent/x.csv"}, "data.sources: /nonexistent/x.csv does not exist"),
])
def test_bad_settings_are_one_line_errors(keys, msg):
    with pytest.raises(ConfigError) as e:
        load_dataset("scale", **keys)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_train_through_the_cli(tmp_path, monkeypatch):
    from manytask import cli
    monkeypatch.chdir(tmp_path)
    cli.main(["train", "scale", "hard_sharing", "epochs=1", "progress=false", "widths=16", "data.rows=200",
              "data.n_tasks=4", "data.groups=2", "data.bits=128", "data.workers=2", "--out", "runs"])
    (run,) = (tmp_path / "runs").iterdir()
    rows = read_results(run / "results.csv")
    assert {record[2] for record in rows} >= {"t0_g0", "t1_g0", "t2_g1", "t3_g1"}  # (contender, seed, task, ...)
    (tmp_path / "new.csv").write_text("smiles\nCCO\nnot_a_smiles\n")
    cli.main(["predict", str(run), "--file", "new.csv", "--out", "preds.csv"])
    lines = (tmp_path / "preds.csv").read_text().splitlines()
    assert lines[0] == "smiles,valid,t0_g0,t1_g0,t2_g1,t3_g1" and lines[1].startswith("CCO,true,")
    assert lines[2].startswith("not_a_smiles,false") and len(lines) == 3
