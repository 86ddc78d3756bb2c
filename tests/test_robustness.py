"""Nothing lost: signals, SIGKILL, NaNs, two processes on one run, hostile checkpoints."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import without_timings

import vaelab.models.vae as vae_module
import vaelab.training as training
from vaelab import load_run, resume, train
from vaelab.checkpoint import load_checkpoint
from vaelab.errors import CheckpointError, NonFiniteLoss, TrainingInterrupted, VaelabError

HOOK = Path(__file__).with_name("signal_hook.py")


def training_args(run, config, *extra):
    """`vaelab train` arguments with the same settings as `config`."""
    return ["train", "--out", str(run), "--quiet", "--data-dir", config.data_dir, "--device",
            "cpu", "--epochs", str(config.epochs), "--batch-size", str(config.batch_size),
            "--limit-train", str(config.limit_train), "--limit-val", str(config.limit_val),
            *extra]


def train_with_hook(run, config, target, at, action):
    """`vaelab train` in its own process, which sends itself ACTION on the AT-th call of
    TARGET (tests/signal_hook.py): the signal lands exactly where the test says."""
    return subprocess.run([sys.executable, str(HOOK), target, str(at), action,
                           *training_args(run, config)], capture_output=True, text=True,
                          timeout=300)


def epochs_logged(run):
    path = run / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


def assert_same_run(a, b):
    ra, rb = load_run(a, "last"), load_run(b, "last")
    assert without_timings(ra.metrics) == without_timings(rb.metrics)
    assert len(ra.metrics) == ra.config.epochs
    for (name, x), y in zip(ra.model.state_dict().items(), rb.model.state_dict().values()):
        assert torch.equal(x, y), name


BATCHES = 64  # per epoch of long_config


@pytest.fixture(scope="module")
def long_config(data_dir):
    """Three epochs of 64 batches, so that a hook can stop one anywhere."""
    from vaelab import Config
    return Config(data_dir=str(data_dir), limit_train=32 * BATCHES, limit_val=256,
                  batch_size=32, epochs=3, device="cpu")


@pytest.fixture(scope="module")
def uninterrupted(long_config, tmp_path_factory):
    return train(long_config, tmp_path_factory.mktemp("reference") / "run", progress=False)


# README "What happens when...": Ctrl-C or SIGTERM while training; "tested on CPU".
@pytest.mark.parametrize("signum, step, message", [
    (signal.SIGINT, BATCHES + 20, "in epoch 2 after batch 20"),
    (signal.SIGTERM, BATCHES + 20, "in epoch 2 after batch 20"),
    (signal.SIGTERM, BATCHES, "before epoch 2"),  # the last batch of epoch 1
])
def test_a_signal_saves_where_it_landed_and_resume_finishes_identically(
        long_config, uninterrupted, tmp_path, signum, step, message):
    run = tmp_path / "run"
    result = train_with_hook(run, long_config, "vaelab.training:_step", step, signum.name[3:])
    assert result.returncode == 128 + signum, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"vaelab: stopped by {signum.name} {message}; {run / 'last.pt'} holds the run so far. "
        f"Resume with: vaelab train --resume {run}")
    saved = load_checkpoint(run / "last.pt")
    assert saved["epoch"] == epochs_logged(run) == 1 and saved["step"] == step
    mid_epoch = step % BATCHES
    assert (saved["partial"] or {}).get("next_batch", 0) == mid_epoch
    resume(run, progress=False)
    assert_same_run(uninterrupted, run)


# README: "A second Ctrl-C stops at once; the files are still intact."
def test_a_second_ctrl_c_stops_at_once_and_keeps_the_files(long_config, tmp_path):
    run = tmp_path / "run"
    result = train_with_hook(run, long_config, "vaelab.training:_step", BATCHES + 5, "INT,INT")
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("vaelab: train interrupted")
    saved = load_checkpoint(run / "last.pt")
    assert saved["epoch"] == 1 and saved["partial"] is None  # epoch 1's, untouched
    resume(run, progress=False)
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


# README: "lose the process (SIGKILL, power cut)": every file replaced atomically.
def test_sigkill_in_the_middle_of_a_checkpoint_write(long_config, uninterrupted, tmp_path):
    run = tmp_path / "run"
    # torch.save calls: 1 best.pt and 2 last.pt of epoch 1; 3 is epoch 2's first save.
    result = train_with_hook(run, long_config, "torch:save", 3, "HALF-WRITTEN")
    assert result.returncode == -signal.SIGKILL
    half_written = [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(half_written) == 1 and half_written[0].stat().st_size > 0  # killed mid-write
    assert load_checkpoint(run / "last.pt")["epoch"] == epochs_logged(run) == 1
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    resume(run, progress=False)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # cleared under the lock
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
    real, calls = vae_module.elbo_terms, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        terms = real(*args, **kwargs)
        return terms._replace(objective=terms.objective * float("nan")) if len(calls) == 5 \
            else terms

    monkeypatch.setattr(vae_module, "elbo_terms", poisoned)
    with pytest.raises(NonFiniteLoss, match="loss became nan in epoch 2, batch 5.*keep epoch 1"
                                            ".*--lr.*--grad-clip"):
        resume(run, epochs=2)
    assert {name: (run / name).read_bytes() for name in before} == before


# README: "hit a NaN or infinite loss or gradient": the gradient case.
def test_a_nan_gradient_with_a_finite_loss_stops_before_the_update(tiny_config, tmp_path,
                                                                   monkeypatch):
    run = train(tiny_config.replace(epochs=1), tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.csv")}
    real, calls = vae_module.elbo_terms, []

    def nan_gradient(*args, **kwargs):
        calls.append(1)
        terms = real(*args, **kwargs)
        if len(calls) != 3:
            return terms
        # + 0 * sqrt(0): the value is unchanged, its gradient is 0 * inf = nan
        zero = terms.objective - terms.objective.detach()
        return terms._replace(objective=terms.objective + 0.0 * torch.sqrt(zero))

    monkeypatch.setattr(vae_module, "elbo_terms", nan_gradient)
    with pytest.raises(NonFiniteLoss, match="gradient became nan in epoch 2, batch 3"):
        resume(run, epochs=2)
    assert {name: (run / name).read_bytes() for name in before} == before


# README: "a save that fails later leaves the previous checkpoint intact".
def test_a_save_that_fails_later_leaves_the_previous_checkpoint_intact(tiny_config, tmp_path,
                                                                      monkeypatch):
    import errno

    run = train(tiny_config.replace(epochs=1), tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt")}
    real = torch.save

    def disk_full_halfway(obj, file, *args, **kwargs):
        file.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full_halfway)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is "
                                              "intact"):
        resume(run, epochs=2)
    monkeypatch.setattr(torch, "save", real)
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    resume(run, epochs=2)  # and the run goes on once there is space
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


# README: "give an unwritable ... output folder": reported before training starts.
def test_an_output_folder_that_cannot_be_made_is_one_error(tiny_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(VaelabError, match="cannot create the run directory .*writable --out"):
        train(tiny_config, blocker / "run")
    assert blocker.read_text() == "not a folder"


# README Likelihood: the IWAE run "stopped once by SIGTERM ... resumed, which reproduces an
# uninterrupted run exactly (tested)": IWAE with dynamic binarization, stopped mid-epoch.
def test_iwae_with_binarization_resumes_exactly_mid_epoch(tiny_config, tmp_path):
    config = tiny_config.replace(iw_train=3, binarize="dynamic", kl_warmup=1, epochs=2)
    assert_stop_at_step_5_then_resume_is_exact(config, tmp_path)


def assert_stop_at_step_5_then_resume_is_exact(config, tmp_path):
    """SIGTERM during the 5th step: the run stops after that batch, and its resume equals an
    uninterrupted run of `config`."""
    straight = train(config, tmp_path / "straight")
    stopped = tmp_path / "stopped"
    with pytest.MonkeyPatch.context() as patch:
        real, calls = training._step, []

        def stop_at_step_5(state, *args):
            calls.append(1)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGTERM)  # training's handler: stop after batch
            return real(state, *args)

        patch.setattr(training, "_step", stop_at_step_5)
        with pytest.raises(TrainingInterrupted, match="in epoch 1 after batch 5"):
            train(config, stopped)
    resume(stopped)
    assert_same_run(straight, stopped)


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
    """The first process stops itself (SIGSTOP) at the first step of epoch 2, holding the
    run's lock with epoch 1 saved; waitpid(WUNTRACED) returns once it has stopped."""
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(HOOK), "vaelab.training:_step",
                              str(BATCHES + 1), "STOP", *training_args(run, long_config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status = os.waitpid(first.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status) and epochs_logged(run) == 1, first.communicate()
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


# README "What happens when...": "Checkpoints carry a format version that is checked".
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
