"""A run's figures: each takes a loaded Run (and its validation Split) and returns a matplotlib
Figure; `vaelab sample`, `reconstruct`, `interpolate`, ... save one each, the report all of them."""

from __future__ import annotations

import logging

import torch
from matplotlib.figure import Figure

from . import generate, plots, units
from .data import Split, to_float
from .errors import VaelabError
from .models import learns_prior
from .runs import Run

log = logging.getLogger(__name__)


# What the model was measured against, by --binarize, in words (eval.json keeps the setting).
TARGETS = {"none": "grayscale", "dynamic": "binarized (dynamic)", "static": "binarized (static)"}


def targets(binarize: str) -> str:
    """The targets of a run with this --binarize, as prose says them: "grayscale targets"."""
    return f"{TARGETS.get(binarize, binarize)} targets"


# The most images one reconstruction or sample figure shows: 16 pairs of rows of 16
# reconstructions, or a 16x16 grid of samples; a figure of more is too large to look at.
MAX_FIGURE_IMAGES = 256


def _at_least(flag: str, value: float, low: float) -> None:
    if value < low:
        raise VaelabError(f"{flag} {value} is not allowed: it must be at least {low}")


def _at_most_a_figure(n: int) -> None:
    if n > MAX_FIGURE_IMAGES:
        raise VaelabError(f"--n {n} is more than one figure shows ({MAX_FIGURE_IMAGES} at "
                          "most): ask for fewer, or make several figures with --seed")


def ink(run: Run) -> bool:
    """The IDX sets are light strokes on black, shown as dark ink on white (the seed's look);
    your own images are shown as they are."""
    return run.config.data is None


def figure_reconstructions(run: Run, val: Split, n: int = 16, sample: bool = False,
                           seed: int = 0, pixels: bool = False) -> Figure:
    _at_least("--n", n, 1)
    _at_most_a_figure(n)
    if n > len(val):
        log.warning("--n %d: the validation set holds %d images; showing all of them", n,
                    len(val))
    # The IDX sets' first images are the seed's figure; a folder's are sorted by class, so
    # its images are taken evenly spaced through the validation set instead.
    spread = run.config.data is not None and len(val) > n
    chosen = torch.linspace(0, len(val) - 1, n).round().long() if spread else torch.arange(
        min(n, len(val)))
    decoded = generate.reconstruct(run.model, val.images[chosen], sample, seed, pixels,
                                   _labels(val, chosen))
    return plots.reconstructions(to_float(val.images[chosen]), decoded, sample, ink(run),
                                 pixels)


def _labels(val: Split, chosen: torch.Tensor) -> torch.Tensor | None:
    """The chosen images' labels: what a conditional model encodes and decodes them with."""
    return val.labels[chosen] if val.labels is not None else None


def figure_samples(run: Run, n: int | None = None, temperature: float = 1.0, seed: int = 0,
                   label: str | int | None = None, pixels: bool = False) -> Figure:
    """New images from the prior. A conditional run draws them all as class `label`; without
    one it draws its class grid: n // classes columns (default 10), one row per class."""
    if not temperature > 0:
        raise VaelabError(f"--temperature {temperature} is not allowed: it must be > 0")
    index = run.label(label)
    if run.model.conditional and index is None:
        columns = 10 if n is None else n // run.model.classes
        _at_least("--n (a multiple of the classes, for the class grid)", columns, 1)
        images = generate.class_grid(run.model, columns, temperature, seed, pixels)
        return plots.class_samples(images, list(run.classes), temperature, ink(run), pixels,
                                   learns_prior(run.model))
    n = 64 if n is None else n
    _at_least("--n", n, 1)
    _at_most_a_figure(n)
    images = generate.sample_prior(run.model, n, temperature, seed, index, pixels)
    of = f"class {run.classes[index]}" if index is not None else None
    return plots.samples(images, temperature, ink(run), pixels, of, learns_prior(run.model))


def figure_analogies(run: Run, val: Split, n: int = 8) -> Figure:
    """n validation images, one from each class in turn, each decoded as every class."""
    _at_least("--n", n, 1)
    if not run.model.conditional:
        raise VaelabError(f"{run.path} is not conditional: analogies decode one code with "
                          "every label, which needs a run trained with --conditional")
    chosen = generate.one_per_class(val, n)
    decoded = generate.analogies(run.model, val.images[chosen], val.labels[chosen])
    return plots.analogies(to_float(val.images[chosen]), decoded, list(run.classes), ink(run))


