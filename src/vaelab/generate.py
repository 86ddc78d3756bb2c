"""What a trained model shows, as tensors: reconstructions, samples, interpolations, latent maps.

Images come back as the likelihood's means E[x|z] in [0, 1] (or, where asked, a draw of the
pixels x ~ p(x|z)), shape (N, C, H, W), on the CPU. A conditional model takes a label with
every image and every code (`labels`); an unconditional one ignores them. Everything here goes
through the model interface (models/interface.py): codes are what a model's `code` gives (a
single-level VAE's z, a hierarchy's top group), and samples come from its prior's noise.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .data import Split, to_float
from .errors import VaelabError
from .models import learns_prior

log = logging.getLogger(__name__)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _on(labels: torch.Tensor | None, device: torch.device, start: int = 0,
        stop: int | None = None) -> torch.Tensor | None:
    return labels[start:stop].to(device) if labels is not None else None


@torch.inference_mode()
def encode_means(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                 batch_size: int = 1000) -> torch.Tensor:
    """The codes of uint8 images (N, C, H, W), posterior means -> (N, code_dim), CPU."""
    device = _device(model)
    return torch.cat([model.code(to_float(images[i:i + batch_size].to(device)),
                                 _on(labels, device, i, i + batch_size)).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.inference_mode()
def decode_means(model: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Codes (N, code_dim) -> the pictures they decode to, E[x|z] (N, C, H, W), CPU."""
    device = _device(model)
    return model.likelihood.mean(model.decode(z.to(device), _on(labels, device))).cpu()


