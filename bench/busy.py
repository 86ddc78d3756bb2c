"""Training speed on an idle machine and with one core kept busy by another program: vaelab's
default thread choice against `--threads 1` and `--threads <every usable core>`, side by side.

Each row is `vaelab train` for one epoch in its own process (seed defaults on the first
--images training images); "busy" rows run while a second process spins on one core, as a
browser, a compiler or another job would. The rows take turns --repeats times and each keeps
its fastest run (other jobs on a shared machine only ever slow a run down). Throughput counts
the epoch's training steps; the default's thread probe runs once before them and is shown
apart, with its share of a full 60,000-image epoch at the measured speed. Prints a Markdown
table and writes the numbers to bench/results/busy.json.

    VAELAB_DATA_DIR=../shared/data python bench/busy.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "busy.json"
FULL_EPOCH = 60_000  # MNIST's training images: the probe's cost is set against such an epoch
TOLERANCE = 0.10  # the bound: the default within 10% of the best of the three
SPIN = "while True:\n    pass\n"  # a pure spin loop: one core, all the time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def train_once(threads: int | None, images: int, work: Path) -> dict:
    """One epoch of `vaelab train` in a fresh process: images per second of its training
    steps, the threads it used, and (for the default) how long its probe took."""
    from vaelab.runs import read_metrics

    out = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("OMP_NUM_THREADS", None)  # the default must decide by itself
    flags = [] if threads is None else ["--threads", str(threads)]
    result = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--out", str(out / "run"), "--quiet",
         "--epochs", "1", "--limit-train", str(images), "--limit-val", "500", "--device", "cpu",
         *flags], env=env, capture_output=True, text=True, check=True)
    row = read_metrics(out / "run")[0]
    probe = re.search(r"measured in ([\d.]+) s", result.stderr)
    return {"images_per_second": images / row["train_seconds"], "threads": row["threads"],
            "probe_seconds": float(probe.group(1)) if probe else 0.0}


def measure(states: dict[str, bool], rows: dict[str, int | None], images: int, repeats: int,
            work: Path, load_averages: dict[str, float]) -> dict[str, dict[str, dict]]:
    """{load: {row: fastest run}}; the spinner runs only during the busy rows. The one-minute
    load average at the start of each load goes into `load_averages` (other jobs show there)."""
    best: dict[str, dict[str, dict]] = {load: {} for load in states}
    for load, busy in states.items():
        load_averages[load] = os.getloadavg()[0]
        spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
        try:
            time.sleep(1.0 if busy else 0.0)  # let the spinner take its core
            for _ in range(repeats):
                for name, threads in rows.items():
                    run = train_once(threads, images, work)
                    kept = best[load].get(name)
                    if kept is None or run["images_per_second"] > kept["images_per_second"]:
                        best[load][name] = run
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    return best


def verdicts(best: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Per load: the default's share of the best row's throughput, and whether it is within
    TOLERANCE."""
    out = {}
    for load, rows in best.items():
        top = max(run["images_per_second"] for run in rows.values())
        share = rows["default"]["images_per_second"] / top
        out[load] = {"default_share_of_best": share, "within_tolerance": share >= 1 - TOLERANCE}
    return out


def table(best: dict[str, dict[str, dict]], judged: dict[str, dict]) -> str:
    lines = ["| load | threads | used | train img/s | vs best | probe (s) | probe / 60k epoch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for load, rows in best.items():
        top = max(run["images_per_second"] for run in rows.values())
        for name, run in rows.items():
            probe = run["probe_seconds"]
            share = probe / (FULL_EPOCH / run["images_per_second"]) if probe else 0
            lines.append(f"| {load} | {name} | {run['threads']} | "
                         f"{run['images_per_second']:,.0f} | "
                         f"{run['images_per_second'] / top:.2f} | "
                         f"{f'{probe:.2f}' if probe else '—'} | "
                         f"{f'{100 * share:.1f}%' if probe else '—'} |")
    lines.append("")
    for load, verdict in judged.items():
        mark = "within" if verdict["within_tolerance"] else "NOT within"
        lines.append(f"{load}: the default reaches {100 * verdict['default_share_of_best']:.0f}% "
                     f"of the best row, {mark} {100 * TOLERANCE:.0f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6400,
                        help="training images per epoch (default: 6400, 100 batches)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()

    from vaelab.threads import usable_cores

    cores = usable_cores()
    rows = {"default": None, "--threads 1": 1, f"--threads {cores}": cores}
    states = {"idle": False, "one core busy": True}
    load_averages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        best = measure(states, rows, args.images, args.repeats, Path(work), load_averages)
    judged = verdicts(best)
    loads = ", ".join(f"{load} {value:.2f}" for load, value in load_averages.items())
    print(f"{cpu_model()}, {os.cpu_count()} cores ({cores} usable), torch {torch.__version__}; "
          f"{args.images:,} images per epoch, fastest of {args.repeats}; load average at the "
          f"start of each part (other jobs included): {loads}\n")
    print(table(best, judged))
    result = {
        "command": " ".join(["python", "bench/busy.py", *sys.argv[1:]]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": cores},
        "load_average_at_start": load_averages,
        "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "git_commit": git_commit(),
        "images_per_epoch": args.images, "repeats": args.repeats, "tolerance": TOLERANCE,
        "rows": best, "verdicts": judged,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
