"""The ELBO's terms as pure functions, one value per image (reduce afterwards).

    -ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || p(z))     (nats per image)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class ELBOTerms(NamedTuple):
    """Per-image terms, each (B,): loss = recon + kl is the negative ELBO;
    objective = recon + beta * kl is what training minimizes."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    objective: torch.Tensor


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) = -sum_pixels [x log s + (1 - x) log(1 - s)],  s = sigmoid(logits).

    logits, x: (B, 1, 28, 28) -> (B,). Computed from logits (log-sum-exp form), so it
    stays finite where sigmoid saturates; x may be grayscale in [0, 1] (the seed's targets).
    """
    pixel_nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return pixel_nll.flatten(1).sum(1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum_d (1 + logvar - mu^2 - exp(logvar)).

    mu, logvar: (B, D) -> (B,).
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def elbo_terms(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               beta: float = 1.0) -> ELBOTerms:
    """The negative ELBO and its parts for one z sample per image; see ELBOTerms."""
    recon = bernoulli_nll(logits, x)
    kl = kl_standard_normal(mu, logvar)
    return ELBOTerms(recon + kl, recon, kl, recon + beta * kl)
