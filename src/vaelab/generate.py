"""What a trained model shows, as tensors: reconstructions, samples, interpolations, latent maps.

Images come back as the likelihood's means E[x|z] in [0, 1] (or, where asked, a draw of the
pixels x ~ p(x|z)), shape (N, C, H, W), on the CPU.
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


@torch.inference_mode()
def encode_means(model: VAE, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Posterior means mu(x) of uint8 images (N, C, H, W) -> (N, D), CPU."""
    device = _device(model)
    return torch.cat([model.encode(to_float(images[i:i + batch_size].to(device)))[0].cpu()
                      for i in range(0, len(images), batch_size)])


@torch.inference_mode()
def decode_means(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """Latent points (N, D) -> the pictures they decode to, E[x|z] (N, C, H, W), CPU."""
    return model.decode_mean(z.to(_device(model))).cpu()


@torch.inference_mode()
def decode_pixels(model: VAE, z: torch.Tensor, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Latent points (N, D) -> one draw x ~ p(x|z) each (N, C, H, W) in [0, 1], CPU: the
    likelihood's own noise, which the mean averages away (`--sample-pixels`)."""
    return model.likelihood.sample(model.decode(z.to(_device(model))), generator).cpu()


def _decoded(model: VAE, z: torch.Tensor, pixels: bool, generator: torch.Generator
             ) -> torch.Tensor:
    return decode_pixels(model, z, generator) if pixels else decode_means(model, z)


@torch.inference_mode()
def reconstruct(model: VAE, images: torch.Tensor, sample: bool = False,
                seed: int = 0, pixels: bool = False) -> torch.Tensor:
    """Decode each image's posterior mean mu(x), or with `sample` a z ~ q(z|x) (seeded);
    show E[x|z], or with `pixels` a draw x ~ p(x|z) (seeded too)."""
    device = _device(model)
    generator = torch.Generator(device).manual_seed(seed)
    mu, logvar = model.encode(to_float(images.to(device)))
    if sample:
        mu = model.reparameterize(mu, logvar, generator)
    return _decoded(model, mu, pixels, generator)


@torch.inference_mode()
def sample_prior(model: VAE, n: int, temperature: float = 1.0, seed: int = 0,
                 pixels: bool = False) -> torch.Tensor:
    """Decode n draws z ~ N(0, T^2 I) to E[x|z], or with `pixels` to a draw x ~ p(x|z); the
    same seed gives the same images."""
    device = _device(model)
    generator = torch.Generator(device).manual_seed(seed)
    z = temperature * torch.randn(n, model.latent_dim, generator=generator, device=device)
    return _decoded(model, z, pixels, generator)


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
                spherical: bool = False) -> torch.Tensor:
    """Decode `steps` points between the posterior means of two uint8 images (C, H, W)."""
    mu = encode_means(model, torch.stack([image_a, image_b]))
    return decode_means(model, interpolation_path(mu[0], mu[1], steps, spherical))


def class_index(split: Split, name: str | int) -> int:
    """A class given by name (as its folder is called) or by index -> its index."""
    text = str(name)
    if text in split.classes:
        return split.classes.index(text)
    if text.isdigit() and int(text) < len(split.classes):
        return int(text)
    shown = ", ".join(split.classes[:12]) + (", ..." if len(split.classes) > 12 else "")
    raise VaelabError(f"class {text!r} is not one of this run's classes: {shown}")


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
    a, b = class_index(split, source), class_index(split, target)
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
def manifold(model: VAE, n: int = 20) -> torch.Tensor:
    """For a 2-D latent space: decode an n x n grid over the prior's quantiles 0.05 ... 0.95,
    z1 along rows (left to right), z2 down the columns (top = high)."""
    if model.latent_dim != 2:
        raise VaelabError(f"the manifold grid needs latent_dim 2, this run has "
                          f"{model.latent_dim}; use the latent scatter instead")
    values = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return decode_means(model, torch.stack([z1.flatten(), z2.flatten()], 1))
