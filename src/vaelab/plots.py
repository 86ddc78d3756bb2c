"""Figures from tensors (matplotlib, object-oriented API: no global pyplot state, no display).

Image figures are exact: each image is upscaled a whole number of times (nearest neighbour;
3x for 28x28) with a title band above, so a PNG's pixel size follows from its grid alone
(`grid_figure_size`). Grey images of the IDX sets (light on black) are shown as dark ink on
white, as the reference's figures; your own images are shown as they are, in colour if they are.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

from .checkpoint import atomic_open
from .errors import VaelabError
from .runs import term_columns

SHOWN_SIDE = 84  # screen pixels an image's longer side is scaled up to, at least
TITLE_PX = 36   # height of the title band
DPI = 100
PAD = 2         # make_grid's padding between digits
# The gaps' grey: unlike white paper or a black background, so tiles never merge into one sheet
# (drawn pixels, --sample-pixels, often leave a tile's border white); it also fills empty cells.
GAP_GREY = 0.75
ROW_WIDTH = 16  # reconstructions per row: more go into further pairs of rows
NAMES_PX = 72   # width of the band naming the rows (height of the one naming the columns)


def scale(image_height: int, image_width: int) -> int:
    """Screen pixels per image pixel: 3 for 28x28, 1 from 84x84 up."""
    return max(1, SHOWN_SIDE // max(image_height, image_width))


def grid_figure_size(rows: int, cols: int, image_height: int = 28, image_width: int = 28
                     ) -> tuple[int, int]:
    """(width, height) in pixels of an image-grid figure with rows x cols images."""
    times = scale(image_height, image_width)
    return ((cols * (image_width + PAD) + PAD) * times,
            (rows * (image_height + PAD) + PAD) * times + TITLE_PX)


def image_grid(images: torch.Tensor, cols: int, title: str, ink: bool = True,
               row_names: list[str] | None = None, column_names: list[str] | None = None
               ) -> Figure:
    """Images (N, C, H, W) in [0, 1] in rows of `cols` with grey gaps; an image of NaNs is an
    empty cell. `ink` shows grey images inverted (dark ink on white paper). `row_names` and
    `column_names` label the rows (in a band on the left) and the columns (in a band under
    the title)."""
    images = images.float()
    grey = images.shape[1] == 1
    shown = 1 - images if grey and ink else images
    grid = make_grid(shown, nrow=cols, padding=PAD, pad_value=GAP_GREY).nan_to_num(GAP_GREY)
    rows = math.ceil(len(images) / cols)
    width, height = grid_figure_size(rows, min(cols, len(images)), *images.shape[2:])
    left, top = NAMES_PX * bool(row_names), NAMES_PX // 3 * bool(column_names)
    width, height = width + left, height + top
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = figure.add_axes((left / width, 0, 1 - left / width, 1 - (TITLE_PX + top) / height))
    pixels = grid[0].numpy() if grey else grid.permute(1, 2, 0).clamp(0, 1).numpy()
    axes.imshow(pixels, cmap="gray" if grey else None, vmin=0, vmax=1, interpolation="nearest",
                aspect="auto")
    axes.set_axis_off()
    # a narrow grid (a few small images) shrinks the title rather than cutting it off
    size = max(5.0, min(11.0, width / (0.75 * len(title))))
    figure.text(0.5, 1 - TITLE_PX / height / 2, title, ha="center", va="center", fontsize=size)
    _name_cells(axes, grid.shape[1:], images.shape[2:], row_names, column_names)
    return figure


def _name_cells(axes, grid_size: tuple[int, int], image_size: tuple[int, int],
                row_names: list[str] | None, column_names: list[str] | None) -> None:
    """Names beside each row and above each column, centred on the cells (in grid pixels)."""
    for i, name in enumerate(row_names or ()):
        y = PAD + i * (image_size[0] + PAD) + image_size[0] / 2
        axes.text(-PAD, y, name, ha="right", va="center", fontsize=8, clip_on=False)
    for j, name in enumerate(column_names or ()):
        x = PAD + j * (image_size[1] + PAD) + image_size[1] / 2
        axes.text(x, -PAD, name, ha="center", va="bottom", fontsize=7, clip_on=False)


def shown(pixels: bool) -> str:
    """What a decoded picture is: the mean of p(x|z), or one draw of its pixels."""
    return "a draw x ~ p(x|z)" if pixels else "the mean E[x|z]"


def reconstructions(originals: torch.Tensor, decoded: torch.Tensor, sampled: bool,
                    ink: bool = True, pixels: bool = False) -> Figure:
    """Pairs of rows of up to ROW_WIDTH: validation images, and their reconstructions below."""
    how = f"decoded from {'z ~ q(z|x)' if sampled else 'the posterior mean'}, shown as " \
          f"{shown(pixels)}"
    cols = min(len(originals), ROW_WIDTH)
    if len(originals) <= cols:
        return image_grid(torch.cat([originals, decoded]), cols,
                          f"Top: validation images. Bottom: {how}", ink)
    return image_grid(paired_rows(originals, decoded, cols), cols,
                      f"Each row of validation images above its reconstructions: {how}", ink)


def paired_rows(upper: torch.Tensor, lower: torch.Tensor, cols: int) -> torch.Tensor:
    """(N, C, H, W) twice -> the tiles of rows of `cols`: `upper`'s first cols images, then
    `lower`'s, then the next cols of each; a short last pair of rows is padded with empty
    (NaN) cells, so each image stays above its partner."""
    rows = math.ceil(len(upper) / cols)
    empty = torch.full((rows * cols - len(upper), *upper.shape[1:]), math.nan)
    shaped = [torch.cat([part.float(), empty]).unflatten(0, (rows, 1, cols))
              for part in (upper, lower)]
    return torch.cat(shaped, 1).flatten(0, 2)


def samples(images: torch.Tensor, temperature: float, ink: bool = True,
            pixels: bool = False, label: str | None = None, codes: bool = False) -> Figure:
    """`label` names the class a conditional model was asked for; `codes`: a discrete
    autoencoder's, drawn as code maps from its learned prior."""
    cols = math.ceil(math.sqrt(len(images)))
    written = f", written as {label}" if label else ""
    return image_grid(images, cols, f"New images: decoded {_drawn(temperature, codes)}{written}, "
                                    f"shown as {shown(pixels)}{_tempered(temperature, pixels)}",
                      ink)


