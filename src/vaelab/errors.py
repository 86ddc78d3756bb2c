"""Errors a user can cause and fix.

The CLI prints these as one line (no traceback) and exits non-zero; anything else
that escapes is a bug in vaelab and keeps its traceback.
"""


class VaelabError(Exception):
    """A problem with the user's input, files or environment; the message says the fix."""


class ConfigError(VaelabError, ValueError):
    """An impossible setting: names the field, the value and what is allowed."""


class DataError(VaelabError):
    """A data file is missing, unreadable, truncated or not what it claims to be."""


class CheckpointError(VaelabError):
    """A checkpoint or run directory is missing, damaged, foreign or from an unknown format."""
