"""Wall time and peak memory of `manytask predict` on many SMILES, measured with /usr/bin/time -v.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict.py [--rows 100000] [--old OTHER_CHECKOUT]

In a temporary folder: the SMILES of the embedded Tox21 file, repeated to --rows lines (one SMILES per line,
the input every manytask version reads), a Tox21 hard_sharing run trained for one epoch, and then

    /usr/bin/time -v python -m manytask.cli predict RUN --file smiles.txt > predictions

--old CHECKOUT measures another checkout of manytask (for example the previous version) the same way, with
a run trained by that checkout's own code. Prints wall seconds, peak resident memory (MiB) and output lines
for each.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def smiles_file(path: Path, rows: int) -> Path:
    """Tox21's SMILES repeated to `rows` lines."""
    with gzip.open(ROOT / "manytask" / "data" / "tox21.csv.gz", "rt", newline="") as f:
        smiles = [row["smiles"] for row in csv.DictReader(f)]
    path.write_text("".join(smiles[i % len(smiles)] + "\n" for i in range(rows)))
    return path


def manytask(code: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run([sys.executable, "-m", "manytask.cli", *args], cwd=code, env=env, check=True, **kw)


def train(code: Path, out: Path) -> Path:
    """A Tox21 hard_sharing run of one epoch trained by the manytask at `code` -> its directory."""
    manytask(code, "train", "tox21", "hard_sharing", "epochs=1", "progress=false", "--out", str(out),
             capture_output=True, text=True)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def measure(code: Path, run: Path, inputs: Path, output: Path) -> dict:
    """{wall seconds, peak RSS MiB, output lines} of one predict command."""
    with open(output, "w") as out:
        r = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "manytask.cli", "predict", str(run),
                            "--file", str(inputs)], cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                           stdout=out, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"predict failed with exit status {r.returncode}:\n{r.stderr[-2000:]}")
    h, m, s = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", r.stderr).groups()
    wall = int(h or 0) * 3600 + int(m) * 60 + float(s)
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    with open(output) as f:
        lines = sum(1 for _ in f)
    return {"wall_s": wall, "peak_rss_mib": rss_kib / 1024, "lines": lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--old", type=Path, help="another manytask checkout to measure the same way")
    args = ap.parse_args()
    codes = {"this checkout": ROOT, **({"--old": args.old.resolve()} if args.old else {})}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = smiles_file(tmp / "smiles.txt", args.rows)
        print(f"{args.rows:,} SMILES in {inputs} ({inputs.stat().st_size / 2**20:.1f} MiB)")
        for i, (label, code) in enumerate(codes.items()):
            run = train(code, tmp / f"runs{i}")
            result = measure(code, run, inputs, tmp / f"predictions{i}")
            print(f"{label:14s} {code}: wall {result['wall_s']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                  f"{result['lines']:,} output lines")


if __name__ == "__main__":
    main()
