"""The ELBO's terms and the importance-weighted bound, as pure functions, one value per image.

    -ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || p(z))                      (nats per image)
    log w_k  = log p(x|z_k) + log p(z_k) - log q(z_k|x),   z_k ~ q(z|x)
    L_K(x)   = log (1/K) sum_k w_k  <=  log p(x),   L_1 = ELBO, L_K rises with K to log p(x)
"""

from __future__ import annotations

import math
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

    logits, x: (B, C, H, W) -> (B,). Computed from logits (log-sum-exp form), so it
    stays finite where sigmoid saturates; x may be grayscale in [0, 1] (the reference's targets).
    """
    pixel_nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return pixel_nll.flatten(1).sum(1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = -1/2 sum_d (1 + logvar - mu^2 - exp(logvar)).

    mu, logvar: (B, D) -> (B,).
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def elbo_terms(recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               beta: float = 1.0) -> ELBOTerms:
    """The negative ELBO and its parts for one z sample per image; see ELBOTerms.

    recon: -log p(x|z) (B,), from the model's likelihood; mu, logvar: (B, D).
    """
    kl = kl_standard_normal(mu, logvar)
    return ELBOTerms(recon + kl, recon, kl, recon + beta * kl)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor | float = 0.0,
                         logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)) = -1/2 sum_d (log 2 pi + logvar + (z - mu)^2 / exp(logvar)).

    z: (..., D) -> (...); mu and logvar broadcast against z (0, 0 gives the prior N(0, I)).
    """
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_importance_weights(log_px_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
                           logvar: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
    """log w_k = log p(x|z_k) + kl_weight * (log p(z_k) - log q(z_k|x)).

    log_px_z: (K, B); z: (K, B, D); mu, logvar: (B, D) -> (K, B). kl_weight < 1 is KL warm-up.
    """
    return log_px_z + kl_weight * (gaussian_log_density(z) - gaussian_log_density(z, mu, logvar))


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """L_K = logsumexp_k(log w_k) - log K: (K, B) -> (B,), computed stably."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def iwae_terms(nll: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               beta: float = 1.0) -> ELBOTerms:
    """K samples per image: objective = -L_K (the IWAE bound, Burda et al. 2016); the
    reported recon (averaged over the K samples) and analytic KL still add to the -ELBO.

    nll: -log p(x|z_k) (K, B); z: (K, B, D); mu, logvar: (B, D).
    """
    recon, kl = nll.mean(0), kl_standard_normal(mu, logvar)
    objective = -iwae_bound(log_importance_weights(-nll, z, mu, logvar, beta))
    return ELBOTerms(recon + kl, recon, kl, objective)


class Totals:
    """Running sums of the per-image terms over an epoch or a data set: the loss (the negative
    ELBO) and each of `names` (a model's term_names), kept on the device (no sync per batch);
    training and evaluation both report through it."""

    def __init__(self, device: torch.device, names: tuple[str, ...] = ("recon", "kl")):
        self.names = ("loss", *names)
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.images = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        parts = torch.stack([terms[name].sum() for name in self.names])
        self.sums += parts.detach().double()
        self.images += len(terms["loss"])

    def means(self, prefix: str, batch_size: int) -> dict[str, float]:
        """Nats per image, plus the reference notebook's per-batch convention: the mean over
        batches of each batch's summed loss = total loss / number of batches of `batch_size`."""
        n = max(self.images, 1)
        batches = max(math.ceil(self.images / batch_size), 1)
        sums = dict(zip(self.names, self.sums.tolist()))
        return {**{f"{prefix}_{name}": total / n for name, total in sums.items()},
                f"{prefix}_batch_loss": sums["loss"] / batches}
