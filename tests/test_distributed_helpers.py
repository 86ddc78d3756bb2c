"""distributed.py's helpers: their arithmetic with the world emulated in this process (torchrun's
environment, and collectives standing in for the other ranks), a real one-process gloo group
for the code that needs one, and a real 2-process gloo group (spawned, 127.0.0.1) for the
slicing and the objective's scaling. All but the last are fast: run for every mutant."""

from __future__ import annotations

import contextlib
import signal
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

from vaelab import distributed
from vaelab.distributed import World
from vaelab.errors import ConfigError, VaelabError
from vaelab.losses import Totals, elbo_terms


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_environment(monkeypatch, rank: int, size: int, local_rank: int | None = None):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(size))
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))


@pytest.fixture
def emulated(monkeypatch):
    """place(rank, size): this process as rank RANK of SIZE in an active group."""
    def place(rank: int, size: int) -> None:
        torchrun_environment(monkeypatch, rank, size)
        monkeypatch.setattr(distributed, "active", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda *args: size)
    return place


@pytest.fixture(autouse=True)
def alone(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID",
                 "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)


# ---- the emulated world: fast -----------------------------------------------------------

@pytest.mark.mutation
def test_the_world_is_read_from_torchruns_environment(monkeypatch):
    assert distributed.world() == World(0, 1, 0) and not distributed.launched()
    monkeypatch.setenv("RANK", "2")
    assert distributed.world() == World() and not distributed.launched()  # WORLD_SIZE too
    torchrun_environment(monkeypatch, 2, 3, local_rank=1)
    assert distributed.launched() and distributed.world() == World(2, 3, 1)
    assert not distributed.is_writer()
    torchrun_environment(monkeypatch, 0, 3)  # no LOCAL_RANK: 0
    assert distributed.world() == World(0, 3, 0) and distributed.is_writer()


@pytest.mark.mutation
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_share_deals_every_image_once_as_numpy_array_split_does(emulated, size):
    """numpy.array_split is the reference: contiguous parts, the first count % size of them
    one longer."""
    for count in range(0, 11):
        slices = []
        for rank in range(size):
            emulated(rank, size)
            slices.append(distributed.share(count))
        parts = np.array_split(np.arange(count), size)
        assert [(int(p[0]), int(p[-1]) + 1) if len(p) else (s[0], s[0])
                for p, s in zip(parts, slices)] == slices, (count, slices)
        assert slices[0][0] == 0 and slices[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))


@pytest.mark.mutation
def test_share_and_owns_are_the_whole_batch_outside_a_group(monkeypatch):
    torchrun_environment(monkeypatch, 1, 2)  # launched, but the group is not joined yet
    assert distributed.share(7) == (0, 7)
    assert all(distributed.owns(index) for index in range(5))


@pytest.mark.mutation
@pytest.mark.parametrize("size", [2, 3])
def test_owns_deals_batches_round_robin_each_to_one_rank(emulated, size):
    owners = []
    for index in range(7):
        holders = []
        for rank in range(size):
            emulated(rank, size)
            holders += [rank] if distributed.owns(index) else []
        owners.append(holders)
    assert owners == [[index % size] for index in range(7)]


