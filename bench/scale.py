"""One process against two on this machine: the same run (seed defaults, gloo on the CPU),
launched plainly and with torchrun. Reports throughput, seconds per epoch, wall time with
start-up, and how far the per-epoch metrics of each row are from the first row's. Each row
runs in its own processes; with --repeats R the rows take turns R times and each keeps its
fastest run (the others' jobs on a shared machine only ever slow a run down). Prints a
Markdown table.

    VAELAB_DATA_DIR=../shared/data python bench/scale.py --epochs 2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import Record

REPO = Path(__file__).resolve().parents[1]
METRICS = ("train_loss", "val_loss", "train_recon", "train_kl", "val_recon", "val_kl")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
ROWS = {  # name: (launcher prefix, threads per process, as OMP_NUM_THREADS)
    # every core given explicitly: a plain `vaelab train` measures one thread against every
    # core at its start and keeps the faster (threads.py), which would make this row row 2
    "1 process, every core": ([sys.executable, "-m", "vaelab"], CORES),
    "1 process, 1 thread": ([sys.executable, "-m", "vaelab"], 1),
    "2 processes x 1 thread (torchrun, gloo)": ([*TORCHRUN, "--nproc-per-node", "2", "-m",
                                                 "vaelab"], 1),
}


def run_row(launcher: list[str], threads: int | None, args: list[str], out: Path) -> dict:
    from vaelab.runs import read_metrics

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    subprocess.run([*launcher, "train", "--out", str(out), "--quiet", *args], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    rows = read_metrics(out)
    return {"rows": rows, "wall": wall,
            "train_seconds": sum(row["train_seconds"] for row in rows),
            "epoch_seconds": sum(row["epoch_seconds"] for row in rows) / len(rows)}


def largest_gap(rows: list[dict], reference: list[dict]) -> float:
    """The largest relative difference of any metric in any epoch."""
    return max(abs(mine[key] - theirs[key]) / abs(theirs[key])
               for mine, theirs in zip(rows, reference) for key in METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit-train", type=int, help="fewer training images (quick look)")
    parser.add_argument("--limit-val", type=int, help="fewer validation images")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the fastest counts")
    parser.add_argument("--json", help="where the results go (default bench/results/scale.json)")
    options = parser.parse_args()
    args = ["--epochs", str(options.epochs), "--device", "cpu"]
    for flag in ("limit_train", "limit_val"):
        if getattr(options, flag):
            args += [f"--{flag.replace('_', '-')}", str(getattr(options, flag))]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(options.repeats):
            for i, (name, (launcher, threads)) in enumerate(ROWS.items()):
                result = run_row(launcher, threads, args, Path(folder) / f"run{i}-{repeat}")
                if name not in results or result["wall"] < results[name]["wall"]:
                    results[name] = result
    reference = next(iter(results.values()))
    images, val = options.limit_train or 60_000, options.limit_val or 10_000
    record = Record("scale", __doc__)
    rows = []
    for name, result in results.items():
        speed = images * options.epochs / result["train_seconds"]
        gap = largest_gap(result["rows"], reference["rows"])
        record.number(name, {"images per second": speed, "seconds per epoch":
                             result["epoch_seconds"], "wall seconds": result["wall"],
                             "largest metric gap": gap})
        rows.append([name, f"{speed:,.0f}", f"{result['epoch_seconds']:.1f}",
                     f"{result['wall']:.1f}", f"{result['rows'][-1]['val_loss']:.4f}",
                     f"{gap:.1e}"])
    record.table(["launch", "images/s", "s/epoch", "wall s (start-up included)",
                  "val_loss, last epoch", "largest metric gap vs row 1"], rows,
                 f"{options.epochs} epochs of {images:,} images, batch 64, {val:,} validation "
                 f"images; each row the fastest of {options.repeats}.")
    record.save(options.json)


if __name__ == "__main__":
    main()