def figure_interpolation(run: Run, val: Split, source: str | None = None,
                         target: str | None = None, steps: int = 10, pairs: int = 4,
                         spherical: bool = False, index: tuple[int, int] | None = None
                         ) -> Figure:
    """Strips between pairs of validation images: of classes `source` and `target` (names or
    indices; unlabelled data: two image indices), or the images `index` (I, J)."""
    _at_least("--steps", steps, 2)
    _at_least("--pairs", pairs, 1)
    if index is not None:
        for i in index:
            if not 0 <= i < len(val):
                raise VaelabError(f"--index {i} is outside the validation set (0-{len(val) - 1})")
        chosen = [tuple(index)]
    else:
        default = generate.default_pair(val)
        chosen = generate.pick_pairs(val, source or default[0], target or default[1], pairs)
    strips = torch.stack([generate.interpolate(
        run.model, val.images[i], val.images[j], steps, spherical,
        _labels(val, torch.tensor([i, j]))) for i, j in chosen])
    kind = "spherical" if spherical else "linear"
    label = ", label blended along" if run.model.conditional else ""
    ends = " → ".join(_name(val, i, by_image=index is not None) for i in chosen[0])
    return plots.interpolations(strips, f"{ends}: {kind} path between posterior means{label}, "
                                        f"{steps} steps", ink(run))


def _name(val: Split, index: int, by_image: bool) -> str:
    """An end of an interpolation: its class (pairs chosen by class), or the image asked for,
    with its class in parentheses when the data have classes."""
    of_class = val.classes[int(val.labels[index])] if val.labels is not None else None
    if not by_image and of_class is not None:
        return of_class
    return f"image {index}" + (f" ({of_class})" if of_class is not None else "")


def figure_latent(run: Run, val: Split, method: str = "pca",
                  codes: torch.Tensor | None = None) -> Figure:
    """The validation set's codes in 2-D; `codes` if they are already encoded."""
    if codes is None:
        codes = generate.encode_means(run.model, val.images, val.labels)
    points = generate.project_2d(codes, method, run.config.seed)
    name = "t-SNE" if method == "tsne" else ("PCA" if codes.shape[1] > 2 else "z")
    return plots.latent_scatter(points, val.labels, val.classes, name,
                                "μ(x, y)" if run.model.conditional else "μ(x)")


def figure_manifold(run: Run, n: int = 20, label: str | int | None = None) -> Figure:
    """The 2-D latent space decoded on a grid; a conditional run writes it as class `label`
    (default: the first class)."""
    _at_least("--n", n, 2)
    index = run.label(label if label is not None else 0) if run.model.conditional else None
    of = f"class {run.classes[index]}" if index is not None else None
    return plots.manifold(generate.manifold(run.model, n, index), ink(run), of)


def figure_levels(run: Run, columns: int = 8, temperature: float = 1.0, seed: int = 0,
                  label: str | int | None = None) -> Figure:
    """What each latent group holds (models with several): row k holds the top k groups of
    one prior sample and draws the groups below afresh in every column."""
    _at_least("--n", columns, 1)
    groups = len(run.model.group_sizes)
    if groups < 2:
        raise VaelabError(f"{run.path} has one latent group ({run.model.summary}): there are "
                          "no levels to hold; use `vaelab sample`")
    index = run.label(label)
    images = generate.held_levels(run.model, columns, temperature, seed, index)
    return plots.levels(images, groups, temperature, ink(run))


def figure_temperatures(run: Run, columns: int = 8, seed: int = 0,
                        temperatures: tuple[float, ...] = (0.6, 0.8, 1.0)) -> Figure:
    """The same prior noise decoded at each temperature, one row per temperature."""
    noise = generate.prior_noise(run.model, columns, seed)
    label = torch.zeros(columns, dtype=torch.long) if run.model.conditional else None
    images = torch.cat([generate.from_noise(run.model, noise, t, label) for t in temperatures])
    return plots.temperatures(images, temperatures, ink(run))


