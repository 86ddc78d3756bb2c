"""`--data PATH`: a folder of images or an .npz/.npy array -> the training and validation Splits.

Whatever the source, training sees one uint8 tensor (N, C, H, W) and its labels. The split is
a pure function of the data, --val-fraction and --seed, all recorded in the run's config, so
resume, evaluate and every figure rebuild the same one.

Arrays: an .npy holds images (N, H, W) or (N, H, W, C), uint8, unlabelled. An .npz holds
`images` (and optionally `labels`, and `classes`, their names), or Keras's `x_train`, `y_train`,
`x_test`, `y_test`, whose split is used as given. An .npz whose only array besides `labels` and
`classes` has another name (`pics`, `arr_0` from numpy.savez(file, array)) is read as the
images. An .npz with `images` may also hold the images' factors of variation (dSprites'
shape, scale, ...): `factors` (N, F) integers, each factor's value as an index, and
`factor_names` (F,); the disentanglement metrics read them (read_factors).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .config import network_of
from .errors import DataError
from .images import check_memory, fit, list_folder, read_folder

if TYPE_CHECKING:
    from .config import Config

ARRAY_SUFFIXES = (".npz", ".npy")


def load_image_data(config: Config) -> tuple[torch.Tensor, torch.Tensor | None,
                                              tuple[str, ...], torch.Tensor]:
    """config.data's images (N, C, H, W) uint8, labels (N,) or None, class names, and which
    images are validation (N,) bool."""
    path = Path(config.data).expanduser()
    if path.suffix.lower() in ARRAY_SUFFIXES:
        arrays, labels, classes, given = _read_arrays(path)
        _check_labelled(config, labels, path)
        is_val = _split(labels, len(arrays), classes, given, config, path)
        images = convert(arrays, config.image_size, config.channels, path)
    else:
        listing = list_folder(path)
        labels = torch.tensor(listing.labels) if listing.labels is not None else None
        given = None if listing.given is None else torch.tensor(
            [name == "val" for name in listing.given])
        # labels and split before decoding: what cannot work is reported at once
        _check_labelled(config, labels, path)
        is_val = _split(labels, len(listing.files), listing.classes, given, config, path)
        images = read_folder(listing, config.image_size, config.channels, network_of(config))
        classes = listing.classes
    return images, labels, classes, is_val


def _check_labelled(config: Config, labels: torch.Tensor | None, path: Path) -> None:
    if config.conditional and labels is None:
        raise unlabelled(path)


def unlabelled(data: object) -> DataError:
    """--conditional on images without labels: what to do instead."""
    return DataError(f"--conditional needs labelled images, and {data} has none: put each "
                     "class in its own subfolder (or give labels in the .npz), or train without "
                     "--conditional")


def _split(labels: torch.Tensor | None, count: int, classes: tuple[str, ...],
           given: torch.Tensor | None, config: Config, path: Path) -> torch.Tensor:
    if given is None:
        return held_out(labels, count, config, classes)
    _check_given(labels, given, classes, path)
    return given


def held_out(labels: torch.Tensor | None, count: int, config: Config,
             classes: tuple[str, ...]) -> torch.Tensor:
    """Which images are validation (N,) bool: round(val_fraction x n) of each class (at least
    one), chosen by a generator seeded with config.seed, so that the split never changes."""
    generator = torch.Generator().manual_seed(config.seed)
    is_val = torch.zeros(count, dtype=torch.bool)
    groups = [torch.arange(count)] if labels is None else \
        [torch.nonzero(labels == label).flatten() for label in range(len(classes))]
    for label, members in enumerate(groups):
        what = f"class {classes[label]!r}" if labels is not None else "the data"
        if not len(members):
            raise DataError(f"{what} has no images: labels must number the classes 0, 1, 2, "
                            "... without gaps (or give `classes` only for labels in use)")
        held = max(1, round(config.val_fraction * len(members)))
        if len(members) - held < 1:
            lower = ", lower --val-fraction" if len(members) > 1 else ""
            raise DataError(f"{what} has {len(members)} image(s): holding out {held} for "
                            f"validation leaves none to train on; add images{lower}, or give "
                            "train/ and val/ folders")
        is_val[members[torch.randperm(len(members), generator=generator)[:held]]] = True
    return is_val


def _check_given(labels: torch.Tensor | None, is_val: torch.Tensor, classes: tuple[str, ...],
                 path: Path) -> None:
    if not bool(is_val.any()) or bool(is_val.all()):
        missing = "validation" if not bool(is_val.any()) else "training"
        raise DataError(f"{path}: its {missing} split holds no images; fill it, or drop the "
                        "split folders to hold out --val-fraction")
    if labels is not None:
        for label, name in enumerate(classes):
            if not bool((labels[~is_val] == label).any()):
                raise DataError(f"{path}: class {name!r} has no training images; add some to "
                                "its training folder or remove the class")


# ---- arrays ----------------------------------------------------------------------------------

def _read_arrays(path: Path) -> tuple[np.ndarray, torch.Tensor | None, tuple[str, ...],
                                      torch.Tensor | None]:
    """images (N, H, W, C) uint8, labels (N,) or None, class names, given split or None."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: cannot be read as a NumPy array file ({err}); write it with "
                        "numpy.save or numpy.savez") from None
    if isinstance(loaded, np.ndarray):
        return _check_images(loaded, path, "the array"), None, (), None
    with loaded:
        names = set(loaded.files)
        if {"x_train", "x_test"} <= names:
            parts = [(_check_images(loaded[x], path, x), loaded[y] if y in names else None)
                     for x, y in (("x_train", "y_train"), ("x_test", "y_test"))]
            if (parts[0][1] is None) != (parts[1][1] is None):
                raise DataError(f"{path}: has labels for one split only; give y_train and "
                                "y_test, or neither")
            if parts[0][0].shape[1:] != parts[1][0].shape[1:]:
                raise DataError(f"{path}: x_train holds {parts[0][0].shape[1:]} images but "
                                f"x_test {parts[1][0].shape[1:]}; both splits need one shape")
            images = np.concatenate([parts[0][0], parts[1][0]])
            labels = None if parts[0][1] is None else np.concatenate(
                [np.ravel(parts[0][1]), np.ravel(parts[1][1])])
            given = torch.arange(len(images)) >= len(parts[0][0])
        elif "images" in names or len(names - {"labels", "classes", *FACTOR_KEYS}) == 1:
            key = "images" if "images" in names else next(iter(names - {"labels", "classes",
                                                                   *FACTOR_KEYS}))
            images, given = _check_images(loaded[key], path, key), None
            if "factors" in names:  # checked with the images: a bad array fails at once
                _check_factors(loaded, len(images), path)
            labels = loaded["labels"] if "labels" in names else None
        else:
            raise DataError(f"{path}: holds {', '.join(sorted(names))} but no `images`; vaelab "
                            "reads `images` (and `labels`, `classes`), or x_train, y_train, "
                            "x_test, y_test")
        classes = _class_names(loaded, path) if "classes" in names else None
    if labels is None:
        return images, None, (), given
    labels = _check_labels(labels, len(images), path)
    classes = classes or [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    if len(labels) and int(labels.max()) >= len(classes):
        raise DataError(f"{path}: label {int(labels.max())} has no name in `classes` "
                        f"({len(classes)} names)")
    return images, labels, tuple(classes), given


FACTOR_KEYS = ("factors", "factor_names", "factor_values")


def read_factors(path: str | Path, count: int) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """The factors of variation of an .npz's `count` images: indices (N, F) int64 and the
    factors' names, or None for data without them (any other source)."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as loaded:
        if "factors" not in loaded.files:
            return None
        return _check_factors(loaded, count, path)


def _check_factors(loaded, count: int, path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    factors = loaded["factors"]
    if factors.ndim != 2 or not np.issubdtype(factors.dtype, np.integer) or \
            (len(factors) and factors.min() < 0):
        raise DataError(f"{path}: factors have shape {factors.shape} and dtype {factors.dtype}; "
                        "expected (N, F) integers >= 0, each factor's value as an index "
                        "(bin continuous factors first)")
    if len(factors) != count:
        raise DataError(f"{path}: {count} images but {len(factors)} rows of factors; there must "
                        "be one row per image")
    if "factor_names" in loaded.files:
        names = tuple(str(name) for name in _strings(loaded, "factor_names", path))
    else:
        names = tuple(f"factor {k}" for k in range(factors.shape[1]))
    if len(names) != factors.shape[1]:
        raise DataError(f"{path}: {factors.shape[1]} factors but {len(names)} factor_names")
    return factors.astype(np.int64), names


def _strings(loaded, key: str, path: Path) -> np.ndarray:
    try:
        return loaded[key]
    except ValueError:  # an object array: loading it would need pickle, which is refused
        raise DataError(f"{path}: `{key}` is an object array; save the names as strings, "
                        "numpy.array(names, dtype=str)") from None


def _class_names(loaded, path: Path) -> list[str]:
    return [str(name) for name in _strings(loaded, "classes", path)]


def _check_images(array: np.ndarray, path: Path, name: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(f"{path}: {name} has dtype {array.dtype}; vaelab reads uint8 images "
                        "(0-255): convert with (x * 255).round().astype(numpy.uint8)")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim == 4 and array.shape[3] == 4:
        raise DataError(f"{path}: {name} has shape {array.shape}, RGBA; save the colours "
                        f"alone, {name}[..., :3]")
    if array.ndim != 4 or array.shape[3] not in (1, 3) or not len(array):
        raise DataError(f"{path}: {name} has shape {array.shape}; expected images "
                        "(N, H, W) or (N, H, W, C) with C 1 or 3, and N >= 1")
    return array


def _check_labels(labels: np.ndarray, count: int, path: Path) -> torch.Tensor:
    if labels.ndim == 2 and labels.shape[1] == 1:  # (N, 1), as Keras's CIFAR ships them
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels have shape {labels.shape} and dtype {labels.dtype}; "
                        "expected one integer per image")
    if len(labels) != count:
        raise DataError(f"{path}: {count} images but {len(labels)} labels; there must be one "
                        "label per image")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: holds label {labels.min()}; labels must be 0, 1, 2, ...")
    return torch.from_numpy(labels.astype(np.int64))


def convert(images: np.ndarray, size: int | None, channels: int | None,
            source: object) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C', H', W') with the folder's conversions (images.fit), so an
    array and the same pictures as files give the same tensor."""
    if size is None and channels in (None, images.shape[3]):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    side = size or None
    out_channels = channels or images.shape[3]
    height, width = (size, size) if size else images.shape[1:3]
    check_memory(len(images), (out_channels, height, width), source)
    converted = np.empty((len(images), height, width, out_channels), dtype=np.uint8)
    for i, image in enumerate(images):
        picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        converted[i] = fit(picture, side, out_channels, f"{source} image {i}")
    return torch.from_numpy(converted.transpose(0, 3, 1, 2).copy())