@pytest.mark.mutation
@pytest.mark.parametrize("size, count", [(2, 8), (2, 7), (3, 7), (4, 2)])
def test_rank_means_average_over_the_ranks_to_the_batch_mean(emulated, size, count):
    """DDP averages the ranks' gradients, so the ranks' objectives averaged over the ranks
    must be the global batch's mean, also when a short batch leaves a rank with less (or
    nothing). A sum of `count` float64 terms: exact to count * eps * max |term|."""
    values = torch.randn(count, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    objectives = []
    for rank in range(size):
        emulated(rank, size)
        start, stop = distributed.share(count)
        objectives.append(distributed.rank_mean(values[start:stop], count))
    average = sum(objectives) / size
    tolerance = count * torch.finfo(torch.float64).eps * values.abs().max().item()
    assert abs(average.item() - values.mean().item()) <= tolerance


@pytest.mark.mutation
def test_rank_mean_alone_is_the_mean():
    values = torch.tensor([1.0, 2.0, 6.0])
    assert distributed.rank_mean(values, 99).item() == 3.0  # count only matters in a group


def other_rank_adds(other: torch.Tensor):
    """An all_reduce whose other rank holds `other`: the sum lands in place, as gloo does."""
    def all_reduce(tensor, op=None):
        if op == dist.ReduceOp.MAX:
            tensor.copy_(torch.maximum(tensor, other))
        else:
            tensor.add_(other)
    return all_reduce


@pytest.mark.mutation
def test_summed_adds_every_ranks_sums_and_image_counts(emulated, monkeypatch):
    totals = Totals(torch.device("cpu"))
    totals.add(elbo_terms(torch.tensor([3.0, 5.0]), torch.zeros(2, 2), torch.zeros(2, 2))._asdict())
    alone = distributed.summed(totals)  # outside a group: untouched
    assert alone is totals and alone.images == 2 and alone.sums.tolist() == [8.0, 8.0, 0.0]
    emulated(0, 2)
    monkeypatch.setattr(dist, "all_reduce",
                        other_rank_adds(torch.tensor([1.0, 0.5, 0.5, 3.0], dtype=torch.float64)))
    both = distributed.summed(totals)
    assert both.sums.tolist() == [9.0, 8.5, 0.5] and both.images == 5


@pytest.mark.mutation
def test_all_sum_is_a_reduced_copy_and_the_tensor_itself_alone(emulated, monkeypatch):
    mine = torch.tensor([2.0])
    assert distributed.all_sum(mine) is mine
    emulated(1, 2)
    monkeypatch.setattr(dist, "all_reduce", other_rank_adds(torch.tensor([float("nan")])))
    total = distributed.all_sum(mine)
    assert torch.isnan(total).all() and mine.item() == 2.0  # one rank's NaN reaches all


@pytest.mark.mutation
def test_global_batch_is_every_ranks_rows_in_rank_order_and_returns_each_its_gradient(
        emulated, monkeypatch):
    mine = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    alone, start = distributed.global_batch(mine)
    assert alone is mine and start == 0  # alone: the rows themselves
    emulated(1, 3)
    monkeypatch.setattr(dist, "get_rank", lambda *args: 1)
    monkeypatch.setattr(dist, "get_backend", lambda *args: "gloo")
    first, last = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]), torch.tensor([[9.0, 8.0],
                                                                            [7.0, 6.0]])
    padding = torch.tensor([[77.0, 77.0], [77.0, 77.0]])  # what a short rank's pad may hold

    def all_gather(outputs, tensor):  # ranks 0 and 2 hold 2 rows each; padded to 3
        if tensor.dtype == torch.int64:
            outputs[0].fill_(2), outputs[1].copy_(tensor), outputs[2].fill_(2)
        else:
            assert tensor.shape == (3, 2)
            outputs[0].copy_(torch.cat([first, padding[:1]]))
            outputs[1].copy_(tensor)
            outputs[2].copy_(torch.cat([last, padding[:1]]))

    monkeypatch.setattr(dist, "all_gather", all_gather)
    with torch.device("meta"):  # the sizes go to gloo's device (the CPU), not torch's default
        whole, start = distributed.global_batch(mine)
    assert start == 2
    assert whole.tolist() == torch.cat([first, mine.detach(), last]).tolist()
    # Each rank's loss weighs the whole batch; the others' gradients arrive by all_reduce.
    weights = torch.arange(14.0).reshape(7, 2)
    others = torch.full((7, 2), 100.0)
    monkeypatch.setattr(dist, "all_reduce", other_rank_adds(others))
    (whole * weights).sum().backward()
    assert mine.grad.tolist() == (weights + others)[2:5].tolist()


@pytest.mark.mutation
def test_gathered_orders_every_ranks_results_by_batch(emulated, monkeypatch):
    assert distributed.gathered([(2, "c"), (0, "a")]) == ["c", "a"]  # alone: as computed
    emulated(1, 2)

    def all_gather_object(everyone, mine):  # values that sort otherwise than their batches
        everyone[:] = [[(0, "e"), (2, "c"), (4, "a")], mine]

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    assert distributed.gathered([(3, "b"), (1, "d")]) == ["e", "d", "c", "b", "a"]


