"""Checkpoints: everything needed to rebuild the model and continue the run, written atomically.

A checkpoint is a dict of tensors and plain Python values, loaded with
`torch.load(weights_only=True)`: a file that would need to run code to load is refused. It is
sealed with the SHA-256 of its bytes (sealed.py), checked on every load, so a byte flipped on
disk or in a copy is reported instead of trained on. Checkpoints from before the seal carry no
digest and load as they always did.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from . import sealed
from .config import Config
from .errors import CheckpointError, DamagedCheckpoint, VaelabError, load_failure

FORMAT = "vaelab-checkpoint"
FORMAT_VERSION = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask means setting it; put it straight back
REQUIRED_KEYS = ("config", "model", "optimizer", "epoch", "step", "history", "rng")
# Set in every sealed checkpoint: a file that says so but has no readable trailer is damaged
# (a flipped byte in the trailer's mark), not one from before the seal.
SEALED_KEY = "sealed"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one,
    and nothing under a final name is ever partly written.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], version: str) -> None:
    try:
        with atomic_open(path, "wb") as file:
            sealed.save({"format": FORMAT, "format_version": FORMAT_VERSION,
                         "vaelab_version": version, SEALED_KEY: "sha256", **payload}, file)
    except OSError as err:
        raise CheckpointError(f"cannot write {path} ({err.strerror or err}); the previous "
                              "checkpoint is intact: free space, then resume") from None


def require_checkpoint(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one with `vaelab train --out "
                              f"{path.parent}` or point at a run directory that has one")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read and check a checkpoint; any defect is a one-line CheckpointError (a
    DamagedCheckpoint where the file is damaged rather than foreign or of another format)."""
    path = require_checkpoint(path)
    try:
        data = path.read_bytes()  # once: the digests and the weights come from the same bytes
        body, is_sealed = sealed.unseal(data)
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except sealed.ChecksumMismatch:
        raise DamagedCheckpoint(f"{path} is damaged: its checksum does not match its "
                                "contents") from None
    except Exception as err:  # noqa: BLE001 - whatever the damage, the file is unusable
        raise DamagedCheckpoint(f"{path}: not a loadable vaelab checkpoint ({load_failure(err)}); "
                                "it is damaged, truncated or from another program") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vaelab checkpoint (no '{FORMAT}' marker); "
                              "vaelab only loads the checkpoints it wrote")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload.get('format_version')} written by vaelab "
            f"{payload.get('vaelab_version')}; this vaelab reads format {FORMAT_VERSION}: "
            "install the vaelab version that wrote it")
    if payload.get(SEALED_KEY) and not is_sealed:
        raise DamagedCheckpoint(f"{path} is damaged: its checksum at the end of the file is "
                                "unreadable")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise DamagedCheckpoint(f"{path}: checkpoint lacks {', '.join(missing)}; it is damaged")
    payload["sha256"] = hashlib.sha256(data).hexdigest()  # the file's identity, not saved in it
    return payload


def file_sha256(path: str | os.PathLike) -> str:
    """A checkpoint file's identity, as load_checkpoint records it in payload["sha256"]."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def config_from_checkpoint(payload: dict[str, Any], path: Path) -> Config:
    try:
        return Config.from_dict(payload["config"])
    except (VaelabError, TypeError) as err:
        raise CheckpointError(f"{path}: its config is not valid for this vaelab ({err})") from None


def load_weights(model: torch.nn.Module, payload: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({str(err).splitlines()[0]}); the checkpoint is damaged, or its "
                              f"vaelab ({payload.get('vaelab_version')}) built another network "
                              "for that config: retrain it") from None
