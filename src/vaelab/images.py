"""A folder of image files -> one uint8 tensor (N, C, H, W), resized and converted on request.

A folder is searched recursively. Class subfolders become labels in sorted order (as
torchvision's ImageFolder does); train/ and val/ (or test/) subfolders are used as given,
otherwise a seeded share of each class is held out (--val-fraction). Files are decoded once, in
parallel threads (Pillow releases the GIL while it decodes, though for small images Python's
share of the work bounds the speed-up), into a cache of uint8 tensors
outside the data folder, keyed by every file's path, size and modification time and by the
size and channel options: a second run reads the cache, and a changed folder is decoded again.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from . import cache
from .config import check_shape
from .errors import DataError, first_line

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
              ".pgm", ".pbm", ".pnm")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation", "test")}
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")
SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")
MEMORY_SHARE = 0.5  # the images may take at most this share of the memory available now


@dataclass(frozen=True)
class Listing:
    """What a folder holds: files (absolute paths, sorted), their labels (or None when the
    folder has no class subfolders), class names, and each file's given split (or None)."""

    root: Path
    files: list[Path]
    labels: list[int] | None
    classes: tuple[str, ...]
    given: list[str] | None


# ---- listing a folder ------------------------------------------------------------------------

def list_folder(root: Path) -> Listing:
    """The images under `root`, with labels and given splits as its layout says."""
    if root.is_file():
        raise DataError(f"{root} is a file; --data takes a folder of images or an .npz/.npy "
                        "array")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; point --data at a folder of images or an "
                        ".npz/.npy file")
    listing = _list(root)
    if not listing.files:
        raise DataError(f"{root} holds no image files ({', '.join(EXTENSIONS[:5])}, ...); "
                        "point --data at a folder of pictures")
    return listing


def _list(root: Path) -> Listing:
    splits = {name: next((root / f for f in folders if (root / f).is_dir()), None)
              for name, folders in SPLIT_FOLDERS.items()}
    if splits["train"] is not None and splits["val"] is None:  # train/ alone: hold out from it
        return _list(splits["train"])
    if splits["train"] is not None and splits["val"] is not None:
        parts = {name: _list_classes(folder) for name, folder in splits.items()}
        if bool(parts["train"][1]) != bool(parts["val"][1]):
            raise DataError(f"{splits['train']} and {splits['val']} are laid out differently "
                            "(class subfolders in one only); give both class subfolders, or "
                            "neither")
        classes = sorted(set(parts["train"][1]) | set(parts["val"][1]))
        files, labels, given = [], [], []
        for name, (found, names) in parts.items():
            for path, label in found:
                files.append(path)
                labels.append(classes.index(names[label]) if label is not None else 0)
                given.append(name)
        return Listing(root, files, labels if classes else None, tuple(classes), given)
    found, names = _list_classes(root)
    labels = [label for _, label in found] if names else None
    return Listing(root, [path for path, _ in found], labels, tuple(names), None)


def _list_classes(folder: Path) -> tuple[list[tuple[Path, int | None]], list[str]]:
    """(path, class index) of every image under `folder`, and the class names: its
    subfolders, if it holds subfolders and no images of its own; else none (unlabelled)."""
    entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")),
                     key=lambda e: e.name)
    top_images = [Path(e.path) for e in entries if e.is_file() and _is_image(e.name)]
    subfolders = [e for e in entries if e.is_dir()]
    if top_images or not subfolders:
        return [(path, None) for path in sorted(_walk(folder, _ancestors(folder)))], []
    found = []
    for label, sub in enumerate(subfolders):
        images = sorted(_walk(Path(sub.path), _ancestors(folder) | {_identity(sub.path)}))
        if not images:
            raise DataError(f"class folder {sub.path} holds no images; add some or remove it")
        found += [(path, label) for path in images]
    return found, [sub.name for sub in subfolders]


def _walk(folder: Path, ancestors: frozenset) -> Iterator[Path]:
    """Image files under `folder`, following links to folders but never round a loop."""
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            identity = _identity(entry.path)
            if identity in ancestors:
                raise DataError(f"{entry.path} is a symbolic link loop (it leads back to "
                                f"{os.path.realpath(entry.path)}); remove the link")
            yield from _walk(Path(entry.path), ancestors | {identity})
        elif entry.is_file() and _is_image(entry.name):
            yield Path(entry.path)


def _identity(path: str | os.PathLike) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _ancestors(folder: Path) -> frozenset:
    return frozenset({_identity(folder)})


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


# ---- reading one image -----------------------------------------------------------------------

def probe(path: Path) -> tuple[tuple[int, int], int]:
    """(width, height) and channel count (1 or 3) from the file's header alone."""
    try:
        with Image.open(path) as picture:
            return picture.size, channels_of(picture, path)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot be read as an image ({first_line(err)}); replace or "
                        "remove it") from None


def channels_of(picture: Image.Image, path: object) -> int:
    if picture.mode == "F":
        raise DataError(f"{path}: holds 32-bit floating-point pixels, not an 8- or 16-bit "
                        "picture; convert it to 8-bit PNG")
    if picture.mode == "P":  # a palette of greys is a grey picture
        colours = np.asarray(picture.getpalette() or [0, 0, 0]).reshape(-1, 3)
        return 1 if (colours == colours[:, :1]).all() else 3
    return 1 if picture.mode in GREY_MODES else 3