@pytest.mark.mutation
@pytest.mark.parametrize("mine, other, agreed", [(None, 0, None), (None, 15, 15),
                                                 (2, 0, 2), (2, 15, 15), (15, 2, 15)])
def test_every_rank_agrees_on_the_largest_stop_signal(emulated, monkeypatch, mine, other,
                                                       agreed):
    assert distributed.agreed_signal(mine) == mine  # alone: its own
    emulated(0, 2)
    monkeypatch.setattr(dist, "get_backend", lambda *args: "gloo")
    adds = other_rank_adds(torch.tensor([other], dtype=torch.int64))

    def all_reduce(flag, op=None):
        assert flag.device.type == "cpu"  # gloo's, not the default device (meta below)
        adds(flag, op)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    with torch.device("meta"):
        assert distributed.agreed_signal(mine) == agreed


@pytest.mark.mutation
def test_collectives_use_the_backends_device_and_ddp_the_networks_gpu(emulated, monkeypatch):
    emulated(0, 2)
    monkeypatch.setattr(dist, "get_backend", lambda *args: "gloo")
    assert distributed._collective_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda *args: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed._collective_device() == torch.device("cuda", 3)  # NCCL: this GPU

    def ddp(network, device_ids):  # DistributedDataParallel's arguments, without a group
        return device_ids

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", ddp)
    assert distributed.wrap(torch.nn.Linear(2, 1), torch.device("cuda", 1)) == [1]
    assert distributed.wrap(torch.nn.Linear(2, 1), torch.device("cpu")) is None


@pytest.mark.mutation
def test_keep_writer_share_zeroes_the_saved_sums_on_other_ranks(emulated):
    def saved():
        totals = Totals(torch.device("cpu"))
        totals.sums += torch.tensor([4.0, 3.0, 1.0], dtype=torch.float64)
        totals.images = 6
        return totals

    for rank, kept in ((0, True), (1, False)):
        emulated(rank, 2)
        totals = saved()
        distributed.keep_writer_share(totals)
        assert (totals.sums.tolist(), totals.images) == (
            ([4.0, 3.0, 1.0], 6) if kept else ([0.0, 0.0, 0.0], 0))


@pytest.mark.mutation
def test_a_batch_size_must_divide_by_the_world_size(monkeypatch):
    distributed.check_batch(63)  # alone, anything goes
    torchrun_environment(monkeypatch, 0, 2)
    distributed.check_batch(64)
    with pytest.raises(ConfigError) as caught:
        distributed.check_batch(63)
    assert str(caught.value) == (
        "batch_size = 63 does not divide by the 2 processes (--batch-size): each global batch "
        "is split evenly across them; use a multiple of 2")
    assert caught.value.agreed


@pytest.mark.mutation
def test_the_backend_follows_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert distributed.backend_for("auto", cpu) == "gloo"
    assert distributed.backend_for("auto", cuda) == "nccl"
    assert distributed.backend_for("gloo", cuda) == "gloo"
    assert distributed.backend_for("nccl", cuda) == "nccl"
    with pytest.raises(ConfigError) as caught:
        distributed.backend_for("nccl", cpu)
    assert str(caught.value) == (
        "--ddp-backend nccl needs CUDA GPUs, but this run computes on cpu; use --ddp-backend "
        "gloo (or auto), or a CUDA --device") and caught.value.agreed


@pytest.mark.mutation
def test_torchruns_launch_id_and_restart_count(monkeypatch):
    assert distributed.launch_id() is None and distributed.restart_count() == 0
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert distributed.launch_id() == "abc" and distributed.restart_count() == 2


@pytest.mark.mutation
@pytest.mark.parametrize("message, peer, cause", [
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
     "[127.0.0.1]:1234. Stop.", True, "Connection closed by peer [127.0.0.1]:1234"),
    ("NCCL error in: x.cpp:1, unhandled system error", True,
     "NCCL error in: x.cpp:1, unhandled system error"),
    ("Connection reset by peer", True, "Connection reset by peer"),
    ("gloo transport closed", True, "gloo transport closed"),
    ("mat1 and mat2 shapes cannot be multiplied", False,
     "mat1 and mat2 shapes cannot be multiplied"),
])
def test_a_lost_peer_is_told_from_a_programming_error(message, peer, cause):
    err = RuntimeError(message)
    assert distributed._is_peer_failure(err) == peer
    assert distributed._cause(err) == cause


