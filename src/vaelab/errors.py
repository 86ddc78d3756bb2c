"""Errors a user can cause and fix.

The CLI prints these as one line (no traceback) and exits non-zero; anything else
that escapes is a bug in vaelab and keeps its traceback.
"""

import re


def first_line(err: BaseException) -> str:
    """An exception's message, first line only (its type's name if it has none)."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def load_failure(err: BaseException) -> str:
    """Why torch.load refused a file, in one sentence and without its advice to retry with
    weights_only=False: that runs whatever code the file holds, the one thing a damaged or
    untrusted file must never get."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not re.search(r"weights.only|documentation", line, re.I)]
    if not useful:
        return type(err).__name__
    return f"{type(err).__name__}: {useful[0].split('. ')[0].rstrip('.')}"


class VaelabError(Exception):
    """A problem with the user's input, files or environment; the message says the fix."""


class ConfigError(VaelabError, ValueError):
    """An impossible setting: names the field, the value and what is allowed."""


class DataError(VaelabError):
    """A data file is missing, unreadable, truncated or not what it claims to be."""


class CheckpointError(VaelabError):
    """A checkpoint or run directory is missing, damaged, foreign or from an unknown format."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint's bytes are not what vaelab wrote: flipped, cut short, or not a checkpoint."""


class NonFiniteLoss(VaelabError):
    """The loss or a gradient became NaN or infinite; the checkpoints keep the last good state."""


class TrainingInterrupted(VaelabError):
    """SIGINT or SIGTERM stopped training after a batch; last.pt holds everything so far."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