def _drawn(temperature: float, codes: bool) -> str:
    """What a prior draw is: z ~ N(0, T^2 I), or a discrete autoencoder's code map."""
    if codes:
        return "code maps from the learned prior" + (
            "" if temperature == 1 else f" at T = {temperature:g}")
    return f"z ~ N(0, {'I' if temperature == 1 else f'{temperature:g}² I'})"


def _tempered(temperature: float, pixels: bool) -> str:
    """The temperature scales the draw of z only: drawn pixels keep p(x|z)'s own noise."""
    return " (T scales z only)" if pixels and temperature != 1 else ""


def class_samples(images: torch.Tensor, classes: list[str], temperature: float,
                  ink: bool = True, pixels: bool = False, codes: bool = False) -> Figure:
    """A conditional model's class grid: images (classes * columns, ...), one row per class,
    the same prior noise down each column."""
    return image_grid(images, len(images) // len(classes),
                      f"One row per class, one {_drawn(temperature, codes)} per column, shown as "
                      f"{shown(pixels)}{_tempered(temperature, pixels)}", ink,
                      row_names=classes)


def analogies(sources: torch.Tensor, decoded: torch.Tensor, classes: list[str],
              ink: bool = True) -> Figure:
    """sources (N, C, H, W), decoded (N, classes, C, H, W): each row is one image, then its
    style written as every class."""
    rows = torch.cat([sources[:, None], decoded], 1)
    return image_grid(rows.flatten(0, 1), rows.shape[1],
                      "Analogies: each image's code decoded with every label", ink,
                      column_names=["image", *classes])


def interpolations(strips: torch.Tensor, description: str, ink: bool = True) -> Figure:
    """strips: (pairs, steps, C, H, W), one pair per row."""
    return image_grid(strips.flatten(0, 1), strips.shape[1], description, ink)


def manifold(images: torch.Tensor, ink: bool = True, label: str | None = None) -> Figure:
    n = math.isqrt(len(images))
    written = f", as {label}" if label else ""
    return image_grid(images, n, f"Decoded grid over the prior's quantiles (z1 →, z2 ↑)"
                      f"{written}", ink)


def levels(images: torch.Tensor, groups: int, temperature: float, ink: bool = True) -> Figure:
    """A hierarchy's held levels: images (groups * columns, ...), row k holding k groups."""
    names = ["none held", *(f"top {k} held" for k in range(1, groups))]
    spread = "" if temperature == 1 else f" at T = {temperature:g}"
    return image_grid(images, len(images) // groups, f"What each level holds: row k keeps the "
                      f"top k latent groups, the rest drawn anew{spread}", ink, row_names=names)


def temperatures(images: torch.Tensor, values: tuple[float, ...], ink: bool = True) -> Figure:
    """The same noise at each temperature: images (len(values) * columns, ...)."""
    return image_grid(images, len(images) // len(values), "The same prior noise, each "
                      "group's spread scaled by T", ink, row_names=[f"T = {t:g}" for t in values])