@pytest.mark.mutation
def test_a_dist_error_is_a_peer_failure():
    assert distributed._is_peer_failure(dist.DistError("anything"))


@pytest.mark.mutation
@pytest.mark.parametrize("alive, named", [([0, 1, 2], "contact with a rank"),
                                          ([0, 2], "rank 1"), ([0], "rank 1, 2")])
def test_the_ranks_that_did_not_check_in_are_named(monkeypatch, alive, named):
    store = dist.HashStore()
    for rank in alive:
        if rank:
            store.set(f"vaelab/alive/{rank}", "1")
    torchrun_environment(monkeypatch, 0, 3)
    monkeypatch.setattr(distributed, "CHECK_IN_SECONDS", 0.3)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    before = signal.getsignal(signal.SIGTERM)
    assert distributed._lost_ranks() == named
    assert store.check(["vaelab/alive/0"])  # it checked in itself
    assert signal.getsignal(signal.SIGTERM) is before  # ignored while waiting only


class LateStore:
    """A store where rank 1 checks in only after the survivor's first two looks (so a
    survivor that does not wait, or stops waiting too soon, names a rank), and which notes
    whether SIGTERM was ignored while it was asked."""

    def __init__(self):
        self.looks, self.keys, self.sigterm = 0, {"vaelab/alive/1"}, []

    def set(self, key, value):
        self.keys.add(key)

    def check(self, keys):
        self.looks += 1
        self.sigterm.append(signal.getsignal(signal.SIGTERM))
        return self.looks > 2 and set(keys) <= self.keys


@pytest.mark.mutation
def test_a_rank_that_checks_in_late_is_waited_for_with_signals_held(monkeypatch):
    store = LateStore()
    torchrun_environment(monkeypatch, 0, 2)
    monkeypatch.setattr(distributed, "CHECK_IN_SECONDS", 60)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    assert distributed._lost_ranks() == "contact with a rank"
    assert store.looks >= 3 and set(store.sigterm) == {signal.SIG_IGN}


@pytest.mark.mutation
def test_off_the_main_thread_the_signals_are_left_alone(monkeypatch):
    import threading

    store, named = LateStore(), []
    torchrun_environment(monkeypatch, 0, 2)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    worker = threading.Thread(target=lambda: named.append(distributed._lost_ranks()))
    worker.start()
    worker.join()
    assert named == ["contact with a rank"]
    assert signal.SIG_IGN not in store.sigterm


@pytest.mark.mutation
def test_a_lost_store_means_rank_0s_node(monkeypatch):
    torchrun_environment(monkeypatch, 1, 2)

    def gone():
        raise RuntimeError("store is gone")

    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", gone)
    assert distributed._lost_ranks() == "rank 0's node"


# ---- a real process group of one, in this process: fast -----------------------------------

@contextlib.contextmanager
def group_of_one(monkeypatch, timeout: float = 20):
    torchrun_environment(monkeypatch, 0, 1)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with distributed.process_group(torch.device("cpu"), "auto", timeout) as device:
        yield device
    assert not distributed.active()  # left the group


@pytest.mark.mutation
def test_outside_torchrun_no_group_is_joined():
    with distributed.process_group(torch.device("cpu"), "auto", 5) as device:
        assert device == torch.device("cpu") and not distributed.active()


def refuse():
    raise VaelabError("refused")


