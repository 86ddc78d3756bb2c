"""Where a run's images come from: MNIST-like IDX files (idx.py: found, read, checked and
downloaded there) or your own folder or array (`--data`, own_data.py). Every source ends in the
same Split of uint8 tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .idx import CLASSES, read_split

if TYPE_CHECKING:
    from .config import Config


@dataclass(frozen=True)
class Split:
    """A set of images, with labels if the data have them. images: (N, C, H, W) uint8;
    labels: (N,) int64 indices into `classes` (their names), or None for unlabelled data;
    factor_names: the factors of variation the data file gives (own_data.read_factors)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: tuple[str, ...] = ()
    factor_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    def head(self, limit: int | None) -> Split:
        labels = self.labels[:limit] if self.labels is not None else None
        return Split(self.images[:limit], labels, self.classes, self.factor_names)

    def sample(self, limit: int | None, seed: int) -> Split:
        """`limit` images chosen with `seed`, kept in their order (a folder's are sorted by
        class, so its first N would hold only the first classes)."""
        if limit is None or limit >= len(self):
            return self
        chosen = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        index = chosen[:limit].sort().values
        return Split(self.images[index], self.labels[index] if self.labels is not None else None,
                     self.classes, self.factor_names)


def limited(config: Config, split: Split, limit: int | None) -> Split:
    """--limit-train, --limit-val, evaluate --limit: the IDX sets' first N images (the reference's
    slices); for --data, N chosen with the run's seed from every class."""
    return split.head(limit) if config.data is None else split.sample(limit, config.seed)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], exactly as torchvision's `ToTensor` scales them."""
    return images.float().div_(255)


# Binarized runs are all measured on one binarization of the validation (test) images, made
# with this seed, so that their numbers compare. (Static training sets use seed + 1.)
TEST_BINARIZATION_SEED = 0


def binarize(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Stochastic binarization: each pixel becomes 255 with probability its intensity, else 0
    (uint8 in, uint8 out), as in the binarized-MNIST likelihood literature."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(to_float(images), generator=generator).mul_(255).to(torch.uint8)


def training_images(config: Config, split: Split) -> torch.Tensor:
    """What the model learns from: grayscale (the reference's), or binarized once (static)."""
    return binarize(split.images, config.seed + 1) if config.binarize == "static" else split.images


def validation_images(config: Config, split: Split) -> torch.Tensor:
    """Grayscale runs are measured on grayscale images; binarized runs on the one fixed
    binarization every binarized run shares (TEST_BINARIZATION_SEED)."""
    if config.binarize == "none":
        return split.images
    return binarize(split.images, TEST_BINARIZATION_SEED)


def load_data(config: Config) -> tuple[Split, Split]:
    """Training and validation Splits. The IDX sets: the reference's split, the 60,000 training
    images and the 10,000 test images as validation. --data: own_data.load_image_data."""
    if config.data is not None:
        from .own_data import load_image_data, read_factors

        images, labels, classes, is_val = load_image_data(config)
        factors = read_factors(config.data, len(images))
        names = factors[1] if factors is not None else ()
        train, val = (Split(images[part], labels[part] if labels is not None else None, classes,
                            names)
                      for part in (torch.nonzero(~is_val)[:, 0], torch.nonzero(is_val)[:, 0]))
    else:
        train, val = (_resized(config, load_split(config.dataset, split, config.data_dir))
                      for split in ("train", "val"))
    return limited(config, train, config.limit_train), limited(config, val, config.limit_val)


def _resized(config: Config, split: Split) -> Split:
    """--image-size and --channels applied to an IDX set (as to any other source)."""
    if config.image_size is None and config.channels in (None, 1):
        return split
    from .own_data import convert

    images = convert(split.images.permute(0, 2, 3, 1).numpy(), config.image_size,
                     config.channels, config.dataset)
    return Split(images, split.labels, split.classes)


def validation_split(config: Config, data_dir: str | os.PathLike | None = None,
                     data: str | os.PathLike | None = None) -> Split:
    """A run's whole validation set (its limit is for training speed, not for figures);
    `data_dir` or `data` say where the run's images lie now, if they moved."""
    return run_split(config, "val", data_dir, data)


def run_split(config: Config, split: str, data_dir: str | os.PathLike | None = None,
              data: str | os.PathLike | None = None) -> Split:
    """A run's whole training ('train') or validation ('val') set, without its limits."""
    config = config.replace(limit_train=None, limit_val=None,
                            data=str(data) if data else config.data,
                            data_dir=str(data_dir) if data_dir else config.data_dir)
    if config.data is None:  # only the files it needs
        return _resized(config, load_split(config.dataset, split, config.data_dir))
    return load_data(config)[split == "val"]


def with_data_shape(config: Config, split: Split) -> Config:
    """The config with the images' channels, height and width and the number of training
    images (`split` is the training split) recorded, as the run saves it, and for a
    conditional run the number of classes its labels take."""
    channels, height, width = split.images.shape[1:]
    config = config.replace(channels=channels, height=height, width=width,
                            train_images=len(split))
    if not config.conditional:
        return config
    if split.labels is None:
        from .own_data import unlabelled

        raise unlabelled(config.data)
    return config.replace(classes=len(split.classes))


def load_split(dataset: str, split: str, data_dir: str | os.PathLike | None = None,
               limit: int | None = None, download: bool = True) -> Split:
    """Read one split ('train' or 'val') of a dataset, downloading its missing files if allowed."""
    images, labels = read_split(dataset, split, data_dir, download)
    images, labels = images[:limit], labels[:limit]
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long(),
                 CLASSES[dataset])
