"""Ctrl-C and SIGTERM during training: a request to stop at a clean point, not a crash.

The first signal only sets a flag; the loop checks it after each batch (all ranks together
under torchrun), writes a mid-epoch checkpoint and exits with the signal's code.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from . import distributed


class StopSignals:
    """The first SIGINT or SIGTERM becomes a request to stop after the current batch (so the
    checkpoint is consistent); a second one acts as it normally would (not under torchrun)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._request_stop)
        return self

    def requested(self) -> int | None:
        """The stop signal, if any rank got one: all ranks agree, so all stop after the same
        batch (one small all-reduce per batch under torchrun)."""
        self.signum = distributed.agreed_signal(self.signum)
        return self.signum

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if not distributed.launched():  # torchrun forwards a Ctrl-C its workers also got, and
            signal.signal(signum, self.previous[signum])  # escalates to SIGKILL itself

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
