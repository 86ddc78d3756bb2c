"""Data-parallel training under torchrun: one process per GPU (NCCL) or per CPU share (gloo).

nanoGPT's pattern, kept that small: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) says
whether this process is one of many; rank 0 alone writes; sums are all-reduced. Without that
environment every function here is the identity, and a run is exactly what it was before.

World size is an execution detail. Every rank walks the same global batches of `batch_size`
images and computes its own contiguous slice of each (`share`). Every random draw is made for
the whole global batch, on every rank, from the one shared generator, and each rank keeps its
slice: an image gets the same noise whatever the number of processes, so 2 processes compute
what 1 does, up to the order of float additions.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError, VaelabError, first_line

T = TypeVar("T")
CHECK_IN_SECONDS = 3.0  # how long survivors of a lost peer wait for each other to report in


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def world() -> World:
    env = os.environ
    if not launched():
        return World()
    return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))


def launched() -> bool:
    """Whether torchrun (or its environment) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_writer() -> bool:
    """Rank 0 alone writes the run's files and holds its lock."""
    return world().rank == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


class PeerLost(VaelabError):
    """Another rank died (or its node went away) in the middle of a run."""


def agreed(err: VaelabError) -> VaelabError:
    """Mark an error every rank raised alike: rank 0 alone prints it (cli)."""
    err.agreed = True
    return err


def backend_for(choice: str, device: torch.device) -> str:
    """auto = NCCL on CUDA, gloo elsewhere; NCCL without a CUDA device is refused."""
    if choice == "nccl" and device.type != "cuda":
        raise agreed(ConfigError(
            f"--ddp-backend nccl needs CUDA GPUs, but this run computes on {device.type}; use "
            "--ddp-backend gloo (or auto), or a CUDA --device"))
    if choice == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return choice


def check_batch(batch_size: int) -> None:
    """Each global batch is split evenly across the ranks."""
    size = world().size
    if batch_size % size:
        raise agreed(ConfigError(
            f"batch_size = {batch_size} does not divide by the {size} processes (--batch-size): "
            f"each global batch is split evenly across them; use a multiple of {size}"))


@contextlib.contextmanager
def process_group(device: torch.device, backend: str, timeout: float
                  ) -> Iterator[torch.device]:
    """Join torchrun's process group for the duration, if launched by it; yields the device
    this rank computes on (its LOCAL_RANK GPU on CUDA)."""
    here = world()
    backend = backend_for(backend, device)
    if not launched() or active():
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", here.local_rank)
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, rank=here.rank, world_size=here.size,
                                timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as err:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise VaelabError(f"rank {here.rank} could not join the process group at {where} within "
                          f"{timeout:g} s ({first_line(err)}); start every node, check the "
                          "rendezvous endpoint, or raise --ddp-timeout") from None
    try:
        yield device
    except RuntimeError as err:
        if not _is_peer_failure(err):
            raise
        raise PeerLost(f"rank {here.rank} lost {_lost_ranks()} of the process group "
                       f"({_cause(err)}); the run's last checkpoint is intact: "
                       "`vaelab train --resume RUN` continues from it") from None
    finally:
        dist.destroy_process_group()


def _is_peer_failure(err: RuntimeError) -> bool:
    return isinstance(err, dist.DistError) or "gloo" in str(err) or "NCCL" in str(err) or \
        "Connection" in str(err)


def _cause(err: RuntimeError) -> str:
    """Gloo's message without its source location and advice: "Connection reset by peer"."""
    return re.sub(r"^\[[^\]]*\]\s*", "", first_line(err)).split(". ")[0]


