"""The installed version, for checkpoints and `vaelab --version` (no heavy imports here)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vaelab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
