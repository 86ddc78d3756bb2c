"""dSprites (Matthey et al. 2017), generated: 64x64 binary images of a square, an ellipse and a
heart, one per combination of five factors of variation, with the factors saved beside them.

    shape        3   square, ellipse, heart (values 1, 2, 3, as the original file)
    scale        6   linearly in [0.5, 1]
    orientation  40  linearly in [0, 2 pi), the endpoint left out
    pos_x        32  linearly in [0, 1]
    pos_y        32  linearly in [0, 1]

737,280 images in the original's order (the last factor changes fastest), so that an image's
index is a pure function of its factors (`index_of`). Nothing is downloaded: this is a
reimplementation from the paper's description, and it differs from the original file where the
description is silent. Each pixel is on when its centre lies inside the shape (no
anti-aliasing). The outlines are ours: the square's side, the ellipse's 2:1 axes and the heart's
curve, (x^2 + y^2 - 1)^3 = x^2 y^3, are sized so that at scale 1 each covers about the area the
original's do (a 13-pixel square); positions put the centre between 16% and 84% of the image, so
that no shape at any scale or angle leaves the frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SIDE = 64
FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
SIZE_AT_SCALE_1 = 0.2  # the square's side, as a share of the image's side
CENTRE_RANGE = (0.16, 0.84)  # where pos 0 and pos 1 put a shape's centre


def factor_values() -> list[np.ndarray]:
    """Each factor's values, in the order of FACTOR_NAMES."""
    return [np.arange(1.0, 4.0), np.linspace(0.5, 1.0, 6),
            np.linspace(0.0, 2 * math.pi, 40, endpoint=False), np.linspace(0.0, 1.0, 32),
            np.linspace(0.0, 1.0, 32)]


def all_factors() -> np.ndarray:
    """Every combination's factor indices (737280, 5) int64, in the images' order."""
    grids = np.meshgrid(*[np.arange(size) for size in FACTOR_SIZES], indexing="ij")
    return np.stack([grid.ravel() for grid in grids], axis=1)


def index_of(factors: np.ndarray) -> np.ndarray:
    """Factor indices (..., 5) -> the images' indices in the full set (the inverse of
    all_factors)."""
    return np.ravel_multi_index(tuple(np.moveaxis(factors, -1, 0)), FACTOR_SIZES)


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points (u, v), in units of the shape's size at its own angle, lie inside it."""
    if shape == 0:  # square, side 1
        return torch.maximum(u.abs(), v.abs()) <= 0.5
    if shape == 1:  # ellipse, semi-axes 0.75 and 0.375 (about the square's area, 0.88)
        return (u / 0.75) ** 2 + (v / 0.375) ** 2 <= 1
    # heart, about 1.1 wide, point down (image rows grow downwards)
    x, y = u * 2.0, -v * 2.0 + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


def render(shape: int, scale: float, angle: float) -> torch.Tensor:
    """Every position of one (shape, scale, orientation): (32 pos_x, 32 pos_y, 64, 64) bool."""
    centres = CENTRE_RANGE[0] + (CENTRE_RANGE[1] - CENTRE_RANGE[0]) * torch.linspace(0, 1, 32)
    pixels = (torch.arange(SIDE) + 0.5) / SIDE
    size = SIZE_AT_SCALE_1 * scale
    dx = (pixels[None, :] - centres[:, None]) / size  # (pos_x, column)
    dy = (pixels[None, :] - centres[:, None]) / size  # (pos_y, row)
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = dx[:, None, None, :], dy[None, :, :, None]
    return _inside(shape, cos * dx + sin * dy, -sin * dx + cos * dy)


def images_of(factors: np.ndarray) -> np.ndarray:
    """The images of factor indices (N, 5): (N, 64, 64) uint8, 0 or 255. Each (shape, scale,
    orientation) is rendered once for all its positions."""
    values = factor_values()
    out = np.empty((len(factors), SIDE, SIDE), dtype=np.uint8)
    blocks = np.ravel_multi_index(tuple(factors[:, :3].T), FACTOR_SIZES[:3])
    order = np.argsort(blocks, kind="stable")
    starts = np.flatnonzero(np.diff(blocks[order], prepend=-1))
    for rows in np.split(order, starts[1:]):
        shape, scale, angle = factors[rows[0], :3]
        rendered = render(shape, values[1][scale], values[2][angle])
        out[rows] = rendered[factors[rows, 3], factors[rows, 4]].numpy().astype(np.uint8) * 255
    return out


def generate(subset: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The images (N, 64, 64) uint8 (0 or 255) and their factors: indices (N, 5) int64, values
    (N, 5) float32, names. `subset`: that many combinations drawn with `seed`, in order."""
    factors = all_factors()
    if subset is not None:
        generator = np.random.default_rng(seed)
        factors = factors[np.sort(generator.choice(len(factors), subset, replace=False))]
    values = factor_values()
    factor_value = np.stack([values[k][factors[:, k]] for k in range(5)], axis=1)
    return {"images": images_of(factors), "factors": factors,
            "factor_values": factor_value.astype(np.float32),
            "factor_names": np.array(FACTOR_NAMES)}
