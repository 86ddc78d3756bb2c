"""Figures from tensors (matplotlib, object-oriented API: no global pyplot state, no display).

Image figures are exact: each 28x28 digit is upscaled SCALE times (nearest neighbour) with a
title band above, so a PNG's pixel size follows from its grid alone (`grid_figure_size`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from .checkpoint import atomic_open
from .errors import VaelabError

SCALE = 3       # screen pixels per image pixel
TITLE_PX = 36   # height of the title band
DPI = 100
PAD = 2         # make_grid's padding between digits


def grid_figure_size(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of an image-grid figure with rows x cols digits."""
    return (cols * (28 + PAD) + PAD) * SCALE, (rows * (28 + PAD) + PAD) * SCALE + TITLE_PX


def image_grid(images: torch.Tensor, cols: int, title: str) -> Figure:
    """Images (N, 1, 28, 28) in [0, 1] in rows of `cols`, white gaps, black ink on white."""
    grid = make_grid(1 - images.float(), nrow=cols, padding=PAD, pad_value=1.0)[0].numpy()
    rows = math.ceil(len(images) / cols)
    width, height = grid_figure_size(rows, min(cols, len(images)))
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = figure.add_axes((0, 0, 1, 1 - TITLE_PX / height))
    axes.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    axes.set_axis_off()
    figure.text(0.5, 1 - TITLE_PX / height / 2, title, ha="center", va="center", fontsize=11)
    return figure


def reconstructions(originals: torch.Tensor, decoded: torch.Tensor, sampled: bool) -> Figure:
    how = "z ~ q(z|x)" if sampled else "the posterior mean"
    return image_grid(torch.cat([originals, decoded]), len(originals),
                      f"Top: validation images. Bottom: decoded from {how}")


def samples(images: torch.Tensor, temperature: float) -> Figure:
    cols = math.ceil(math.sqrt(len(images)))
    spread = "I" if temperature == 1 else f"{temperature:g}² I"
    return image_grid(images, cols, f"New digits: decoded z ~ N(0, {spread})")


def interpolations(strips: torch.Tensor, description: str) -> Figure:
    """strips: (pairs, steps, 1, 28, 28), one pair per row."""
    return image_grid(strips.flatten(0, 1), strips.shape[1], description)


def manifold(images: torch.Tensor) -> Figure:
    n = math.isqrt(len(images))
    return image_grid(images, n, "Decoded grid over the prior's quantiles (z1 →, z2 ↑)")


def latent_scatter(points: torch.Tensor, labels: torch.Tensor, method: str) -> Figure:
    figure = Figure(figsize=(7, 6), dpi=DPI)
    axes = figure.add_subplot()
    scatter_codes(axes, points, labels, method, size=3, alpha=0.7)
    axes.set_title(f"Validation posterior means, {method}")
    return figure


def scatter_codes(axes, points: torch.Tensor, labels: torch.Tensor, axis_name: str,
                  size: float, alpha: float) -> None:
    """2-D codes (N, 2) as dots coloured by digit, with a colour bar of the ten classes."""
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", vmin=-0.5,
                           vmax=9.5, s=size, alpha=alpha, linewidths=0, rasterized=True)
    axes.figure.colorbar(scatter, ax=axes, ticks=range(10), label="digit")
    axes.set_xlabel(f"{axis_name} 1")
    axes.set_ylabel(f"{axis_name} 2")


def curves(metrics: list[dict[str, float]]) -> Figure:
    """Train and validation loss, reconstruction and KL (nats per image) per epoch."""
    figure = Figure(figsize=(12, 3.6), dpi=DPI, layout="constrained")
    epochs = [row["epoch"] for row in metrics]
    for axes, part, name in zip(figure.subplots(1, 3), ("loss", "recon", "kl"),
                                ("negative ELBO", "reconstruction", "KL")):
        for split, style in (("train", "o-"), ("val", "s--")):
            axes.plot(epochs, [row[f"{split}_{part}"] for row in metrics], style, label=split,
                      markersize=4)
        axes.set_title(f"{name} (nats / image)")
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def save(figure: Figure, path: str | os.PathLike) -> Path:
    """Write a PNG atomically; an unwritable folder is a one-line error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as file:
            figure.savefig(file, format="png", dpi=DPI, metadata={"Software": None})
    except OSError as err:
        raise VaelabError(f"cannot write {path} ({err.strerror or err}); "
                          "choose a writable folder with --out") from None
    return path