def _lost_ranks() -> str:
    """Name the ranks that did not report in through torchrun's store (which lives in the
    agent, so it outlives a killed worker); the survivors each wait CHECK_IN_SECONDS."""
    here = world()
    main = threading.current_thread() is threading.main_thread()  # signals need it
    ignored = {signum: signal.signal(signum, signal.SIG_IGN)  # torchrun's SIGTERM to the
               for signum in (signal.SIGINT, signal.SIGTERM) if main}  # survivors: not yet
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"vaelab/alive/{here.rank}", "1")
        keys = [f"vaelab/alive/{rank}" for rank in range(here.size)]
        deadline = time.monotonic() + CHECK_IN_SECONDS
        while not store.check(keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        lost = [str(rank) for rank, key in enumerate(keys) if not store.check([key])]
    except (RuntimeError, ValueError):  # the store itself is gone: its node was lost
        return "rank 0's node"
    finally:
        for signum, handler in ignored.items():
            signal.signal(signum, handler)
    return f"rank {', '.join(lost)}" if lost else "contact with a rank"


def share(count: int) -> tuple[int, int]:
    """This rank's slice [start, stop) of a global batch of `count` images: contiguous, and
    as even as `count` allows (a short last batch may leave a rank one image fewer, or none)."""
    here = world() if active() else World()
    base, extra = divmod(count, here.size)
    start = here.rank * base + min(here.rank, extra)
    return start, start + base + (here.rank < extra)


def owns(index: int) -> bool:
    """Whether batch `index` is this rank's when batches are dealt round-robin."""
    here = world() if active() else World()
    return index % here.size == here.rank


def gathered(mine: list[tuple[int, T]]) -> list[T]:
    """Every rank's (batch index, result) pairs, in batch order, on every rank."""
    if not active():
        return [value for _, value in mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return [value for _, value in sorted((pair for part in everyone for pair in part),
                                         key=lambda pair: pair[0])]


def rank_mean(values: torch.Tensor, count: int) -> torch.Tensor:
    """The objective each rank backpropagates: DDP averages gradients over the ranks, so each
    contributes its sum times world size over the global batch's `count`, whose average is
    the global batch's mean (also for a short, unevenly split last batch)."""
    if not active():
        return values.mean()
    return values.sum() * (dist.get_world_size() / count)


class _GlobalBatch(torch.autograd.Function):
    """Every rank's part of a batch, concatenated in rank order; backward sums the gradient
    of the whole over the ranks and hands each rank its part's rows (all_reduce, which every
    backend has, where all_gather's own backward needs reduce_scatter or all_to_all)."""

    @staticmethod
    def forward(ctx, part: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        padded = part.new_zeros((max(sizes), *part.shape[1:]))
        padded[:len(part)] = part
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([whole[:size] for whole, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = sum(ctx.sizes[:ctx.rank])
        return total[start:start + ctx.sizes[ctx.rank]], None


def global_batch(part: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This rank's rows of a batch (share) -> the whole batch and where this rank's rows
    start in it, with gradients flowing back to each rank's rows: for objectives that compare
    the images of a batch (beta-TCVAE's aggregate posterior, FactorVAE's permutations), so
    that a data-parallel run computes what one process does. Every rank must call it. Alone:
    the rows themselves, at 0."""
    if not active():
        return part, 0
    size = torch.tensor([len(part)], device=_collective_device())
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(count) for count in sizes]
    return _GlobalBatch.apply(part, counts), sum(counts[:dist.get_rank()])


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (a copy); the tensor itself when alone. Gloo reduces CPU tensors,
    NCCL CUDA ones: the tensor stays where it is."""
    if not active():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def agreed_signal(signum: int | None) -> int | None:
    """The stop signal any rank received (the largest number if several), on every rank: so
    all stop after the same batch."""
    if not active():
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def from_writer(action: Callable[[], T]) -> T:
    """Rank 0 runs `action`; its result, or the VaelabError it raised, reaches every rank,
    so that a check only rank 0 can make (its files, its lock) is decided once for all."""
    if not active():
        return action()
    outcome: list[Any] = [None]
    if is_writer():
        try:
            outcome[0] = ("ok", action())
        except VaelabError as err:
            outcome[0] = ("error", err)
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise agreed(value)
    return value


def writer_first(action: Callable[[], T]) -> T:
    """Rank 0 runs `action` first (e.g. building a folder's decode cache); the others run it
    once it succeeded, so that they read what rank 0 wrote and never race it."""
    if not active():
        return action()
    result = from_writer(action)
    return result if is_writer() else action()


@contextlib.contextmanager
def writer_holds(lock: Callable[[], contextlib.AbstractContextManager]) -> Iterator[None]:
    """Rank 0 holds `lock()` for the duration; every rank learns whether it could take it."""
    with contextlib.ExitStack() as stack:
        from_writer(lambda: stack.enter_context(lock()) and None)
        yield


def summed(totals: Any) -> Any:
    """A losses.Totals with its sums and image count added over the ranks (in place)."""
    if active():
        both = torch.cat([totals.sums, totals.sums.new_tensor([totals.images])])
        dist.all_reduce(both)
        totals.sums, totals.images = both[:-1], int(both[-1].item())
    return totals


def keep_writer_share(totals: Any) -> None:
    """A part-done epoch's saved sums are global: rank 0 alone carries them on, or the next
    all-reduce would count them once per rank."""
    if active() and not is_writer():
        totals.sums.zero_()
        totals.images = 0


def wrap(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the network when there are several processes: it
    averages the gradients over the ranks during backward."""
    if not active():
        return network
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(network, device_ids=[device.index]
                                   if device.type == "cuda" else None)


def launch_id() -> str | None:
    """torchrun's id for this launch (the same across its restarts), recorded in checkpoints
    so that a restarted group knows the run in --out is its own."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
