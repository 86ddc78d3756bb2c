"""Nothing lost: signals, SIGKILL, NaNs, two processes on one run, hostile checkpoints."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import without_timings

import vaelab.training as training
from vaelab import load_run, resume, train
from vaelab.checkpoint import load_checkpoint
from vaelab.errors import CheckpointError, NonFiniteLoss, VaelabError


def start_training(run, config, *extra):
    """`vaelab train` in its own process, with the same settings as `config`."""
    args = [sys.executable, "-m", "vaelab", "train", "--out", str(run), "--quiet",
            "--data-dir", config.data_dir, "--device", "cpu", "--epochs", str(config.epochs),
            "--batch-size", str(config.batch_size), "--limit-train", str(config.limit_train),
            "--limit-val", str(config.limit_val), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def epochs_logged(run):
    path = run / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


def assert_same_run(a, b):
    ra, rb = load_run(a, "last"), load_run(b, "last")
    assert without_timings(ra.metrics) == without_timings(rb.metrics)
    assert len(ra.metrics) == ra.config.epochs
    for (name, x), y in zip(ra.model.state_dict().items(), rb.model.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.fixture(scope="module")
def long_config(data_dir):
    """Epochs of 256 batches: long enough that a signal lands inside one."""
    from vaelab import Config
    return Config(data_dir=str(data_dir), limit_train=8192, limit_val=256, batch_size=32,
                  epochs=3, device="cpu")


@pytest.fixture(scope="module")
def uninterrupted(long_config, tmp_path_factory):
    return train(long_config, tmp_path_factory.mktemp("reference") / "run", progress=False)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_epoch_saves_and_resume_finishes_identically(
        long_config, uninterrupted, tmp_path, signum, code):
    run = tmp_path / "run"
    process = start_training(run, long_config)
    wait_for(lambda: epochs_logged(run) >= 1, process)
    time.sleep(0.5)  # into epoch 2, which lasts seconds; the boundary case is checked too
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert f"Resume with: vaelab train --resume {run}" in err
    last_line = err.strip().splitlines()[-1]
    saved = load_checkpoint(run / "last.pt")
    assert saved["epoch"] == 1
    if last_line.startswith(f"vaelab: stopped by {signum.name} in epoch 2"):
        assert saved["partial"]["next_batch"] > 0  # a mid-epoch checkpoint
    else:  # the signal landed between epochs on a slow machine
        assert last_line.startswith(f"vaelab: stopped by {signum.name} before epoch 2"), last_line
    assert epochs_logged(run) == 1
    resume(run, progress=False)
    assert_same_run(uninterrupted, run)


def test_sigkill_mid_epoch_resumes_from_the_last_checkpoint(long_config, uninterrupted, tmp_path):
    run = tmp_path / "run"
    process = start_training(run, long_config)
    wait_for(lambda: epochs_logged(run) >= 1, process)
    process.kill()
    process.communicate(timeout=60)
    assert load_checkpoint(run / "last.pt")["epoch"] == epochs_logged(run) == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    resume(run, progress=False)
    assert_same_run(uninterrupted, run)


def test_metrics_are_reconciled_with_the_checkpoint_on_resume(tiny_config, tmp_path):
    run = train(tiny_config.replace(epochs=1), tmp_path / "run")
    metrics = (run / "metrics.csv").read_text()
    # As if killed after writing a metrics row whose checkpoint never landed:
    extra_row = metrics.splitlines()[1].replace("1,", "2,", 1)
    (run / "metrics.csv").write_text(metrics + extra_row + "\n")
    resume(run, epochs=1)
    assert (run / "metrics.csv").read_text() == metrics


def test_a_nan_loss_stops_with_epoch_and_batch_and_keeps_good_checkpoints(
        tiny_config, tmp_path, monkeypatch):
    run = train(tiny_config.replace(epochs=1), tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.csv")}
    real, calls = training.elbo_terms, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        terms = real(*args, **kwargs)
        return terms._replace(objective=terms.objective * float("nan")) if len(calls) == 5 \
            else terms

    monkeypatch.setattr(training, "elbo_terms", poisoned)
    with pytest.raises(NonFiniteLoss, match="loss became nan in epoch 2, batch 5.*keep epoch 1"
                                            ".*--lr.*--grad-clip"):
        resume(run, epochs=2)
    assert {name: (run / name).read_bytes() for name in before} == before


def test_grad_clip_bounds_the_update(tiny_config, tmp_path, monkeypatch):
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        total = real(parameters, max_norm, *args, **kwargs)
        norms.append((total.item(), torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in parameters])).item()))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train(tiny_config.replace(grad_clip=1.0), tmp_path / "run")
    assert norms and all(after <= 1.0 + 1e-4 for _, after in norms)
    assert any(before > 1.0 for before, _ in norms)  # clipping did something


def test_two_processes_on_one_run_directory(long_config, tmp_path):
    run = tmp_path / "run"
    first = start_training(run, long_config.replace(epochs=50))
    wait_for(lambda: epochs_logged(run) >= 1, first)
    for extra in (["--force"], []):
        second = subprocess.run([sys.executable, "-m", "vaelab", "train", "--quiet",
                                 *(["--out", str(run), *extra] if extra
                                   else ["--resume", str(run)])],
                                capture_output=True, text=True)
        assert second.returncode == 1
        assert f"is in use by another vaelab process (pid {first.pid})" in second.stderr
    first.kill()  # its lock dies with it and is taken over
    first.communicate(timeout=60)
    done = load_checkpoint(run / "last.pt")["epoch"]
    resume(run, epochs=done + 1, progress=False)
    assert load_checkpoint(run / "last.pt")["epoch"] == done + 1


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tiny_config, tmp_path):
    run = train(tiny_config, tmp_path / "run")
    marker = tmp_path / "code-ran"
    good = (run / "best.pt").read_bytes()
    payload = torch.load(run / "last.pt", weights_only=True)
    torch.save({**payload, "extra": RunsCode(marker)}, run / "last.pt")
    with pytest.raises(CheckpointError, match="not a loadable vaelab checkpoint"):
        resume(run, epochs=2)
    with pytest.raises(CheckpointError, match="not a loadable vaelab checkpoint"):
        load_run(run, "last")
    assert not marker.exists() and (run / "best.pt").read_bytes() == good


def test_checkpoint_format_version_is_checked(tiny_config, tmp_path):
    run = train(tiny_config, tmp_path / "run")
    payload = torch.load(run / "last.pt", weights_only=True)
    torch.save({**payload, "format_version": 99}, run / "last.pt")
    with pytest.raises(CheckpointError, match="format 99 .* reads format 1"):
        load_run(run, "last")


def test_a_full_disk_is_reported_before_training(tiny_config, tmp_path, monkeypatch):
    import errno

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(VaelabError, match="cannot write .* MB of checkpoints .* disk is full"):
        train(tiny_config, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


def test_a_real_full_filesystem(tiny_config, tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched test covers it")
    try:
        with pytest.raises(VaelabError, match="disk is full"):
            train(tiny_config, mount / "run")
        assert sorted(p.name for p in (mount / "run").iterdir()) == [".lock"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(tiny_config, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # what a SIGKILL in epoch 1 leaves behind
    with pytest.raises(VaelabError, match="before its first checkpoint; pass --force"):
        train(tiny_config, run)
    train(tiny_config, run, force=True)
    assert (run / "last.pt").is_file()
