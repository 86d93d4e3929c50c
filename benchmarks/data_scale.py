"""Molecule data at scale: time and peak memory of loading a MoleculeNet CSV (read, Morgan fingerprints,
cache write, split) with a cold cache, in parallel and serially, measured in the same run.

    python benchmarks/data_scale.py                              # 10^4 and 10^5 rows, 2 workers vs 1
    python benchmarks/data_scale.py --rows 1000000 --workers 2
    python benchmarks/data_scale.py --reference-tree DIR         # also an older checkout of manytask

The CSVs are the synthetic `scale` data set (manytask/data/scale.py: 12 tasks in 3 planted groups, 20%
missing, Tox21's SMILES cycled to reach the rows), written once per size. Each load runs in its own
process with an empty cache directory; its peak RSS is the largest resident set of that process and its
worker processes, its CPU time theirs summed (os.wait4, as /usr/bin/time -v reports them). Printed per
size and mode: load time, the part spent reading the CSV, CPU time, peak RSS, the bytes the features
take in memory (and as float32), and the ratios of the parallel load to the serial one (and of the
serial load to the reference tree when given). On a machine whose cores are busy with other work the
parallel load cannot be faster: compare the CPU times there.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# One load in a fresh process: argv = CSV, workers (0: the tree has no workers key). Prints one JSON line.
CHILD = """
import json, sys, time
from pathlib import Path
from manytask.data import moleculenet as mn
spent = {"read_s": 0.0}
read_csv = mn.read_csv
def timed(*args):
    t = time.perf_counter()
    out = read_csv(*args)
    spent["read_s"] += time.perf_counter() - t
    return out
mn.read_csv = timed
workers = int(sys.argv[2])
t0 = time.perf_counter()
data = mn.load_any(mn.MoleculeNetConfig(path=sys.argv[1], **({"workers": workers} if workers else {})))
load_s = time.perf_counter() - t0
xs = [data.split(s).inputs["x"] for s in ("train", "val", "test")]
print(json.dumps({"load_s": load_s, **spent, "rows": sum(int(x.shape[0]) for x in xs),
                  "feature_bytes": sum(int(x.nbytes) for x in xs), "dense_bytes": sum(4 * x.numel() for x in xs)}))
"""


def run_child(csv_path: Path, workers: int, tree: Path) -> dict:
    """One load in a child process with an empty cache: its JSON plus wall_s and peak_rss_mb."""
    with tempfile.TemporaryDirectory(prefix="data-scale-cache-") as cache, tempfile.TemporaryFile() as err:
        env = {**os.environ, "MANYTASK_CACHE": cache, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(csv_path), str(workers)], env=env,
                                stdout=subprocess.PIPE, stderr=err, cwd=tree)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's peak RSS (and its workers')
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"load of {csv_path} failed:\n{err.read().decode()[-2000:]}")
    return {**json.loads(out.decode().strip().splitlines()[-1]), "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000", help="comma-separated row counts")
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel load")
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--reference-tree", type=Path, help="another checkout of manytask to load with, serially")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "manytask-data-scale",
                        help="where the CSVs are written (kept for the next run)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from manytask.data.scale import write_scale_csv

    args.dir.mkdir(parents=True, exist_ok=True)
    modes = [(f"parallel ({args.workers} workers)", args.workers, REPO), ("serial (1 worker)", 1, REPO)]
    if args.reference_tree:
        modes.append(("reference tree", 0, args.reference_tree.resolve()))
    print(f"{'rows':>9}  {'mode':<22} {'load s':>7} {'read s':>7} {'CPU s':>7} {'peak RSS MB':>11} "
          f"{'features MB':>11} {'float32 MB':>10}")
    for rows in map(int, args.rows.split(",")):
        path = args.dir / f"scale-t{args.tasks}-r{rows}.csv"
        if not path.exists():
            t = time.perf_counter()
            write_scale_csv(path, args.tasks, rows, 3, 0, 0.2, workers=args.workers)
            print(f"(wrote {path}, {path.stat().st_size / 1e6:.0f} MB, in {time.perf_counter() - t:.1f} s)")
        results = {}
        for label, workers, tree in modes:
            r = results[label] = run_child(path, workers, tree)
            print(f"{r['rows']:>9,}  {label:<22} {r['load_s']:>7.1f} {r['read_s']:>7.1f} {r['cpu_s']:>7.1f} "
                  f"{r['peak_rss_mb']:>11.0f} {r['feature_bytes'] / 1e6:>11.1f} {r['dense_bytes'] / 1e6:>10.1f}",
                  flush=True)
        par, ser = results[modes[0][0]], results[modes[1][0]]
        line = (f"{rows:>9,}  parallel/serial: load time x{par['load_s'] / ser['load_s']:.2f}, CPU time "
                f"x{par['cpu_s'] / ser['cpu_s']:.2f}, peak RSS x{par['peak_rss_mb'] / ser['peak_rss_mb']:.2f}")
        if args.reference_tree:
            ref = results["reference tree"]
            line += (f"; serial/reference: load time x{ser['load_s'] / ref['load_s']:.2f}, peak RSS "
                     f"x{ser['peak_rss_mb'] / ref['peak_rss_mb']:.2f}, "
                     f"features x{ser['feature_bytes'] / ref['feature_bytes']:.3f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
