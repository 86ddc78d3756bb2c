"""p(x|z) as an object: the decoder outputs its parameters, the likelihood turns them into
log p(x|z) per image and into the picture to show.

Training, evaluation, the figures, the report and the explorer only call these methods, so a
new likelihood (a discretized logistic for 8-bit images, say) plugs in here and nowhere else.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .losses import bernoulli_nll


class Likelihood(Protocol):
    name: str
    params_per_channel: int  # decoder outputs per sub-pixel: (B, C * this, H, W)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image: params (B, C * P, H, W), x (B, C, H, W) in [0, 1] -> (B,)."""

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The picture to show: E[x|z] in [0, 1], (B, C, H, W)."""

    def floor(self, x: torch.Tensor) -> float | None:
        """The smallest mean -log p(x|z) any model can reach on targets x, when that is above
        zero for reasons that are not the model's (None for a density of the data)."""


class Bernoulli:
    """The seed's: each sub-pixel x in [0, 1] under Bernoulli(sigmoid(logit)); one logit per
    sub-pixel. For grey x it is a cross-entropy, not a density of 8-bit images (see evaluate)."""

    name = "bernoulli"
    params_per_channel = 1

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_nll(params, x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def floor(self, x: torch.Tensor) -> float | None:
        """Grey targets: mean over images of sum H(x) = -[x log x + (1 - x) log(1 - x)], the
        cross-entropy of a model that predicts p = x exactly. Binary targets: None (it is 0)."""
        x = x.double()
        if bool(((x == 0) | (x == 1)).all()):
            return None
        return bernoulli_nll(torch.logit(x, eps=1e-12), x).mean().item()


LIKELIHOODS = {"bernoulli": Bernoulli}


def nll_samples(likelihood: Likelihood, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z_k) for K decodes of each image: params (K, B, ...), x (B, ...) -> (K, B)."""
    flat = params.flatten(0, 1)
    nll = likelihood.nll(flat, x.expand(params.shape[0], *x.shape).flatten(0, 1))
    return nll.view(params.shape[:2])
