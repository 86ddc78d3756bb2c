"""Run `vaelab` (one torchrun rank of it) with spies: what each rank did, written to a file.

    python tests/rank_spy.py OUT [vaelab arguments...]

Every rank writes OUT/rank-$RANK.json when it exits: how many optimizer steps it took, and for
each function named in $SPY_CALLS (MODULE:NAME, comma-separated) the CLOCK_MONOTONIC times
(system-wide, so comparable across processes) at which each call started and ended. On rank
$SPY_NAN_RANK, the $SPY_NAN_AT-th training objective (distributed.rank_mean) is made NaN.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch

RANK = os.environ.get("RANK", "0")
record: dict = {"steps": 0, "calls": {}}


def count_optimizer_steps() -> None:
    real = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        record["steps"] += 1
        return real(self, *args, **kwargs)

    torch.optim.Adam.step = step


def time_calls(target: str) -> None:
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    real = getattr(module, name)
    calls = record["calls"].setdefault(target, [])

    def timed(*args, **kwargs):
        started = time.monotonic()
        try:
            return real(*args, **kwargs)
        finally:
            calls.append([started, time.monotonic()])

    setattr(module, name, timed)


def poison_objective(at: int) -> None:
    from vaelab import distributed

    real, calls = distributed.rank_mean, 0

    def rank_mean(values, count):
        nonlocal calls
        calls += 1
        objective = real(values, count)
        return objective * float("nan") if calls == at else objective

    distributed.rank_mean = rank_mean


def save(out: Path) -> None:
    (out / f"rank-{RANK}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    out, *arguments = sys.argv[1:]
    atexit.register(save, Path(out))
    count_optimizer_steps()
    for target in filter(None, os.environ.get("SPY_CALLS", "").split(",")):
        time_calls(target)
    if os.environ.get("SPY_NAN_RANK") == RANK:
        poison_objective(int(os.environ["SPY_NAN_AT"]))
    from vaelab.cli import main

    sys.exit(main(arguments))
