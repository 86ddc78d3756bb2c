"""The decoded-image cache: one uint8 tensor per folder and options, outside the data folder.

The key covers every file's path, size and modification time, the size and channel options
and the vaelab version; the file is sealed with the SHA-256 of all its bytes (sealed.py). A file
that is damaged anywhere, unsealed, foreign or for another key is never trusted: the caller
decodes again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import torch

from . import sealed
from .errors import load_failure
from .version import __version__

log = logging.getLogger(__name__)

CACHE_ENV = "VAELAB_CACHE_DIR"
FORMAT = "vaelab-image-cache"


def cache_dir() -> Path:
    """$VAELAB_CACHE_DIR, else $XDG_CACHE_HOME/vaelab, else ~/.cache/vaelab: never beside the
    data, which may be read-only or shared."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vaelab"


def key(root: Path, files: list[Path], stats: list[os.stat_result], size: int | None,
        channels: int | None) -> str:
    described = {"format": FORMAT, "vaelab": __version__, "size": size, "channels": channels,
                 "root": str(root.resolve()),
                 "files": [[str(path), stat.st_size, stat.st_mtime_ns]
                           for path, stat in zip(files, stats)]}
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def path(key: str) -> Path:
    return cache_dir() / f"images-{key[:24]}.pt"


def read(key: str) -> torch.Tensor | None:
    """The cached tensor if the file is whole and holds exactly this key; else None (and the
    cache is rebuilt: a damaged or foreign cache is never trusted)."""
    file = path(key)
    if not file.is_file():
        return None
    try:
        body, is_sealed = sealed.unseal(file.read_bytes())
        if not is_sealed:
            raise ValueError("it carries no checksum")
        saved = torch.load(io.BytesIO(body), weights_only=True)
        images = saved["images"]
        if saved["format"] != FORMAT or saved["key"] != key or images.dtype != torch.uint8:
            raise ValueError("it does not match this folder and version")
    except sealed.ChecksumMismatch:
        log.info("the image cache %s is damaged (its checksum does not match); decoding again",
                 file)
        return None
    except Exception as err:  # noqa: BLE001 - whatever is wrong with it, decode again
        log.info("the image cache %s is unusable (%s); decoding again", file, load_failure(err))
        return None
    return images


def write(key: str, images: torch.Tensor) -> None:
    """Save the decoded images; a cache that cannot be written only costs the next run time."""
    from .checkpoint import atomic_open

    file = path(key)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(file, "wb") as out:
            sealed.save({"format": FORMAT, "key": key, "images": images}, out)
    except OSError as err:
        log.warning("cannot write the image cache %s (%s); the next run decodes again", file,
                    err.strerror or err)
