"""p(x|z) as an object: the decoder outputs its parameters, the likelihood turns them into
log p(x|z) per image, into the picture to show (its mean) and into a sample of pixels.

Training, evaluation, the figures, the report and the explorer only call these methods:

    bernoulli         the reference's; a cross-entropy on grey values, a density of binary images
    logistic          a discretized logistic on the 256 levels of each sub-pixel
    logistic-mixture  a mixture of discretized logistics per sub-pixel (PixelCNN++'s, without
                      its dependence between channels: see discretized.py)

The two discrete ones are probabilities of 8-bit images, so their -log p(x) in bits per
dimension sets beside the literature's.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .discretized import DiscretizedLogistic, DiscretizedLogisticMixture
from .losses import bernoulli_nll


class Likelihood(Protocol):
    name: str
    params_per_channel: int  # decoder outputs per sub-pixel: (B, C * this, H, W)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image: params (B, C * P, H, W), x (B, C, H, W) in [0, 1] -> (B,)."""

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The picture to show: E[x|z] in [0, 1], (B, C, H, W)."""

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """One draw x ~ p(x|z) per sub-pixel, (B, C, H, W) in [0, 1] (`--sample-pixels`)."""

    def floor(self, x: torch.Tensor) -> float | None:
        """The smallest mean -log p(x|z) any model can reach on targets x, when that is above
        zero for reasons that are not the model's (None for a density of the data)."""

    def initial_bias(self, channels: int) -> torch.Tensor | None:
        """The decoder's last bias at the start, (C * P,) (None: PyTorch's default init)."""


class Bernoulli:
    """The reference's: each sub-pixel x in [0, 1] under Bernoulli(sigmoid(logit)); one logit per
    sub-pixel. For grey x it is a cross-entropy, not a density of 8-bit images (see evaluate)."""

    name = "bernoulli"
    params_per_channel = 1

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_nll(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Each sub-pixel 0 or 1 with probability sigmoid(logit) of 1."""
        u = torch.rand(params.shape, generator=generator, device=params.device)
        return (u < torch.sigmoid(params)).float()

    def floor(self, x: torch.Tensor) -> float | None:
        """Grey targets: mean over images of sum H(x) = -[x log x + (1 - x) log(1 - x)], the
        cross-entropy of a model that predicts p = x exactly. Binary targets: None (it is 0)."""
        x = x.double()
        if bool(((x == 0) | (x == 1)).all()):
            return None
        return bernoulli_nll(torch.logit(x, eps=1e-12), x).mean().item()

    def initial_bias(self, channels: int) -> None:
        return None  # the reference notebook's initialization, unchanged


LIKELIHOODS = {"bernoulli": Bernoulli, "logistic": DiscretizedLogistic,
               "logistic-mixture": DiscretizedLogisticMixture}
EIGHT_BIT = ("logistic", "logistic-mixture")  # densities of 8-bit images: bits/dim compare


def make_likelihood(name: str, components: int = 10) -> Likelihood:
    """The likelihood a config names; `components` is used by the mixture alone."""
    if name == "logistic-mixture":
        return DiscretizedLogisticMixture(components)
    return LIKELIHOODS[name]()


def nll_samples(likelihood: Likelihood, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z_k) for K decodes of each image: params (K, B, ...), x (B, ...) -> (K, B)."""
    flat = params.flatten(0, 1)
    nll = likelihood.nll(flat, x.expand(params.shape[0], *x.shape).flatten(0, 1))
    return nll.view(params.shape[:2])