def decode(path: Path, size: int | None, channels: int) -> np.ndarray:
    """One file -> (H, W, C) uint8: converted to `channels` and, with `size`, resized and
    centre-cropped to size x size."""
    try:
        with Image.open(path) as picture:
            picture.load()
            return fit(picture, size, channels, path)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot be decoded ({first_line(err)}); replace or remove it "
                        "(vaelab does not skip images silently)") from None


def fit(picture: Image.Image, size: int | None, channels: int, name: object) -> np.ndarray:
    """A picture -> (H, W, C) uint8. 16-bit pictures are scaled to 8 bits (x / 257), palette
    and other modes are converted by Pillow, alpha is dropped (as torchvision's loader does).
    Resizing is torchvision's Resize(size) then CenterCrop(size): bilinear, antialiased."""
    if picture.mode in SIXTEEN_BIT:
        wide = np.asarray(picture, dtype=np.int64)
        if wide.min() < 0 or wide.max() > 65535:
            raise DataError(f"{name}: holds pixel values beyond 16 bits; convert it to 8-bit")
        # 16-bit files scale to 8 bits; Pillow's 32-bit integer mode "I" holding only 0-255
        # (as some TIFF writers save 8-bit data) is taken as it is
        eight_bit = picture.mode == "I" and wide.max() <= 255
        picture = Image.fromarray((wide if eight_bit else (wide * 255 + 32767) // 65535)
                                  .astype(np.uint8))
    channels_of(picture, name)
    picture = picture.convert("L" if channels == 1 else "RGB")
    if size is not None:
        picture = _resize_and_crop(picture, size)
    pixels = np.array(picture, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _resize_and_crop(picture: Image.Image, size: int) -> Image.Image:
    width, height = picture.size
    new_width, new_height = (size, int(size * height / width)) if width <= height else \
        (int(size * width / height), size)
    picture = picture.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left = int(round((new_width - size) / 2.0))
    top = int(round((new_height - size) / 2.0))
    return picture.crop((left, top, left + size, top + size))


# ---- a whole folder, through the cache -------------------------------------------------------

def read_folder(listing: Listing, size: int | None, channels: int | None,
                network: str) -> torch.Tensor:
    """Every image of the listing as one uint8 tensor (N, C, H, W), from the cache when it
    holds this very folder decoded with these options."""
    stats = [path.stat() for path in listing.files]
    key = cache.key(listing.root, listing.files, stats, size, channels)
    cached = cache.read(key)
    if cached is None and channels is not None:
        # A run records its images' channels, so later commands ask for them explicitly: the
        # first run's decode without --channels made exactly these images if the count agrees.
        cached = cache.read(cache.key(listing.root, listing.files, stats, size, None))
        cached = cached if cached is not None and cached.shape[1] == channels else None
    if cached is not None:
        return cached
    images = _decode_all(listing, size, channels, network)
    cache.write(key, images)
    return images


def _decode_all(listing: Listing, size: int | None, channels: int | None,
                network: str) -> torch.Tensor:
    files = listing.files
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        headers = list(pool.map(probe, files))
        (width, height), first_channels = headers[0]
        for path, (dims, found) in zip(files, headers):
            if size is None and dims != (width, height):
                raise DataError(f"{path} is {dims[0]}x{dims[1]} but {files[0]} is {width}x"
                                f"{height}; give --image-size S to resize all images to SxS")
            if channels is None and found != first_channels:
                raise DataError(f"{path} is {_mode_name(found)} but {files[0]} is "
                                f"{_mode_name(first_channels)}; give --channels 1 or 3")
        shape = (channels or first_channels, size or height, size or width)
        check_shape(shape, network)
        check_memory(len(files), shape, listing.root)
        images = torch.empty((len(files), *shape), dtype=torch.uint8)
        log.info("decoding %d images from %s (once; later runs read the cache)", len(files),
                 listing.root)

        def store(index: int) -> None:
            pixels = decode(files[index], size, shape[0])  # (H, W, C)
            images[index] = torch.from_numpy(pixels).permute(2, 0, 1)

        with tqdm(total=len(files), unit="image", desc="decoding", leave=False,
                  disable=None) as bar:  # shown on a terminal only
            for _ in pool.map(store, range(len(files))):
                bar.update()
    return images


def _mode_name(channels: int) -> str:
    return "grey" if channels == 1 else "colour"


def check_memory(count: int, shape: tuple[int, int, int], source: object) -> None:
    """Refuse, before allocating, images that would take more than MEMORY_SHARE of the memory
    available now (the training copy, batches and the model need the rest)."""
    needed = count * shape[0] * shape[1] * shape[2]
    available = available_memory()
    if needed > MEMORY_SHARE * available:
        raise DataError(f"{source}: {count:,} images of {'x'.join(map(str, shape))} take "
                        f"{needed / 1e9:.1f} GB as uint8, more than half the {available / 1e9:.1f}"
                        f" GB of memory available; use --image-size to shrink them, or a subset")


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), else the physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40  # unknown: let the allocation itself decide
