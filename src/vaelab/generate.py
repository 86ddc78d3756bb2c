"""What a trained model shows, as tensors: reconstructions, samples, interpolations, latent maps.

Images come back as the likelihood's means E[x|z] in [0, 1] (or, where asked, a draw of the
pixels x ~ p(x|z)), shape (N, C, H, W), on the CPU. A conditional model takes a label with
every image and every z (`labels`); an unconditional one ignores them.
"""

from __future__ import annotations

import logging

import torch

from .data import Split, to_float
from .errors import VaelabError
from .model import VAE

log = logging.getLogger(__name__)


def _device(model: VAE) -> torch.device:
    return next(model.parameters()).device


def _on(labels: torch.Tensor | None, device: torch.device, start: int = 0,
        stop: int | None = None) -> torch.Tensor | None:
    return labels[start:stop].to(device) if labels is not None else None


@torch.inference_mode()
def encode_means(model: VAE, images: torch.Tensor, labels: torch.Tensor | None = None,
                 batch_size: int = 1000) -> torch.Tensor:
    """Posterior means mu(x) of uint8 images (N, C, H, W) -> (N, D), CPU."""
    device = _device(model)
    return torch.cat([model.encode(to_float(images[i:i + batch_size].to(device)),
                                   _on(labels, device, i, i + batch_size))[0].cpu()
                      for i in range(0, len(images), batch_size)])


@torch.inference_mode()
def decode_means(model: VAE, z: torch.Tensor, labels: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Latent points (N, D) -> the pictures they decode to, E[x|z] (N, C, H, W), CPU."""
    device = _device(model)
    return model.decode_mean(z.to(device), _on(labels, device)).cpu()


@torch.inference_mode()
def decode_pixels(model: VAE, z: torch.Tensor, generator: torch.Generator | None = None,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """Latent points (N, D) -> one draw x ~ p(x|z) each (N, C, H, W) in [0, 1], CPU: the
    likelihood's own noise, which the mean averages away (`--sample-pixels`)."""
    device = _device(model)
    return model.likelihood.sample(model.decode(z.to(device), _on(labels, device)),
                                   generator).cpu()


def _decoded(model: VAE, z: torch.Tensor, pixels: bool, seed: int,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """E[x|z], or with `pixels` a draw x ~ p(x|z) seeded with `seed`."""
    if not pixels:
        return decode_means(model, z, labels)
    return decode_pixels(model, z, torch.Generator(_device(model)).manual_seed(seed), labels)


@torch.inference_mode()
def reconstruct(model: VAE, images: torch.Tensor, sample: bool = False, seed: int = 0,
                pixels: bool = False, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Decode each image's posterior mean mu(x), or with `sample` a z ~ q(z|x) (seeded);
    show E[x|z], or with `pixels` a draw x ~ p(x|z) (seeded too)."""
    device = _device(model)
    mu, logvar = model.encode(to_float(images.to(device)), _on(labels, device))
    if sample:
        mu = model.reparameterize(mu, logvar, torch.Generator(device).manual_seed(seed))
    return _decoded(model, mu, pixels, seed, labels)


def prior_draws(model: VAE, n: int, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """n draws z ~ N(0, T^2 I) (n, D) on the CPU, so that a seed gives the same draws on any
    device."""
    generator = torch.Generator().manual_seed(seed)
    return temperature * torch.randn(n, model.latent_dim, generator=generator)


@torch.inference_mode()
def sample_prior(model: VAE, n: int, temperature: float = 1.0, seed: int = 0,
                 label: int | None = None, pixels: bool = False) -> torch.Tensor:
    """Decode n draws z ~ N(0, T^2 I) to E[x|z], or with `pixels` to a draw x ~ p(x|z); the
    same seed gives the same images. A conditional model writes them all as class `label`."""
    labels = torch.full((n,), label) if label is not None else None
    return _decoded(model, prior_draws(model, n, temperature, seed), pixels, seed, labels)


@torch.inference_mode()
def class_grid(model: VAE, columns: int, temperature: float = 1.0, seed: int = 0,
               pixels: bool = False) -> torch.Tensor:
    """A conditional model's samples with one row per class and the same z down each column:
    (classes * columns, C, H, W), row-major."""
    z = prior_draws(model, columns, temperature, seed).repeat(model.classes, 1)
    labels = torch.arange(model.classes).repeat_interleave(columns)
    return _decoded(model, z, pixels, seed, labels)


@torch.inference_mode()
def analogies(model: VAE, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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
def interpolate(model: VAE, image_a: torch.Tensor, image_b: torch.Tensor, steps: int = 10,
                spherical: bool = False, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Decode `steps` points between the posterior means of two uint8 images (C, H, W).
    A conditional model encodes each image with its label (`labels`, (2,)) and moves the label
    with z: the one-hot vectors are blended along the path, so both ends are the two
    reconstructions and the class changes on the way."""
    mu = encode_means(model, torch.stack([image_a, image_b]), labels)
    path = interpolation_path(mu[0], mu[1], steps, spherical)
    return decode_means(model, path, label_path(model, labels, steps))


def label_path(model: VAE, labels: torch.Tensor | None, steps: int) -> torch.Tensor | None:
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
    """The seed's 6 -> 8 where those are classes; else the first two classes; for unlabelled
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
def manifold(model: VAE, n: int = 20, label: int | None = None) -> torch.Tensor:
    """For a 2-D latent space: decode an n x n grid over the prior's quantiles 0.05 ... 0.95,
    z1 along rows (left to right), z2 down the columns (top = high); a conditional model
    writes it as class `label`."""
    if model.latent_dim != 2:
        raise VaelabError(f"the manifold grid needs latent_dim 2, this run has "
                          f"{model.latent_dim}; use the latent scatter instead")
    values = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")
    labels = torch.full((n * n,), label) if label is not None else None
    return decode_means(model, torch.stack([z1.flatten(), z2.flatten()], 1), labels)
