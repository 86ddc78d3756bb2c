"""Run `vaelab` in a real process that signals itself at a chosen call: a test hook, so that
signal and kill tests land where they mean to, with no sleeps.

    python tests/signal_hook.py MODULE:NAME N ACTION [vaelab arguments...]

On the N-th call (1-based) of MODULE:NAME (a function, or Class.method), just before the call
runs, the process sends itself ACTION: INT, TERM or KILL, or several in turn (INT,INT: a
second Ctrl-C before the first was acted on). ACTION HALF-WRITTEN (for
torch:save) writes half of what would be saved, flushes it to disk, then SIGKILLs itself:
a process killed in the middle of writing a checkpoint. Under torchrun, $HOOK_RANK and
$HOOK_PARENT choose which rank acts and whom it signals (see _target_pid).
"""

from __future__ import annotations

import importlib
import io
import os
import signal
import sys


def kill_half_written(real_save):
    def save(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        file.write(data[:len(data) // 2])
        file.flush()
        os.fsync(file.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return save


def signalling(real, at: int, signals: list[int], pid: int):
    calls = 0

    def hooked(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == at and pid == os.getpid():
            for signum in signals:  # each is handled (or raised) before the next line runs
                os.kill(pid, signum)
        elif calls == at and pid:
            send_and_wait_for_forwarding(signals, pid)
        return real(*args, **kwargs)
    return hooked


def send_and_wait_for_forwarding(signals: list[int], pid: int) -> None:
    """Signal torchrun (pid > 0) or this process's group, this process included (pid < 0),
    then wait until each signal has reached this rank: torchrun forwards what it gets to every
    rank; the group's signal arrives at once, and once more from torchrun if torchrun shares
    the group (recent torchruns start each rank in a session of its own, so then it does not).
    Python's wakeup fd receives a byte per signal that arrives, while the signal's own handler
    still runs as usual: the wait is on the signals themselves, not on a timer."""
    shares_a_group = pid < 0 and os.getpgid(0) != os.getpid()
    expected = len(signals) * (2 if shares_a_group else 1)
    arrived, wakeup = os.pipe()
    os.set_blocking(wakeup, False)
    previous = signal.set_wakeup_fd(wakeup)
    try:
        for signum in signals:
            os.killpg(os.getpgid(0), signum) if pid < 0 else os.kill(pid, signum)
        received = b""
        while len(received) < expected:
            received += os.read(arrived, expected - len(received))
    finally:
        signal.set_wakeup_fd(previous)
        os.close(arrived)
        os.close(wakeup)


def install(target: str, at: int, action: str) -> None:
    module_name, _, name = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, attribute = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, attribute)
    if action == "HALF-WRITTEN":
        calls = 0

        def maybe_half(*args, **kwargs):
            nonlocal calls
            calls += 1
            save = kill_half_written(real) if calls == at else real
            return save(*args, **kwargs)
        setattr(owner, attribute, maybe_half)
    else:
        signals = [getattr(signal, f"SIG{name}") for name in action.split(",")]
        setattr(owner, attribute, signalling(real, at, signals, _target_pid()))


def _target_pid() -> int:
    """Under torchrun: $HOOK_RANK names the one rank that acts (the others run unhooked), a
    group that torchrun restarted runs unhooked, and HOOK_PARENT=1 sends the signal to
    torchrun itself, as a scheduler would, and HOOK_PARENT=group to torchrun's whole process
group, as Ctrl-C in a terminal does (0: nobody acts; -1: the group)."""
    if os.environ.get("HOOK_RANK", os.environ.get("RANK")) != os.environ.get("RANK") or \
            os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return 0
    parent = os.environ.get("HOOK_PARENT")
    return os.getppid() if parent == "1" else -1 if parent == "group" else os.getpid()


if __name__ == "__main__":
    # A shell starts background jobs (`make test &`) with SIGINT ignored, and Python keeps an
    # inherited SIG_IGN: restore what an interactive user's process has, Ctrl-C as an exception.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    target, at, action, *arguments = sys.argv[1:]
    install(target, int(at), action)
    from vaelab.cli import main

    sys.exit(main(arguments))