@pytest.mark.mutation
def test_a_group_of_one_runs_the_writers_actions_once_and_shares_its_errors(monkeypatch):
    calls = []
    with group_of_one(monkeypatch) as device:
        assert device == torch.device("cpu") and distributed.active()
        assert distributed.from_writer(lambda: calls.append("from") or 7) == 7
        assert distributed.writer_first(lambda: calls.append("first") or 8) == 8
        with pytest.raises(VaelabError, match="^refused$") as caught:
            distributed.from_writer(refuse)
        assert caught.value.agreed
        distributed.barrier()
        entered = []

        @contextlib.contextmanager
        def lock():
            entered.append("in")
            yield
            entered.append("out")

        with distributed.writer_holds(lock):
            assert entered == ["in"]
        assert entered == ["in", "out"]
        wrapped = distributed.wrap(torch.nn.Linear(2, 1), device)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    assert calls == ["from", "first"]  # rank 0 runs writer_first's action once, not twice
    assert distributed.from_writer(lambda: 9) == 9  # alone again: just runs it
    plain = torch.nn.Linear(2, 1)
    assert distributed.wrap(plain, torch.device("cpu")) is plain


@pytest.mark.mutation
def test_a_peer_failure_inside_the_group_is_one_line_naming_the_resume(monkeypatch):
    monkeypatch.setattr(distributed, "CHECK_IN_SECONDS", 0.3)
    with pytest.raises(distributed.PeerLost) as caught:
        with group_of_one(monkeypatch):
            raise RuntimeError("[pair.cc:1] Connection reset by peer. More advice")
    assert str(caught.value) == (
        "rank 0 lost contact with a rank of the process group (Connection reset by peer); the "
        "run's last checkpoint is intact: `vaelab train --resume RUN` continues from it")
    with pytest.raises(RuntimeError, match="^shapes$"):  # a programming error stays itself
        with group_of_one(monkeypatch):
            raise RuntimeError("shapes")


@pytest.mark.mutation
def test_an_unreachable_rendezvous_is_one_line(monkeypatch):
    torchrun_environment(monkeypatch, 1, 2)
    port = free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    with pytest.raises(VaelabError) as caught:
        with distributed.process_group(torch.device("cpu"), "gloo", 1):
            pass
    assert str(caught.value).startswith(
        f"rank 1 could not join the process group at 127.0.0.1:{port} within 1 s (")
    assert str(caught.value).endswith("start every node, check the rendezvous endpoint, or "
                                      "raise --ddp-timeout")


# ---- two real processes -----------------------------------------------------------------

def _rank_main(rank: int, port: int, out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    values = torch.arange(7, dtype=torch.float64) ** 2
    weight = torch.ones((), dtype=torch.float64, requires_grad=True)
    with distributed.process_group(torch.device("cpu"), "gloo", 60):
        start, stop = distributed.share(len(values))
        objective = distributed.rank_mean(weight * values[start:stop], len(values))
        objective.backward()
        gradient = distributed.all_sum(weight.grad) / 2  # what DDP's averaging makes of it
        order = distributed.gathered([(index, rank) for index in range(4)
                                      if distributed.owns(index)])
        torch.save({"slice": (start, stop), "gradient": gradient, "order": order},
                   f"{out}/rank{rank}.pt")


def test_two_real_ranks_split_a_short_batch_and_average_to_its_mean(tmp_path):
    """7 values on 2 ranks (4 and 3): the averaged gradient of the objective with respect to a
    common weight is the batch's mean, 13 (0 + 1 + 4 + ... + 36 = 91, over 7)."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [r["slice"] for r in results] == [(0, 4), (4, 7)]
    for r in results:
        assert abs(r["gradient"].item() - 13.0) <= 7 * torch.finfo(torch.float64).eps * 36
        assert r["order"] == [0, 1, 0, 1]  # batch i computed by rank i % 2, in batch order


@pytest.mark.mutation
@pytest.mark.parametrize("rank", [0, 1])
def test_writer_first_lets_rank_0_finish_before_the_others_start(emulated, monkeypatch, rank):
    """Rank 0 runs the action, then its outcome is broadcast; the others run it only after
    that broadcast returned (a stand-in records the order)."""
    emulated(rank, 2)
    events = []

    def broadcast_object_list(outcome, src=0):
        events.append("broadcast")
        if rank:
            outcome[0] = ("ok", "rank 0's result")

    monkeypatch.setattr(dist, "broadcast_object_list", broadcast_object_list)
    result = distributed.writer_first(lambda: events.append("action") or f"rank {rank}'s")
    assert events == (["action", "broadcast"] if rank == 0 else ["broadcast", "action"])
    assert result == f"rank {rank}'s"
