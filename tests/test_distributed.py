"""torchrun: 2 processes compute what 1 does, and a fault or bad input ends in one line.

Each test launches real processes (`python -m torch.distributed.run ... -m vaelab train`), gloo on
127.0.0.1, on 449 real MNIST training and 255 validation images: 7 batches of 64 and a last one
of a single image, which leaves rank 1 with none (the objective's scaling must hold there too),
and validation batches that split unevenly. Each launch runs under a timeout, so that a hang
fails its test rather than the suite. The one-process reference
is trained in this process. NCCL is not tested here: it needs GPUs.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vaelab import Config, train
from vaelab.cli import main
from vaelab.evaluate import write_evaluation
from vaelab.models import build_model
from vaelab.runs import LAST, LOCK, read_metrics
from vaelab.training import resume
from vaelab.training_state import set_seed

REPO = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).with_name("signal_hook.py")
SLICE = ("--limit-train", 449, "--limit-val", 255, "--device", "cpu", "--quiet")
LAUNCH_SECONDS = 180  # a launch that hangs is killed and fails its test
# The world size changes only the order of float additions: a float32 sum of a batch's 64
# per-image terms may move by up to 64 eps32 of its size when its order changes (the worst
# case of recursive summation), and each of the 16 Adam steps (2 epochs of 8 batches) passes
# such a change on to the weights once, about in proportion (Adam's step is normalised):
# 16 x 64 x eps32 = 1.2e-4. Measured here: 8e-7 on the metrics, up to 1.2e-5 on the weights.
RTOL = 16 * 64 * torch.finfo(torch.float32).eps
COLUMNS = ("train_loss", "val_loss", "train_recon", "train_kl", "val_recon", "val_kl",
           "train_batch_loss", "val_batch_loss", "step")


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    # PYTHONFAULTHANDLER: a rank that aborts or crashes prints every thread's Python stack,
    # so that a failure seen once (a rank's SIGABRT at exit, once in many launches) explains
    # itself in the assertion's message
    return {**os.environ, "PYTHONPATH": path, "VAELAB_DATA_DIR": str(data_dir),
            "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **extra}


def torchrun_command(*args, nproc: int = 2, hook: tuple = (), launch: tuple = ("--standalone",)):
    program = [str(HOOK), *map(str, hook)] if hook else ["-m", "vaelab"]
    return [sys.executable, "-m", "torch.distributed.run", *map(str, launch), "--nproc-per-node",
            str(nproc), *program, *map(str, args)]


def torchrun(data_dir: Path, *args, nproc: int = 2, hook: tuple = (), launch=("--standalone",),
             **env: str) -> subprocess.CompletedProcess:
    """torchrun in a session of its own: a hook that signals torchrun's group spares pytest."""
    return subprocess.run(torchrun_command(*args, nproc=nproc, hook=hook, launch=launch),
                          env=environment(data_dir, **env), capture_output=True, text=True,
                          timeout=LAUNCH_SECONDS, start_new_session=True)


def vaelab_lines(stderr: str) -> list[str]:
    """vaelab's own lines (torchrun adds its warnings and its failure summary)."""
    return [line for line in stderr.splitlines() if line.startswith("vaelab:")]


def assert_same_metrics(run: Path, reference: Path) -> None:
    ours, theirs = read_metrics(run), read_metrics(reference)
    assert [row["epoch"] for row in ours] == [row["epoch"] for row in theirs]
    for mine, wanted in zip(ours, theirs):
        for column in COLUMNS:
            assert mine[column] == pytest.approx(wanted[column], rel=RTOL), (mine["epoch"], column)


def weights(run: Path) -> torch.Tensor:
    model = torch.load(run / LAST, weights_only=False)["model"]
    return torch.cat([tensor.flatten() for tensor in model.values()])


def assert_same_weights(run: Path, reference: Path) -> None:
    """Within RTOL of how far training moved the weights from their seeded start (measured
    4e-7 to 1.2e-5 here for 2 processes against 1): the same weights up to addition order."""
    set_seed(0)
    start = torch.cat([p.detach().flatten() for p in build_model(Config()).parameters()])
    travelled = (weights(reference) - start).norm()
    assert (weights(run) - weights(reference)).norm() <= RTOL * travelled


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory) -> Path:
    """The reference: 2 epochs in one process."""
    config = Config(data_dir=str(data_dir), limit_train=449, limit_val=255, epochs=2,
                    device="cpu")
    return train(config, tmp_path_factory.mktemp("one") / "run", progress=False)


