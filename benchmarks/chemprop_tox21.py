"""chemprop 2.3.1's default `chemprop train` on manytask's own Tox21 split: the reference for the D-MPNN figures.

Writes manytask's seeded random 80/10/10 split of the embedded Tox21 data (the rows `manytask train tox21`
trains, validates and tests on; `data.split_seed` 0) as one CSV with a `split` column (train/val/test), trains
chemprop with its defaults on it (`--splits-column split`: chemprop keeps its best validation checkpoint), predicts
the test rows with that checkpoint and scores them as manytask does: ROC-AUC per assay over the labelled
rows, and their mean (tox21's 12 assays). chemprop must be installed (`pip install chemprop==2.3.1`); it is not a
dependency of manytask.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/chemprop_tox21.py OUT_DIR [--seeds 0,1,2] [--epochs 50]
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from manytask import load_dataset


def write_split(out: Path) -> tuple[Path, list[str]]:
    """OUT/tox21_split.csv: smiles, the 12 assays (empty = missing), split. -> (path, assay names)."""
    data = load_dataset("tox21")
    names = [t.name for t in data.tasks]
    path = out / "tox21_split.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["smiles", *names, "split"])
        for split in ("train", "val", "test"):
            labels = np.stack([data.split(split).labels[n].numpy() for n in names], 1)
            for smi, row in zip(data.meta["smiles"][split], labels):
                w.writerow([smi, *("" if np.isnan(v) else int(v) for v in row), split])
    return path, names


def chemprop_bin() -> str:
    exe = shutil.which("chemprop") or str(Path(sys.executable).with_name("chemprop"))
    if not Path(exe).exists():
        sys.exit("chemprop is not installed: pip install chemprop==2.3.1")
    return exe


def test_auc(split_csv: Path, names: list[str], preds_csv: Path) -> dict[str, float]:
    """ROC-AUC of each assay on the test rows (labelled ones, both classes present), as manytask scores it."""
    truth = [r for r in csv.DictReader(split_csv.open()) if r["split"] == "test"]
    preds = list(csv.DictReader(preds_csv.open()))
    if len(preds) != len(truth):
        raise RuntimeError(f"{len(preds)} predictions for {len(truth)} test rows")
    out = {}
    for n in names:
        pairs = [(float(t[n]), float(p[n])) for t, p in zip(truth, preds) if t[n] != ""]
        y = [a for a, _ in pairs]
        if 0 < sum(y) < len(y):
            out[n] = float(roc_auc_score(y, [b for _, b in pairs]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", default="0", help="chemprop --pytorch-seed values, one training each")
    ap.add_argument("--epochs", type=int, default=50, help="chemprop's default: 50")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    split_csv, names = write_split(args.out)
    exe, results = chemprop_bin(), {}
    for seed in map(int, args.seeds.split(",")):
        run = args.out / f"seed{seed}"
        subprocess.run([exe, "train", "--data-path", str(split_csv), "--task-type", "classification",
                        "--smiles-columns", "smiles", "--target-columns", *names, "--splits-column", "split",
                        "--epochs", str(args.epochs), "--pytorch-seed", str(seed), "-n", "0",
                        "--accelerator", "cpu", "--output-dir", str(run)], check=True)
        (model,) = sorted(run.rglob("best*.pt"))[:1] or sorted(run.rglob("*.pt"))[:1]
        test_csv = args.out / "test.csv"
        with test_csv.open("w", newline="") as f:
            csv.writer(f).writerows([["smiles"]] + [[r["smiles"]] for r in csv.DictReader(split_csv.open())
                                                    if r["split"] == "test"])
        preds = run / "test_preds.csv"
        subprocess.run([exe, "predict", "--test-path", str(test_csv), "--smiles-columns", "smiles",
                        "--model-paths", str(model), "--preds-path", str(preds), "-n", "0",
                        "--accelerator", "cpu"], check=True)
        aucs = test_auc(split_csv, names, preds)
        results[seed] = {"mean_test_auc": statistics.mean(aucs.values()), "tasks": len(aucs), "per_task": aucs,
                         "model": str(model)}
        print(f"chemprop seed {seed}: mean test ROC-AUC {results[seed]['mean_test_auc']:.4f} over {len(aucs)} assays",
              flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    means = [r["mean_test_auc"] for r in results.values()]
    print(f"chemprop {len(means)} seed(s): {statistics.mean(means):.4f}"
          + (f" ± {statistics.stdev(means):.4f}" if len(means) > 1 else ""))


if __name__ == "__main__":
    main()
