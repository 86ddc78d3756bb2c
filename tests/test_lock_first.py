"""A second writer on a live run is refused by the run's lock, naming the live process, whatever
files the run has written so far (before its first checkpoint too)."""

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli

from vaelab.runs import LOCK

HOOK = Path(__file__).with_name("signal_hook.py")


def in_use(run, pid):
    return (f"vaelab: error: {run} is in use by another vaelab process (pid {pid}); wait for it "
            "to finish or stop it, or choose another --out\n")


@pytest.mark.parametrize("written", [(), ("config.json",), ("config.json", "metrics.csv")])
def test_resuming_a_locked_run_without_a_checkpoint_names_the_holder(capsys, tmp_path,
                                                                     written):
    run = tmp_path / "run"
    run.mkdir()
    for name in written:
        (run / name).write_text("")
    with open(run / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        code, _, err = cli(capsys, "train", "--resume", run)
    assert code == 1 and err == in_use(run, os.getpid())
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK, *written])


def test_an_unlocked_run_without_a_checkpoint_still_says_so(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text("12345\n")  # left by a process that died: its flock went with it
    code, _, err = cli(capsys, "train", "--resume", run)
    assert code == 1 and f"no checkpoint at {run / 'last.pt'}" in err
    assert not (tmp_path / "nothing" / LOCK).exists()
    code, _, err = cli(capsys, "train", "--resume", tmp_path / "nothing")
    assert code == 1 and "no checkpoint at" in err
    assert not (tmp_path / "nothing").exists()  # the check creates no lock file


def test_a_real_training_process_stopped_before_its_first_checkpoint(capsys, tiny_config,
                                                                     tmp_path):
    """`vaelab train` stops itself (SIGSTOP) at its first optimizer step: it holds the lock and
    has written config.json and metrics.csv, but no last.pt. waitpid(WUNTRACED) returns once
    it has stopped: no timer."""
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(HOOK), "vaelab.training:_step", "1", "STOP", "train", "--out",
         str(run), "--quiet", "--data-dir", tiny_config.data_dir, "--device", "cpu",
         "--limit-train", "128", "--limit-val", "64"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        _, status = os.waitpid(process.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), process.communicate()
        assert not (run / "last.pt").exists() and (run / "config.json").is_file()
        code, _, err = cli(capsys, "train", "--resume", run)
        assert code == 1 and err == in_use(run, process.pid)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
