"""MNIST-like IDX files: where they lie, reading and checking them, downloading them.

The IDX files are read straight from their `.gz` (or uncompressed) form; nothing is extracted
and nothing is written into the data directory except by a download. Both torchvision's
layout (`ROOT/MNIST/raw/*.gz`) and a flat folder holding the four files are found.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import shutil
import socket
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "VAELAB_DATA_DIR"
MIRRORS_ENV = "VAELAB_MIRRORS"  # comma-separated base URLs tried instead of torchvision's

# Config name -> torchvision's folder (and class) name; all three share the file names.
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SIZE = 28
CLASSES = {
    "mnist": tuple("0123456789"),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this: caps what a .gz can hold
_CHUNK = 1 << 20


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The explicit folder, else $VAELAB_DATA_DIR, else ./data."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or "data").expanduser()


def read_split(dataset: str, split: str, data_dir: str | os.PathLike | None = None,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One split's (images (N, 28, 28), labels (N,)) uint8 arrays, checked, downloading the
    missing files if allowed."""
    root = resolve_data_dir(data_dir)
    image_name, label_name = SPLIT_FILES[split]
    paths = find_files(dataset, root)
    missing = [name for name in (image_name, label_name) if paths[name] is None]
    if missing:
        if not download:
            raise DataError(_missing_message(dataset, root, missing, "downloads are off"))
        fetch(dataset, root, missing)
        paths = find_files(dataset, root)
    images = _cached_idx(paths[image_name])
    labels = _cached_idx(paths[label_name])
    _check_pair(images, labels, paths[image_name], paths[label_name])
    return images, labels


def find_files(dataset: str, root: Path) -> dict[str, Path | None]:
    """Where each of the dataset's four files lies (gzipped or not), or None if nowhere."""
    folders = [root / FOLDERS[dataset] / "raw", root / FOLDERS[dataset], root]
    found: dict[str, Path | None] = {}
    for names in SPLIT_FILES.values():
        for name in names:
            candidates = (folder / file for folder in folders for file in (name + ".gz", name))
            found[name] = next((path for path in candidates if path.is_file()), None)
    return found


def _missing_message(dataset: str, root: Path, missing: list[str], reason: str) -> str:
    return (f"{dataset}: {' and '.join(name + '[.gz]' for name in missing)} not found in "
            f"{root.absolute()} or its {FOLDERS[dataset]}/raw/ ({reason}); point --data-dir "
            f"or ${DATA_DIR_ENV} at the folder holding them")


# ---- reading and checking IDX files ------------------------------------------------------

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a uint8 array of its declared shape.

    The header's sizes are checked against what the file can hold before anything is
    allocated, so a damaged header cannot ask for gigabytes. Any defect raises DataError.
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            budget = os.fstat(raw.fileno()).st_size * (_MAX_DEFLATE_RATIO if gzipped else 1)
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            return _parse_idx(stream, budget, path)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable ({err}); replace it with the official file") from None


def _parse_idx(stream: BinaryIO, budget: int, path: Path) -> np.ndarray:
    magic = _read_exactly(stream, 4, path)
    if magic[:3] != b"\x00\x00\x08" or magic[3] not in (1, 3):
        raise DataError(f"{path}: not an IDX file of uint8 images or labels "
                        f"(magic number {magic.hex()}); replace it with the official file")
    dims = struct.unpack(f">{magic[3]}I", _read_exactly(stream, 4 * magic[3], path))
    size = math.prod(dims)
    if size > budget:
        raise DataError(f"{path}: header declares shape {dims} ({size} bytes), more than the "
                        f"file can hold: truncated or damaged; replace it with the official file")
    data = _read_exactly(stream, size, path)
    if stream.read(1):
        raise DataError(f"{path}: has bytes after its declared shape {dims}; "
                        "replace it with the official file")
    try:
        return np.frombuffer(data, dtype=np.uint8).reshape(dims)
    except ValueError:  # an empty array whose other sizes no array can have, e.g. 0 x 3e9 x 3e9
        raise DataError(f"{path}: header declares shape {dims}, which no array can hold; "
                        "replace it with the official file") from None