def latent_scatter(points: torch.Tensor, labels: torch.Tensor | None, classes: tuple[str, ...],
                   method: str, means: str = "μ(x)") -> Figure:
    figure = Figure(figsize=(7, 6), dpi=DPI)
    axes = figure.add_subplot()
    scatter_codes(axes, points, labels, classes, method, size=3, alpha=0.7)
    axes.set_title(f"Validation posterior means {means}, {method}")
    return figure


def scatter_codes(axes, points: torch.Tensor, labels: torch.Tensor | None,
                  classes: tuple[str, ...], axis_name: str, size: float, alpha: float) -> None:
    """2-D codes (N, 2) as dots coloured by class, with a colour bar naming the classes
    (one colour, no bar, for unlabelled data)."""
    if labels is None:
        axes.scatter(points[:, 0], points[:, 1], color="tab:blue", s=size, alpha=alpha,
                     linewidths=0, rasterized=True)
    else:
        count = max(len(classes), 1)
        scatter = axes.scatter(points[:, 0], points[:, 1], c=labels,
                               cmap="tab10" if count <= 10 else "tab20" if count <= 20 else
                               "viridis", vmin=-0.5, vmax=count - 0.5, s=size, alpha=alpha,
                               linewidths=0, rasterized=True)
        ticks = range(0, count, max(1, count // 20))
        bar = axes.figure.colorbar(scatter, ax=axes, ticks=list(ticks), label="class")
        bar.ax.set_yticklabels([classes[i] for i in ticks])
    axes.set_xlabel(f"{axis_name} 1")
    axes.set_ylabel(f"{axis_name} 2")


def curves(metrics: list[dict[str, float]]) -> Figure:
    """Train and validation loss, reconstruction and KL (nats per image) per epoch; for a
    hierarchy each latent group's validation KL; and any other term the model names."""
    named = [key[len("val_"):] for key in term_columns(metrics[0])]
    groups = [name for name in named if name.startswith("kl_")]
    others = [name for name in named if not name.startswith("kl_")]
    panels = 3 + bool(groups) + bool(others)
    figure = Figure(figsize=(4 * panels, 3.6), dpi=DPI, layout="constrained")
    epochs = [row["epoch"] for row in metrics]
    axes_row = figure.subplots(1, panels)
    if groups:
        _group_curves(axes_row[3], epochs, metrics, groups, "validation KL per latent group "
                      "(top = 1)", lambda name: f"group {name.rsplit('_', 1)[1]}")
    if others:
        _group_curves(axes_row[-1], epochs, metrics, others, "the model's own terms "
                      "(validation)", str)
    for axes, part, name in zip(axes_row, ("loss", "recon", "kl"),
                                ("negative ELBO", "reconstruction", "KL")):
        for split, style in (("train", "o-"), ("val", "s--")):
            axes.plot(epochs, [row[f"{split}_{part}"] for row in metrics], style, label=split,
                      markersize=4)
        axes.set_title(f"{name} (nats / image)")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def compared_curves(runs: dict[str, list[dict[str, float]]]) -> Figure:
    """Several runs' curves overlaid, one colour each: negative ELBO, reconstruction and KL
    per epoch, validation solid and training dashed."""
    figure = Figure(figsize=(12, 3.6), dpi=DPI, layout="constrained")
    for axes, part, name in zip(figure.subplots(1, 3), ("loss", "recon", "kl"),
                                ("negative ELBO", "reconstruction", "KL")):
        for index, (label, metrics) in enumerate(runs.items()):
            epochs = [row["epoch"] for row in metrics]
            colour = f"C{index % 10}"
            axes.plot(epochs, [row[f"val_{part}"] for row in metrics], "o-", color=colour,
                      label=label, markersize=3)  # a marker: a one-epoch run is a point
            axes.plot(epochs, [row[f"train_{part}"] for row in metrics], "o--", color=colour,
                      markersize=3)
        axes.set_title(f"{name} (nats / image)")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def code_maps(images: torch.Tensor, maps: torch.Tensor, codes: int, ink: bool = True
              ) -> Figure:
    """Images (N, C, H, W) above their code maps (N, h, w), each code index a colour."""
    count = len(images)
    figure = Figure(figsize=(1.3 * count, 2.9), dpi=DPI, layout="constrained")
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        picture = images[column].float()
        grey = picture.shape[0] == 1
        picture = (1 - picture if grey and ink else picture).permute(1, 2, 0).clamp(0, 1)
        axes[0, column].imshow((picture.squeeze(-1) if grey else picture).numpy(),
                               cmap="gray", vmin=0, vmax=1)
        axes[1, column].imshow(maps[column].numpy(), cmap="nipy_spectral", vmin=0,
                               vmax=codes - 1, interpolation="nearest")
        for row in (0, 1):
            axes[row, column].set_axis_off()
    figure.suptitle(f"Validation images (top) and their code maps: each colour one of the "
                    f"{codes:,} codes")
    return figure


def code_usage(counts: torch.Tensor) -> Figure:
    """How often each code is used (counts (K,)), most used first, and the share in use."""
    ordered = counts.sort(descending=True).values.double()
    share = ordered / ordered.sum()
    used = int((counts > 0).sum())
    perplexity = math.exp(-(share[share > 0] * share[share > 0].log()).sum().item())
    figure = Figure(figsize=(7, 3.4), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    axes.bar(range(len(share)), share.numpy(), width=1.0, color="C0")
    axes.set_xlabel("code, most used first")
    axes.set_ylabel("share of the validation codes")
    axes.set_title(f"Code use: {used:,} of {len(counts):,} codes in use "
                   f"({100 * used / len(counts):.1f}%), perplexity {perplexity:.1f}")
    axes.grid(alpha=0.3, axis="y")
    return figure


def _group_curves(axes, epochs: list[int], metrics: list[dict[str, float]],
                  names: list[str], title: str, label) -> None:
    for name in names:
        axes.plot(epochs, [row[f"val_{name}"] for row in metrics], "s--", markersize=4,
                  label=label(name))
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


def traversals(pictures: torch.Tensor, units: list[int], kl: list[float],
               values: torch.Tensor, ink: bool = True) -> Figure:
    """(images, units, values, C, H, W) -> one block of columns per image, side by side: row
    u moves unit u across `values` with the image's other units held."""
    count, rows, steps = pictures.shape[:3]
    gap = torch.full((rows, 1, *pictures.shape[3:]), math.nan)
    blocks = [torch.cat([pictures[i], gap], 1) for i in range(count)]
    tiles = torch.cat(blocks, 1)[:, :-1].flatten(0, 1)
    columns = ([f"{v:+.1f}" for v in values.tolist()] + [""]) * count
    return image_grid(tiles, (steps + 1) * count - 1,
                      f"Latent traversals: each row sets one unit from {values[0]:+g} to "
                      f"{values[-1]:+g} (the prior's sd), the others held at the image's "
                      "posterior mean; units by KL", ink,
                      row_names=[f"z{u} {k:.2f}" for u, k in zip(units, kl)],
                      column_names=columns[:-1])


def unit_kl(kl: list[float]) -> Figure:
    """Each unit's KL (nats), largest first: the active units stand out."""
    order = sorted(range(len(kl)), key=lambda u: -kl[u])
    figure = Figure(figsize=(max(4.0, 0.35 * len(kl) + 1.5), 3.4), dpi=DPI,
                    layout="constrained")
    axes = figure.add_subplot()
    axes.bar(range(len(kl)), [kl[u] for u in order], color="tab:blue")
    axes.set_xticks(range(len(kl)), [f"z{u}" for u in order], fontsize=7,
                    rotation=90 if len(kl) > 16 else 0)
    axes.set_ylabel("KL(q(z_d|x) || N(0, 1)), nats")
    axes.set_title("Validation KL of each latent unit, largest first")
    axes.grid(axis="y", alpha=0.3)
    return figure


def mutual_information(information: list[list[float]], entropy: list[float],
                       factors: list[str], kl: list[float]) -> Figure:
    """Units x factors: each unit's mutual information with each factor over the factor's
    entropy (MIG's table), units by KL."""
    order = sorted(range(len(kl)), key=lambda u: -kl[u])
    shares = torch.tensor(information)[order] / torch.tensor(entropy).clamp_min(1e-12)
    figure = Figure(figsize=(1.1 * len(factors) + 2.5, 0.32 * len(kl) + 1.6), dpi=DPI,
                    layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(shares.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (row, col), share in zip(((r, c) for r in range(len(order)) for c in range(len(factors))),
                                 shares.flatten().tolist()):
        axes.text(col, row, f"{share:.2f}", ha="center", va="center", fontsize=7,
                  color="white" if share < 0.6 else "black")
    axes.set_xticks(range(len(factors)), factors, fontsize=8)
    axes.set_yticks(range(len(order)), [f"z{u}" for u in order], fontsize=7)
    axes.set_title("I(unit; factor) / H(factor): what MIG reads", fontsize=9)
    figure.colorbar(image, ax=axes)
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

