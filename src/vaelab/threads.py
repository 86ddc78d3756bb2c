"""How many CPU threads training uses: chosen once at its start, so that a busy core never
stalls it.

torch's default is one thread per core. When another program keeps one of those cores busy,
every parallel region of every layer waits for the thread that shares it, and training on all
cores can be many times slower than on one. So, unless the count is given (`--threads`, an
explicit OMP_NUM_THREADS, torchrun's one per process), a CPU run times a few forward and
backward passes of its own model on a real batch, at one thread and at every usable core (the
CPUs this process may run on, within a cgroup's CPU quota), and keeps the faster.

The count changes only how a kernel splits its sums, hence the order of float additions: never
which random numbers are drawn. The probe itself draws none of the run's (it works on a copy
of the model with noise of its own: probe_step), so a run whose probe chose N threads is the
run `--threads N` gives.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import time
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from . import distributed
from .data import to_float

if TYPE_CHECKING:
    from .training_state import TrainingState

log = logging.getLogger(__name__)

TIMED_STEPS = 3  # per thread count, after one untimed warm-up (thread pool, kernel caches)
STEP_BUDGET_SECONDS = 0.25  # a count already this slow is not timed further: it has lost
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a run uses, why, and what the probe measured (seconds per step by
    thread count; empty when nothing was measured)."""

    threads: int
    reason: str
    seconds_per_step: dict[int, float] = field(default_factory=dict)


def usable_cores(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may run on (its affinity), capped by a cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """CPUs' worth of time the cgroup allows per period (cgroup v2 cpu.max, or v1's CFS quota);
    None where there is no quota or no cgroup to read."""
    try:
        if (cgroup / "cpu.max").is_file():
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        else:
            v1 = cgroup / "cpu"
            quota = (v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (v1 / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def choose(requested: int | None, device: torch.device,
           make_step: Callable[[], Callable[[], None]]) -> ThreadChoice:
    """The run's thread count: `requested` if given; else what the launch already says
    (torchrun, OMP_NUM_THREADS), torch's own on a GPU, 1 on one usable core; else measured
    with the step `make_step()` returns (one forward and backward pass)."""
    if requested is not None:
        return ThreadChoice(requested, "--threads")
    if distributed.launched():
        return ThreadChoice(torch.get_num_threads(), "torchrun")
    if os.environ.get("OMP_NUM_THREADS"):
        return ThreadChoice(torch.get_num_threads(), "OMP_NUM_THREADS")
    if device.type != "cpu":
        return ThreadChoice(torch.get_num_threads(), f"computing on {device.type}")
    cores = usable_cores()
    if cores == 1:
        return ThreadChoice(1, "one usable core")
    started = time.perf_counter()
    timings = measure(make_step(), (1, cores))
    fastest = min(timings, key=timings.get)
    log.info("training with %s (measured in %.1f s: %s; --threads N to choose)",
             _threads(fastest), time.perf_counter() - started, ", ".join(
                 f"{_threads(count)} {1000 * seconds:.0f} ms per batch"
                 for count, seconds in timings.items()))
    return ThreadChoice(fastest, "measured", timings)


def measure(step: Callable[[], None], counts: tuple[int, ...]) -> dict[int, float]:
    """Median seconds per call of `step` at each thread count; torch's count is restored."""
    before = torch.get_num_threads()
    timings = {}
    try:
        for count in counts:
            torch.set_num_threads(count)
            step()  # warm-up, untimed
            times: list[float] = []
            while len(times) < TIMED_STEPS and sum(times) < STEP_BUDGET_SECONDS:
                started = time.perf_counter()
                step()
                times.append(time.perf_counter() - started)
            timings[count] = statistics.median(times)
    finally:
        torch.set_num_threads(before)
    return timings


def probe_step(state: TrainingState, images: torch.Tensor, labels: torch.Tensor | None
               ) -> Callable[[], None]:
    """One forward and backward pass as a training step makes them, for `choose` to time: on
    a copy of the model (the run's weights and gradients stay as they are), on the first batch
    of training images, with noise from a generator of its own (the run's random streams and
    torch's global one draw nothing). No optimizer step: the copy never changes."""
    config = state.config
    copy = deepcopy(state.model)
    size = min(config.batch_size, len(images))
    x = to_float(images[:size])
    y = labels[:size] if labels is not None else None
    samples = config.iw_train if config.iw_train > 1 else None
    noise = copy.draw_noise(size, torch.Generator(device=x.device).manual_seed(0), samples)

    def step() -> None:
        copy.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=state.bf16):
            terms = copy.terms(x, noise, y, config.beta, samples)
        terms["objective"].mean().backward()
    return step


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """torch's thread count is put back when training ends: the choice is the run's alone."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _threads(count: int) -> str:
    return f"{count} thread{'s' * (count != 1)}"