def _read_exactly(stream: BinaryIO, size: int, path: Path) -> bytearray:
    """Read `size` bytes in chunks, so memory grows only with what the file really holds."""
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(min(_CHUNK, size - len(data)))
        if not chunk:
            raise DataError(f"{path}: truncated ({len(data)} of {size} expected bytes); "
                            "replace it with the official file")
        data += chunk
    return data


@functools.lru_cache(maxsize=8)
def _cached_read(path: Path, mtime_ns: int, size: int) -> np.ndarray:
    return read_idx(path)


def _cached_idx(path: Path) -> np.ndarray:
    """read_idx, remembered while the file is unchanged (tests and notebooks reload often)."""
    stat = path.stat()
    return _cached_read(path.resolve(), stat.st_mtime_ns, stat.st_size)


def _check_pair(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path):
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{image_path}: holds shape {images.shape}, expected N x 28 x 28 images")
    if labels.ndim != 1:
        raise DataError(f"{label_path}: holds shape {labels.shape}, expected a list of labels")
    if len(images) != len(labels):
        raise DataError(f"{image_path} has {len(images)} images but {label_path} has "
                        f"{len(labels)} labels; the two files must come from the same split")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{label_path}: holds label {labels.max()}, expected digits 0-9")


# ---- downloading -------------------------------------------------------------------------

def fetch(dataset: str, root: Path, names: list[str], timeout: float = 30.0) -> None:
    """Download the named files into ROOT/<Folder>/raw, MD5-checked. Each is fetched into a
    temporary folder outside ROOT and moved in only once verified, so a failed download
    creates nothing in the data folder, not even an empty ROOT/<Folder>/raw."""
    from torchvision import datasets  # only downloads need torchvision's mirrors and sums

    source = getattr(datasets, FOLDERS[dataset])
    md5s = {file.removesuffix(".gz"): md5 for file, md5 in source.resources}
    mirrors = os.environ.get(MIRRORS_ENV, "").split(",") if os.environ.get(MIRRORS_ENV) \
        else list(source.mirrors)
    with tempfile.TemporaryDirectory(prefix="vaelab-download-") as staging:
        for name in names:
            file = name + ".gz"
            failures = _download(file, md5s[name], mirrors, Path(staging), timeout)
            if failures:
                raise DataError(_missing_message(dataset, root, names, f"download of {file} "
                                                 "failed: " + "; ".join(failures)))
            _move_into(Path(staging) / file, root / FOLDERS[dataset] / "raw" / file)


def _download(file: str, md5: str, mirrors: list[str], folder: Path, timeout: float
              ) -> list[str]:
    """Try each mirror until one gives a copy with the right MD5; returns why each failed
    (an empty list once `folder / file` holds a verified copy)."""
    from torchvision.datasets.utils import download_url

    failures = []
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision's urlopen has none: never hang offline
    try:
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + file
            try:
                log.debug("downloading %s", url)  # torchvision's own bar shows the progress
                download_url(url, str(folder), file, md5)
                log.info("downloaded %s from %s (MD5 verified)", file, urlparse(url).netloc)
                return []
            except RuntimeError:  # torchvision's "File not found or corrupted."
                failures.append(f"{urlparse(url).netloc}: MD5 mismatch (corrupt copy)")
            except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
                failures.append(f"{urlparse(url).netloc}: {getattr(err, 'reason', err)}")
            (folder / file).unlink(missing_ok=True)
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return failures


def _move_into(verified: Path, final: Path) -> None:
    """Copy a verified download to its final name atomically (the staging folder may be on
    another file system, where a rename cannot reach)."""
    from .checkpoint import atomic_open

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with verified.open("rb") as source, atomic_open(final, "wb") as target:
            shutil.copyfileobj(source, target, _CHUNK)
    except OSError as err:
        raise DataError(f"cannot save the downloaded {final.name} into {final.parent} "
                        f"({err.strerror or err}); point --data-dir at a writable folder") from None