def figure_traversals(run: Run, val: Split, n: int = 3, steps: int = 9, limit: float = 3.0,
                      kl: torch.Tensor | None = None) -> tuple[Figure, Figure]:
    """The traversals of `n` validation images (spread through the set), units sorted by
    their validation KL (`kl`, if it is already measured); and the KL of every unit as bars."""
    _at_least("--n", n, 1)
    _at_least("--steps", steps, 2)
    _at_least("--limit", limit, 1e-3)
    kl = (kl if kl is not None else units.unit_kl(run, val.images, val.labels)).tolist()
    order = sorted(range(len(kl)), key=lambda u: -kl[u])
    chosen = torch.linspace(0, len(val) - 1, min(n, len(val))).round().long()
    values = torch.linspace(-limit, limit, steps)
    pictures = units.traversals(run, val.images[chosen], order, values, _labels(val, chosen))
    return (plots.traversals(pictures, order, [kl[u] for u in order], values, ink(run)),
            plots.unit_kl(kl))


def figure_codes(run: Run, val: Split, n: int = 8) -> tuple[Figure, Figure]:
    """A discrete autoencoder's code maps of `n` validation images, and how often each code
    is used over the whole validation set."""
    if not learns_prior(run.model):
        raise VaelabError(f"{run.path} is a --model {run.config.model} run: code maps are a "
                          "discrete autoencoder's (--model vqvae or fsq)")
    _at_least("--n", n, 1)
    chosen = torch.linspace(0, len(val) - 1, min(n, len(val))).round().long()
    maps = generate.code_maps(run.model, val.images, val.labels)  # every image's, once
    counts = torch.bincount(maps.flatten(), minlength=run.model.codebook_size)
    return (plots.code_maps(to_float(val.images[chosen]), maps[chosen],
                            run.model.codebook_size, ink(run)), plots.code_usage(counts))


def figure_mutual_information(scores: dict) -> Figure:
    """From RUN/disentanglement.json: the units x factors mutual information."""
    return plots.mutual_information(scores["mutual_information"], scores["factor_entropy"],
                                    scores["factors"], scores["unit_kl"])


def figure_curves(run: Run) -> Figure:
    if not run.metrics:
        raise VaelabError(f"{run.path} has no metrics.csv rows to plot")
    return plots.curves(run.metrics)


def standard_figures(run: Run, val: Split) -> dict[str, Figure]:
    """Every figure of a run at its defaults, by file stem."""
    figures = {"curves": figure_curves(run), "reconstructions": figure_reconstructions(run, val)}
    if generate.can_sample(run.model):
        figures["samples"] = figure_samples(run, seed=run.config.seed)
    else:
        log.warning("no samples: %s has no prior over its codes yet (vaelab train-prior %s)",
                    run.path, run.path)
    try:
        figures["interpolation"] = figure_interpolation(run, val)
    except VaelabError as err:  # a tiny validation set may hold no pair: the rest still shows
        log.warning("no interpolation figure: %s", err)
    posterior = units.posteriors(run, val.images, val.labels) if run.model.supports_exact \
        else None  # one Gaussian z: one encoder pass gives the latent map and the units' KL
    figures["latent"] = figure_latent(run, val, codes=posterior[0] if posterior else None)
    if run.model.conditional:
        figures["analogies"] = figure_analogies(run, val)
    if run.model.code_dim == 2:
        figures["manifold"] = figure_manifold(run)
    if len(run.model.group_sizes) > 1:  # a hierarchy: its temperatures and its levels
        figures["temperatures"] = figure_temperatures(run, seed=run.config.seed)
        figures["levels"] = figure_levels(run, seed=run.config.seed)
    if learns_prior(run.model):  # discrete codes: their maps and their use
        figures["code_map"], figures["code_usage"] = figure_codes(run, val)
    if run.model.supports_exact:  # one Gaussian z: what each of its units holds
        figures["traversal"], figures["unit_kl"] = figure_traversals(
            run, val, kl=units.unit_kl_of(*posterior))
    scores = units.read_scores(run.path)
    if scores is not None:
        figures["mutual_information"] = figure_mutual_information(scores)
    return figures
