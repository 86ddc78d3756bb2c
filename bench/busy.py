"""Training speed on an idle machine and with one core kept busy by another program: vaelab's
default thread choice against `--threads 1` and `--threads <every usable core>`, side by side.

Each row is `vaelab train` for one epoch in its own process (seed defaults on the first
--images training images); "busy" rows run while a second process spins on one core, as a
browser, a compiler or another job would. The rows take turns --repeats times and each keeps
its fastest run (other jobs on a shared machine only ever slow a run down). Throughput counts
the epoch's training steps; the default's thread probe runs once before them and is shown
apart, with its share of a full 60,000-image epoch at the measured speed. Prints a Markdown
table and keeps the numbers in bench/results/busy.json.

    VAELAB_DATA_DIR=../shared/data python bench/busy.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import Record

REPO = Path(__file__).resolve().parents[1]
FULL_EPOCH = 60_000  # MNIST's training images: the probe's cost is set against such an epoch
TOLERANCE = 0.10  # the aim: the default within 10% of the best of the three
SPIN = "while True:\n    pass\n"  # a pure spin loop: one core, all the time


def train_once(threads: int | None, images: int, work: Path) -> dict:
    """One epoch of `vaelab train` in a fresh process: images per second of its training
    steps, the threads it used, and (for the default) how long its probe took."""
    from vaelab.checkpoint import load_checkpoint

    out = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("OMP_NUM_THREADS", None)  # the default must decide by itself
    flags = [] if threads is None else ["--threads", str(threads)]
    result = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--out", str(out / "run"), "--quiet",
         "--epochs", "1", "--limit-train", str(images), "--limit-val", "500", "--device", "cpu",
         *flags], env=env, capture_output=True, text=True, check=True)
    row = load_checkpoint(out / "run" / "last.pt")["history"][0]  # with its thread count
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


def table_rows(best: dict[str, dict[str, dict]]) -> list[list[str]]:
    rows = []
    for load, runs in best.items():
        top = max(run["images_per_second"] for run in runs.values())
        for name, run in runs.items():
            probe = run["probe_seconds"]
            share = probe / (FULL_EPOCH / run["images_per_second"]) if probe else 0
            rows.append([load, name, str(run["threads"]), f"{run['images_per_second']:,.0f}",
                         f"{run['images_per_second'] / top:.2f}",
                         f"{probe:.2f}" if probe else "—",
                         f"{100 * share:.1f}%" if probe else "—"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6400,
                        help="training images per epoch (default: 6400, 100 batches)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="where the results go (default bench/results/busy.json)")
    args = parser.parse_args()

    from vaelab.threads import usable_cores

    record = Record("busy", __doc__)
    cores = usable_cores()
    rows = {"default": None, "--threads 1": 1, f"--threads {cores}": cores}
    states = {"idle": False, "one core busy": True}
    load_averages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        best = measure(states, rows, args.images, args.repeats, Path(work), load_averages)
    judged = verdicts(best)
    record.number("rows", best)
    record.number("verdicts", judged)
    record.number("load average at the start of each part", load_averages)
    loads = ", ".join(f"{load} {value:.2f}" for load, value in load_averages.items())
    record.table(["load", "threads", "used", "train img/s", "vs best", "probe (s)",
                  "probe / 60k epoch"], table_rows(best),
                 f"{cores} usable cores; {args.images:,} images per epoch, fastest of "
                 f"{args.repeats}; the one-minute load average at the start of each part (other "
                 f"jobs included): {loads}.")
    for load, verdict in judged.items():
        mark = "within" if verdict["within_tolerance"] else "NOT within"
        record.say(f"{load}: the default reaches {100 * verdict['default_share_of_best']:.0f}% "
                   f"of the best row, {mark} {100 * TOLERANCE:.0f}%.")
    record.save(args.json)


if __name__ == "__main__":
    main()