@torch.inference_mode()
def decode_pixels(model: nn.Module, z: torch.Tensor, generator: torch.Generator | None = None,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """Codes (N, code_dim) -> one draw x ~ p(x|z) each (N, C, H, W) in [0, 1], CPU: the
    likelihood's own noise, which the mean averages away (`--sample-pixels`)."""
    device = _device(model)
    return model.likelihood.sample(model.decode(z.to(device), _on(labels, device)),
                                   generator).cpu()


def _shown(model: nn.Module, params: torch.Tensor, pixels: bool, seed: int
           ) -> torch.Tensor:
    """The likelihood's mean E[x|z], or with `pixels` a draw x ~ p(x|z) seeded with `seed`."""
    if not pixels:
        return model.likelihood.mean(params).cpu()
    return model.likelihood.sample(params, torch.Generator(params.device).manual_seed(seed)
                                   ).cpu()


def _decoded(model: nn.Module, z: torch.Tensor, pixels: bool, seed: int,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Codes decoded, shown as E[x|z], or with `pixels` a draw x ~ p(x|z) seeded with `seed`."""
    device = _device(model)
    return _shown(model, model.decode(z.to(device), _on(labels, device)), pixels, seed)


@torch.inference_mode()
def reconstruct(model: nn.Module, images: torch.Tensor, sample: bool = False, seed: int = 0,
                pixels: bool = False, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Decode each image through the posterior at its means, or with `sample` drawing from it
    (seeded); show E[x|z], or with `pixels` a draw x ~ p(x|z) (seeded too)."""
    device = _device(model)
    generator = torch.Generator(device).manual_seed(seed) if sample else None
    params = model.reconstruct(to_float(images.to(device)), _on(labels, device), generator)
    return _shown(model, params, pixels, seed)


def can_sample(model: nn.Module) -> bool:
    """False for a discrete autoencoder whose prior over codes is not trained yet."""
    return not learns_prior(model) or model.prior is not None


@torch.inference_mode()
def code_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
              batch_size: int = 1000) -> torch.Tensor:
    """A discrete autoencoder's code indices (N, h, w) of uint8 images, CPU."""
    device = _device(model)
    return torch.cat([model.code_map(to_float(images[i:i + batch_size].to(device)),
                                     _on(labels, device, i, i + batch_size)).cpu()
                      for i in range(0, len(images), batch_size)])


def prior_noise(model: nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    """The noise of n prior samples (n, noise_size), drawn on the CPU so that a seed gives
    the same samples on any device (for a single-level VAE, z ~ N(0, I) itself)."""
    return model.prior_noise(n, torch.Generator().manual_seed(seed))


@torch.inference_mode()
def from_noise(model: nn.Module, noise: torch.Tensor, temperature: float = 1.0,
               labels: torch.Tensor | None = None, pixels: bool = False, seed: int = 0
               ) -> torch.Tensor:
    """Prior samples from their noise (n, noise_size), each group's spread scaled by
    `temperature`, shown as E[x|z] or with `pixels` as a draw x ~ p(x|z) (seeded)."""
    device = _device(model)
    params = model.from_prior(noise.to(device), temperature, _on(labels, device))
    return _shown(model, params, pixels, seed)


def sample_prior(model: nn.Module, n: int, temperature: float = 1.0, seed: int = 0,
                 label: int | None = None, pixels: bool = False) -> torch.Tensor:
    """n samples from the prior at temperature T (z ~ N(0, T^2 I) for a single-level VAE),
    as E[x|z] or with `pixels` a draw x ~ p(x|z); the same seed gives the same images. A
    conditional model writes them all as class `label`."""
    labels = torch.full((n,), label) if label is not None else None
    return from_noise(model, prior_noise(model, n, seed), temperature, labels, pixels, seed)


def class_grid(model: nn.Module, columns: int, temperature: float = 1.0, seed: int = 0,
               pixels: bool = False) -> torch.Tensor:
    """A conditional model's samples with one row per class and the same noise down each
    column: (classes * columns, C, H, W), row-major."""
    noise = prior_noise(model, columns, seed).repeat(model.classes, 1)
    labels = torch.arange(model.classes).repeat_interleave(columns)
    return from_noise(model, noise, temperature, labels, pixels, seed)


def held_levels(model: nn.Module, columns: int, temperature: float = 1.0, seed: int = 0,
                label: int | None = None) -> torch.Tensor:
    """What each level of a hierarchy holds: row k holds the top k latent groups of one prior
    sample and draws the groups below afresh in every column (row 0 holds none), so a row's
    columns differ only in what its lower groups carry: (groups * columns, C, H, W)."""
    sizes = model.group_sizes
    base = prior_noise(model, 1, seed)
    fresh = prior_noise(model, len(sizes) * columns, seed + 1)
    held = torch.tensor(sizes).cumsum(0).tolist()
    rows = []
    for k in range(len(sizes)):
        noise = fresh[k * columns:(k + 1) * columns].clone()
        cut = held[k - 1] if k else 0
        noise[:, :cut] = base[:, :cut]
        rows.append(noise)
    labels = torch.full((len(sizes) * columns,), label) if label is not None else None
    return from_noise(model, torch.cat(rows), temperature, labels)


@torch.inference_mode()
def analogies(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Style transfer across classes: each image's code z = mu(x, y) decoded with every label.
    (N, C, H, W) uint8 -> (N, classes, C, H, W): row i is image i's style written as each
    class."""
    z = encode_means(model, images, labels)
    every = torch.arange(model.classes)
    return decode_means(model, z.repeat_interleave(model.classes, 0),
                        every.repeat(len(images))).unflatten(0, (len(images), model.classes))


def interpolation_path(a: torch.Tensor, b: torch.Tensor, steps: int,
                       spherical: bool = False) -> torch.Tensor:
    """`steps` evenly spaced points from a to b (D,) -> (steps, D), both ends exact."""
    return interpolate_at(a, b, torch.linspace(0, 1, steps, dtype=a.dtype), spherical)


def interpolate_at(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float,
                   spherical: bool = False) -> torch.Tensor:
    """Points at positions t in [0, 1] between a and b (D,) -> (len(t), D).

    Linear: (1 - t) a + t b. Spherical (slerp): sin((1 - t) w)/sin w a + sin(t w)/sin w b,
    with w the angle between a and b; it keeps the norm typical of Gaussian samples.
    """
    t = torch.as_tensor(t, dtype=a.dtype).reshape(-1, 1)
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1, 1))
    if not spherical or omega.abs() < 1e-4:  # nearly parallel: slerp is linear there
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.inference_mode()
def interpolate(model: nn.Module, image_a: torch.Tensor, image_b: torch.Tensor, steps: int = 10,
                spherical: bool = False, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Decode `steps` points between the posterior means of two uint8 images (C, H, W).
    A conditional model encodes each image with its label (`labels`, (2,)) and moves the label
    with z: the one-hot vectors are blended along the path, so both ends are the two
    reconstructions and the class changes on the way."""
    mu = encode_means(model, torch.stack([image_a, image_b]), labels)
    path = interpolation_path(mu[0], mu[1], steps, spherical)
    return decode_means(model, path, label_path(model, labels, steps))


def label_path(model: nn.Module, labels: torch.Tensor | None, steps: int) -> torch.Tensor | None:
    """For a conditional model, the labels (2,) blended linearly in `steps` steps -> (steps,
    classes) weights; None for an unconditional one."""
    if not model.conditional:
        return None
    ends = torch.nn.functional.one_hot(labels, model.classes).double()
    return interpolation_path(ends[0], ends[1], steps).float()


def class_index(classes: tuple[str, ...], name: str | int) -> int:
    """A class given by name (as its folder is called) or by index -> its index."""
    text = str(name)
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    raise VaelabError(f"class {text!r} is not one of this run's classes: {shown} (or their "
                      f"indices 0-{len(classes) - 1})")


def one_per_class(split: Split, n: int) -> torch.Tensor:
    """Indices of n validation images taking the classes in turn (the first image of each
    class, then the second, ...), so that a few images show every class they can."""
    if split.labels is None:
        raise VaelabError("this run's data have no classes")
    by_class = [torch.nonzero(split.labels == label).flatten()
                for label in range(len(split.classes))]
    turns = [found[turn] for turn in range(max(map(len, by_class)))
             for found in by_class if turn < len(found)]
    if not turns:
        raise VaelabError("the validation data hold no labelled image")
    return torch.stack(turns[:n])


def pick_pairs(split: Split, source: str | int, target: str | int, pairs: int
               ) -> list[tuple[int, int]]:
    """Pairs of validation images to interpolate between. Labelled data: the first `pairs`
    images of class `source` matched with the first of class `target` (deterministic); for one
    class with itself, the first `pairs` images go to the next `pairs`, never an image to
    itself. Unlabelled data: `source` and `target` are the two images' indices."""
    if split.labels is None:
        chosen = []
        for index in (source, target):
            if not str(index).isdigit() or int(index) >= len(split):
                raise VaelabError(f"--from/--to {index!r}: this run's data have no classes, so "
                                  f"they name validation images 0-{len(split) - 1}")
            chosen.append(int(index))
        return [(chosen[0], chosen[1])]
    a, b = class_index(split.classes, source), class_index(split.classes, target)
    same = a == b
    indices = []
    for label in {a: None, b: None}:  # each class once, in order
        found = torch.nonzero(split.labels == label).flatten()[:2 * pairs if same else pairs]
        if len(found) < (2 if same else 1):
            raise VaelabError(f"no {'two images' if same else 'image'} of class "
                              f"{split.classes[label]!r} in the validation data; choose a class "
                              "it holds, or pick images with --index I J")
        indices.append(found.tolist())
    if same:
        half = len(indices[0]) // 2
        return list(zip(indices[0][:half], indices[0][half:2 * half]))
    return list(zip(*indices))


def default_pair(split: Split) -> tuple[str, str]:
    """The reference's 6 -> 8 where those are classes; else the first two classes; for unlabelled
    data, validation images 0 -> 1."""
    if split.labels is None:
        return "0", "1"
    if {"6", "8"} <= set(split.classes):
        return "6", "8"
    return split.classes[0], split.classes[min(1, len(split.classes) - 1)]


def project_2d(codes: torch.Tensor, method: str = "pca", seed: int = 0) -> torch.Tensor:
    """(N, D) -> (N, 2): the codes themselves when D = 2, else PCA (or t-SNE) coordinates."""
    if codes.shape[1] == 1:
        return torch.cat([codes, torch.zeros_like(codes)], 1)
    if codes.shape[1] == 2 and method == "pca":
        return codes
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise VaelabError("t-SNE needs scikit-learn: pip install 'vaelab[tsne]'") from None
        log.info("t-SNE of %d codes: about a minute on a CPU", len(codes))
        return torch.from_numpy(TSNE(2, init="pca", random_state=seed).fit_transform(
            codes.double().numpy())).float()
    mean, directions, _ = principal_axes(codes)
    return principal_coordinates(codes, mean, directions).float()


def principal_coordinates(codes: torch.Tensor, mean: torch.Tensor, directions: torch.Tensor
                          ) -> torch.Tensor:
    """(N, D) -> (N, 2) float64: coordinates along the first two directions, zero-padded
    where there are fewer (D = 1, or a single code)."""
    coordinates = (codes.double() - mean) @ directions[:2].T
    return torch.nn.functional.pad(coordinates, (0, 2 - coordinates.shape[1]))


def principal_axes(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of codes (N, D), in float64: their mean (D,), the principal directions as
    orthonormal rows (min(N, D), D), and the standard deviation along each. Each direction's
    sign is fixed (first coordinate >= 0), so the same codes always give the same axes."""
    codes = codes.double()
    mean = codes.mean(0)
    _, singular, vt = torch.linalg.svd(codes - mean, full_matrices=False)
    vt = vt * torch.where(vt[:, :1] < 0, -1.0, 1.0).to(vt)
    return mean, vt, singular / max(len(codes) - 1, 1) ** 0.5


@torch.inference_mode()
def manifold(model: nn.Module, n: int = 20, label: int | None = None) -> torch.Tensor:
    """For a 2-D code: decode an n x n grid over the prior's quantiles 0.05 ... 0.95,
    z1 along rows (left to right), z2 down the columns (top = high); a conditional model
    writes it as class `label`."""
    if model.code_dim != 2:
        raise VaelabError(f"the manifold grid needs a 2-dimensional code, this run's has "
                          f"{model.code_dim}; use the latent scatter instead")
    values = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")
    labels = torch.full((n * n,), label) if label is not None else None
    return decode_means(model, torch.stack([z1.flatten(), z2.flatten()], 1), labels)