@pytest.fixture(scope="module")
def two_processes(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("two") / "run"
    result = torchrun(data_dir, "train", "--out", run, "--epochs", 2, *SLICE)
    assert result.returncode == 0, result.stderr[-8000:]
    assert "run saved in" in result.stdout and result.stdout.count("epoch  train_loss") == 1
    return run


def test_two_processes_compute_what_one_does(one_process, two_processes):
    assert_same_metrics(two_processes, one_process)
    assert_same_weights(two_processes, one_process)
    assert {path.name for path in two_processes.iterdir()} == {  # one writer: no per-rank files
        ".lock", "config.json", "metrics.csv", "last.pt", "best.pt", "report.html", "figures"}


def test_tensorboard_under_two_processes_logs_what_one_process_does(data_dir, tmp_path):
    """Rank 0 alone writes one event file, with every step once, and each step's terms are
    the whole global batch's (the ranks' sums added), as in one process."""
    pytest.importorskip("tensorboard")
    from test_tensorboard import events, scalars

    config = Config(data_dir=str(data_dir), limit_train=449, limit_val=255, epochs=2,
                    device="cpu", logger="tensorboard")
    alone = train(config, tmp_path / "one", progress=False)
    result = torchrun(data_dir, "train", "--out", tmp_path / "two", "--epochs", 2, *SLICE,
                      "--logger", "tensorboard")
    assert result.returncode == 0, result.stderr[-8000:]
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1
    ours, theirs = events(tmp_path / "two"), events(alone)
    assert ours.Tags() == theirs.Tags()
    for tag in ours.Tags()["scalars"]:
        if tag.endswith("seconds"):
            continue
        mine, wanted = scalars(ours, tag), scalars(theirs, tag)
        assert [step for step, _ in mine] == [step for step, _ in wanted] != []
        assert [value for _, value in mine] == pytest.approx([value for _, value in wanted],
                                                             rel=RTOL), tag


def test_evaluate_on_two_processes_writes_what_one_does(data_dir, one_process, tmp_path):
    """The IW estimate, its batches dealt to 2 ranks: the same figures, in one eval.json."""
    run = tmp_path / "run"
    shutil.copytree(one_process, run)
    alone, _ = write_evaluation(str(run), samples=50, limit=64, progress=False)
    result = torchrun(data_dir, "evaluate", run, "--iw-samples", 50, "--limit", 64, "--quiet")
    assert result.returncode == 0, result.stderr[-8000:]
    assert result.stdout.count("written to") == 1
    together = json.loads((run / "eval.json").read_text())
    for key in ("nll", "nll_stderr", "neg_elbo", "recon", "kl", "effective_samples_median"):
        assert together[key] == pytest.approx(alone[key], rel=RTOL), key
    assert (together["images"], together["active_units"]) == (64, alone["active_units"])


@pytest.mark.slow  # the killed-rank test below resumes with 1 process a 2-process epoch too
def test_two_processes_then_one_resumes_as_if_one_ran_throughout(data_dir, one_process,
                                                                  tmp_path):
    run = tmp_path / "run"
    result = torchrun(data_dir, "train", "--out", run, "--epochs", 1, *SLICE)
    assert result.returncode == 0, result.stderr[-8000:]
    resume(run, epochs=2, progress=False)
    assert_same_metrics(run, one_process)
    assert_same_weights(run, one_process)


def test_sigterm_to_torchrun_mid_epoch_then_resume_equals_an_uninterrupted_run(
        data_dir, two_processes, tmp_path):
    """Rank 0 signals torchrun at its 3rd batch and waits; torchrun forwards SIGTERM to both
    ranks, which agree to stop after batch 3. Same world size: the resumed run is identical."""
    run = tmp_path / "run"
    stopped = torchrun(data_dir, "train", "--out", run, "--epochs", 2, *SLICE,
                       hook=("vaelab.training:_step", 3, "TERM"), HOOK_RANK="0", HOOK_PARENT="1")
    assert stopped.returncode != 0
    assert vaelab_lines(stopped.stderr) == [
        f"vaelab: stopped by SIGTERM in epoch 1 after batch 3; {run / LAST} holds the run so far. "
        f"Resume with: vaelab train --resume {run}"]
    assert torch.load(run / LAST, weights_only=False)["partial"]["next_batch"] == 3
    resumed = torchrun(data_dir, "train", "--resume", run, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    assert read_metrics(run) == [{**row, "train_seconds": mine["train_seconds"],
                                  "epoch_seconds": mine["epoch_seconds"]}
                                 for row, mine in zip(read_metrics(two_processes),
                                                      read_metrics(run))]
    assert torch.equal(weights(run), weights(two_processes))


def test_ctrl_c_reaching_torchrun_and_every_rank_stops_them_after_one_batch(data_dir, tmp_path):
    """A terminal's Ctrl-C reaches every process, and torchrun forwards it once more: that
    second SIGINT must not cut the checkpoint short."""
    run = tmp_path / "run"
    stopped = torchrun(data_dir, "train", "--out", run, "--epochs", 1, *SLICE,
                       hook=("vaelab.training:_step", 2, "INT"), HOOK_RANK="1",
                       HOOK_PARENT="group")
    assert stopped.returncode != 0
    assert vaelab_lines(stopped.stderr) == [
        f"vaelab: stopped by SIGINT in epoch 1 after batch 2; {run / LAST} holds the run so far. "
        f"Resume with: vaelab train --resume {run}"]
    assert torch.load(run / LAST, weights_only=False)["partial"]["next_batch"] == 2


def test_a_killed_rank_ends_the_run_at_once_with_one_line_and_it_resumes(data_dir, one_process,
                                                                         tmp_path):
    """Rank 1 is SIGKILLed at its 2nd batch of epoch 2; rank 0 names it and exits, long before
    its --ddp-timeout. One process then resumes from epoch 1's checkpoint, which 2 processes
    wrote, and ends where 2 epochs in one process end."""
    run = tmp_path / "run"
    started = time.monotonic()
    result = torchrun(data_dir, "train", "--out", run, "--epochs", 2, "--ddp-timeout", 600,
                      *SLICE, hook=("vaelab.training:_step", 10, "KILL"), HOOK_RANK="1")
    assert time.monotonic() - started < LAUNCH_SECONDS / 3
    assert result.returncode != 0
    [line] = vaelab_lines(result.stderr)
    assert line.startswith("vaelab: error: rank 0 lost rank 1 of the process group (")
    assert [row["epoch"] for row in read_metrics(run)] == [1]
    resume(run, progress=False)
    assert_same_metrics(run, one_process)
    assert_same_weights(run, one_process)


@pytest.mark.slow
def test_a_group_restarted_by_torchrun_resumes_its_run_by_itself(data_dir, one_process,
                                                                 tmp_path):
    run = tmp_path / "run"
    result = torchrun(data_dir, "train", "--out", run, "--epochs", 2, *SLICE,
                      hook=("vaelab.training:_step", 10, "KILL"), HOOK_RANK="1",
                      launch=("--standalone", "--max-restarts", "1"))
    assert result.returncode == 0, result.stderr[-8000:]
    assert_same_metrics(run, one_process)
    assert_same_weights(run, one_process)


@pytest.mark.slow
def test_dynamic_binarization_and_the_iwae_bound_on_two_processes(data_dir, tmp_path):
    """Their draws (a Bernoulli per pixel, K noise samples per image) are sliced too."""
    config = Config(data_dir=str(data_dir), limit_train=449, limit_val=255, device="cpu",
                    binarize="dynamic", iw_train=3, epochs=1)
    alone = train(config, tmp_path / "one", progress=False)
    result = torchrun(data_dir, "train", "--out", tmp_path / "two", "--binarize", "dynamic",
                      "--iw-train", 3, "--epochs", 1, *SLICE)
    assert result.returncode == 0, result.stderr[-8000:]
    assert_same_metrics(tmp_path / "two", alone)
    assert_same_weights(tmp_path / "two", alone)


@pytest.mark.slow
def test_two_nodes_on_localhost_agree_with_one_process(data_dir, one_process, tmp_path):
    run, port = tmp_path / "run", free_port()
    nodes = [subprocess.Popen(
        torchrun_command("train", "--out", run, "--epochs", 2, *SLICE, nproc=1, launch=(
            "--nnodes", 2, "--node-rank", rank, "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"127.0.0.1:{port}", "--rdzv-id", f"vaelab-test-{port}")),
        env=environment(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=LAUNCH_SECONDS) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert sum("run saved in" in out for out, _ in outputs) == 1  # one writer
    assert_same_metrics(run, one_process)
    assert_same_weights(run, one_process)


def as_rank(data_dir: Path, rank: int, *args) -> subprocess.CompletedProcess:
    """`vaelab` as rank RANK of 2 in torchrun's environment, with no rank 0 to meet."""
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], capture_output=True,
                          text=True, timeout=LAUNCH_SECONDS,
                          env=environment(data_dir, RANK=str(rank), WORLD_SIZE="2",
                                          LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                                          MASTER_PORT=str(free_port())))


def test_a_batch_size_that_does_not_divide_is_one_line(data_dir, tmp_path):
    """Checked before the processes meet: rank 0 of 2 alone shows it (the others stay quiet)."""
    result = as_rank(data_dir, 0, "train", "--out", tmp_path / "run", "--batch-size", 63,
                     *SLICE)
    assert result.returncode == 1
    assert vaelab_lines(result.stderr) == [
        "vaelab: error: batch_size = 63 does not divide by the 2 processes (--batch-size): each "
        "global batch is split evenly across them; use a multiple of 2"]
    assert not (tmp_path / "run").exists()


def test_resuming_a_run_another_process_holds_is_one_line(data_dir, one_process, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_process, run)
    with open(run / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        result = torchrun(data_dir, "train", "--resume", run, "--epochs", 3, "--quiet")
    assert result.returncode != 0
    assert vaelab_lines(result.stderr) == [
        f"vaelab: error: {run} is in use by another vaelab process (pid {os.getpid()}); wait for "
        "it to finish or stop it, or choose another --out"]
    assert read_metrics(run) == read_metrics(one_process)


def test_an_unreachable_rendezvous_gives_up_after_the_timeout(data_dir, tmp_path):
    """Rank 1 of 2, told to meet rank 0 where nobody listens: one line after --ddp-timeout."""
    started = time.monotonic()
    result = as_rank(data_dir, 1, "train", "--out", tmp_path / "run", "--ddp-timeout", 3, *SLICE)
    assert time.monotonic() - started < 3 + 30  # the timeout, plus starting Python and torch
    assert result.returncode == 1
    [line] = vaelab_lines(result.stderr)
    assert line.startswith("vaelab: error: rank 1 could not join the process group at "
                           "127.0.0.1:") and "within 3 s" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_nccl_without_cuda_is_one_line(capsys, data_dir, tmp_path, device):
    if device == "auto" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto resolves to a GPU")
    code = main(["train", "--out", str(tmp_path / "run"), "--ddp-backend", "nccl",
                 "--device", device, *map(str, SLICE[:-3])])
    assert code == 1
    assert capsys.readouterr().err == (
        "vaelab: error: --ddp-backend nccl needs CUDA GPUs, but this run computes on cpu; use "
        "--ddp-backend gloo (or auto), or a CUDA --device\n")


SPY = Path(__file__).with_name("rank_spy.py")


def spied_torchrun(data_dir: Path, out: Path, *args, **env: str) -> subprocess.CompletedProcess:
    """torchrun of tests/rank_spy.py: each rank records its optimizer steps and timed calls."""
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(SPY), str(out), *map(str, args)]
    return subprocess.run(command, env=environment(data_dir, **env), capture_output=True,
                          text=True, timeout=LAUNCH_SECONDS, start_new_session=True)


def spy_records(out: Path) -> list[dict]:
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def test_a_nan_on_one_rank_stops_every_rank_before_the_update(data_dir, tmp_path):
    """Rank 1's 3rd objective is NaN (rank 0's is finite): both ranks refuse that step, each
    having taken exactly the 2 optimizer steps before it (a spy counts Adam.step calls), and
    one line says why."""
    run = tmp_path / "run"
    result = spied_torchrun(data_dir, tmp_path / "spy", "train", "--out", run, "--epochs", 1,
                            *SLICE, SPY_NAN_RANK="1", SPY_NAN_AT="3")
    assert result.returncode != 0
    [line] = vaelab_lines(result.stderr)
    # rank 0 prints it: its own loss is finite, but DDP averaged rank 1's NaN gradient in
    assert line.startswith("vaelab: error: the gradient became nan in epoch 1, batch 3; "
                           "last.pt and best.pt keep epoch 0."), line
    assert [record["steps"] for record in spy_records(tmp_path / "spy")] == [2, 2]
    assert not (run / LAST).exists()


def test_rank_0_builds_the_data_cache_while_the_other_waits(data_dir, tmp_path):
    """A folder of images trained on by 2 ranks with an empty cache: rank 0 alone decodes it
    and writes the cache; rank 1 decodes nothing and first reads the cache after rank 0's
    write ended (CLOCK_MONOTONIC is one clock for every process of the machine)."""
    from test_images import write_mnist_folder

    folder = write_mnist_folder(data_dir, tmp_path / "pngs", "--limit-train", 120,
                                "--limit-val", 40)
    cache = tmp_path / "cache"
    result = spied_torchrun(data_dir, tmp_path / "spy", "train", "--data", folder, "--out",
                            tmp_path / "run", "--epochs", 1, "--device", "cpu", "--quiet",
                            VAELAB_CACHE_DIR=str(cache),
                            SPY_CALLS="vaelab.images:_decode_all,vaelab.cache:write,"
                                      "vaelab.cache:read")
    assert result.returncode == 0, result.stderr[-8000:]
    zero, one = (record["calls"] for record in spy_records(tmp_path / "spy"))
    assert len(zero["vaelab.images:_decode_all"]) == 1 and len(zero["vaelab.cache:write"]) == 1
    assert one["vaelab.images:_decode_all"] == [] and one["vaelab.cache:write"] == []
    written = zero["vaelab.cache:write"][0][1]
    assert min(started for started, _ in one["vaelab.cache:read"]) >= written
    assert len(list(cache.glob("images-*.pt"))) == 1
