"""Disentangling VAEs: the single-level VAE (vae.py: the same q(z|x), N(0, I) prior, networks
and likelihoods) trained with objectives that push its units towards independent factors.

    beta-tcvae  Chen et al. 2018: the KL's average over the data split into index-code mutual
                information, total correlation and dimension-wise KL, each weighted;
                minimizes recon + w (alpha MI + beta TC + gamma DWKL)
    factorvae   Kim & Mnih 2018: the total correlation estimated by a discriminator that tells
                codes from codes whose units are shuffled across the batch, trained beside the
                VAE; minimizes recon + w KL + gamma TC, and the discriminator's cross-entropy
    capacity    Burgess et al. 2018: the KL held near a target C that rises linearly from 0 to
                capacity_max over capacity_steps; minimizes recon + w gamma |KL - C|

(The beta-VAE, Higgins et al. 2017, is `--model vae --beta B`.) w is the KL weight of --beta
and --kl-warmup. Every family reports the negative ELBO, recon + kl, as its loss, so losses
compare across families, and its own terms by name. Objectives that compare the images of a
batch see the whole global batch under torchrun (distributed.global_batch): a data-parallel run
computes what one process does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..distributed import global_batch
from ..losses import gaussian_log_density, kl_standard_normal
from .vae import VAE

if TYPE_CHECKING:
    from ..config import Config


def _single_level(config: Config) -> dict:
    """The VAE's own arguments, from a config."""
    return dict(latent_dim=config.latent_dim, shape=config.image_shape, arch=config.arch,
                likelihood=config.likelihood, components=config.mixture_components,
                classes=config.classes or 0)


def kl_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                     dataset_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image i of this rank's rows, with minibatch-weighted sampling over the global batch
    of M images (Chen et al. 2018, section 3 and appendix C.1), N = dataset_size:

        log q(z_i)        ~ logsumexp_j log q(z_i | x_j) - log(N M)
        log prod q(z_id)  ~ sum_d [logsumexp_j log q(z_id | x_j) - log(N M)]
        MI   = log q(z_i | x_i) - log q(z_i)
        TC   = log q(z_i) - log prod_d q(z_id)
        DWKL = log prod_d q(z_id) - log p(z_i)

    MI + TC + DWKL = log q(z_i|x_i) - log p(z_i), the one-sample estimate of the KL. z, mu,
    logvar: (B, D) -> three (B,)."""
    everyone, _ = global_batch(torch.cat([mu, logvar], 1))
    mus, logvars = everyone.chunk(2, dim=1)
    # log q(z_id | x_j): (B, M, D)
    log_q = -0.5 * (math.log(2 * math.pi) + logvars[None]
                    + (z[:, None] - mus[None]).pow(2) * torch.exp(-logvars[None]))
    log_norm = math.log(dataset_size * len(mus))
    log_qz = torch.logsumexp(log_q.sum(2), 1) - log_norm
    log_product = (torch.logsumexp(log_q, 1) - log_norm).sum(1)
    log_qz_x = gaussian_log_density(z, mu, logvar)
    return log_qz_x - log_qz, log_qz - log_product, log_product - gaussian_log_density(z)


class BetaTCVAE(VAE):
    """The beta-TCVAE: recon + w (alpha MI + beta TC + gamma DWKL)."""

    term_names = ("recon", "kl", "mi", "tc", "dwkl")

    def __init__(self, *, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                 dataset_size: int = 60_000, **vae):
        super().__init__(**vae)
        self.weights, self.dataset_size = (alpha, beta, gamma), dataset_size

    @classmethod
    def from_config(cls, config: Config) -> BetaTCVAE:
        return cls(alpha=config.tcvae_alpha, beta=config.tcvae_beta, gamma=config.tcvae_gamma,
                   dataset_size=config.train_images or 60_000, **_single_level(config))

    @property
    def summary(self) -> str:
        alpha, beta, gamma = self.weights
        return f"{super().summary}, beta-TCVAE (alpha {alpha:g}, beta {beta:g}, gamma {gamma:g})"

    def terms(self, x: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None,
              kl_weight: float = 1.0, samples: int | None = None) -> dict[str, torch.Tensor]:
        out = self(x, eps=noise, labels=labels)
        with torch.autocast(x.device.type, enabled=False):
            recon = self.likelihood.nll(out.params, x)
            kl = kl_standard_normal(out.mu, out.logvar)
            parts = kl_decomposition(out.z, out.mu, out.logvar, self.dataset_size)
            penalty = sum(weight * part for weight, part in zip(self.weights, parts))
        return {"objective": recon + kl_weight * penalty, "loss": recon + kl, "recon": recon,
                "kl": kl, **dict(zip(("mi", "tc", "dwkl"), parts))}


class CapacityVAE(VAE):
    """Controlled capacity: recon + w gamma |KL - C(step)|. The step counts training passes
    (a buffer, so a checkpoint keeps it and a resumed run goes on from it). |KL - C| is taken
    per image, as Burgess et al.'s equation writes it (implementations often take the batch's
    mean KL first): each image's KL is held near C, and an image's objective does not depend
    on the images beside it."""

    term_names = ("recon", "kl", "capacity")

    def __init__(self, *, capacity_max: float = 25.0, capacity_steps: int = 100_000,
                 gamma: float = 1000.0, **vae):
        super().__init__(**vae)
        self.capacity_max, self.capacity_steps, self.gamma = capacity_max, capacity_steps, gamma
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, config: Config) -> CapacityVAE:
        return cls(capacity_max=config.capacity_max, capacity_steps=config.capacity_steps,
                   gamma=config.capacity_gamma, **_single_level(config))

    @property
    def summary(self) -> str:
        return (f"{super().summary}, controlled capacity (to {self.capacity_max:g} nats over "
                f"{self.capacity_steps} steps, gamma {self.gamma:g})")

    def capacity(self) -> float:
        """C now, nats: the target for the KL."""
        return self.capacity_max * min(1.0, int(self.steps) / self.capacity_steps)

    def terms(self, x: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None,
              kl_weight: float = 1.0, samples: int | None = None) -> dict[str, torch.Tensor]:
        out = self(x, eps=noise, labels=labels)
        target = self.capacity()
        if self.training and torch.is_grad_enabled():  # one training step
            self.steps += 1
        with torch.autocast(x.device.type, enabled=False):
            recon = self.likelihood.nll(out.params, x)
            kl = kl_standard_normal(out.mu, out.logvar)
        return {"objective": recon + kl_weight * self.gamma * (kl - target).abs(),
                "loss": recon + kl, "recon": recon, "kl": kl,
                "capacity": torch.full_like(kl, target)}


class FactorVAE(VAE):
    """FactorVAE: recon + w KL + gamma TC, with TC = log D(z) / (1 - D(z)) from a discriminator
    D trained, in the same step, to tell codes z ~ q(z) from codes whose every unit is
    permuted across the batch (a sample of prod_d q(z_d)).

    One backward pass trains both: the TC term reaches the encoder through z but not the
    discriminator (its weights enter it detached), and the discriminator's cross-entropy
    reaches the discriminator but not the encoder (the codes enter it detached). Both are
    stepped by the run's one Adam at its learning rate; Kim & Mnih give the discriminator
    Adam's betas (0.5, 0.9), we keep the run's (0.9, 0.999), and permute the same batch rather
    than a second one. The permutations come from noise the model draws with its latents
    (noise_size is twice the latent size), so they are as reproducible as the rest."""

    term_names = ("recon", "kl", "tc", "discriminator")
    LAYERS = 6

    def __init__(self, *, gamma: float = 35.0, hidden: int = 1000, **vae):
        super().__init__(**vae)
        self.gamma = gamma
        layers: list[nn.Module] = []
        width = self.latent_dim
        for _ in range(self.LAYERS):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.discriminator = nn.Sequential(*layers, nn.Linear(width, 1))

    @classmethod
    def from_config(cls, config: Config) -> FactorVAE:
        return cls(gamma=config.factorvae_gamma, hidden=config.factorvae_hidden,
                   **_single_level(config))

    @property
    def summary(self) -> str:
        return f"{super().summary}, FactorVAE (gamma {self.gamma:g})"

    @property
    def noise_size(self) -> int:
        return 2 * self.latent_dim  # the latents' noise, then the permutations' keys

    def terms(self, x: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None,
              kl_weight: float = 1.0, samples: int | None = None) -> dict[str, torch.Tensor]:
        eps, keys = noise.split(self.latent_dim, dim=-1)
        out = self(x, eps=eps, labels=labels)
        z = out.z.float()
        everyone, start = global_batch(torch.cat([z, keys], 1).detach())
        codes, order = everyone.split(self.latent_dim, dim=1)
        permuted = codes.gather(0, order.argsort(0))[start:start + len(z)]
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        with torch.autocast(x.device.type, enabled=False):
            recon = self.likelihood.nll(out.params, x)
            kl = kl_standard_normal(out.mu, out.logvar)
            tc = functional_call(self.discriminator, frozen, (z,)).squeeze(1)
            discriminator = (F.softplus(-self.discriminator(z.detach()).squeeze(1))
                             + F.softplus(self.discriminator(permuted).squeeze(1)))
        return {"objective": recon + kl_weight * kl + self.gamma * tc + discriminator,
                "loss": recon + kl, "recon": recon, "kl": kl, "tc": tc,
                "discriminator": discriminator}

    def importance_terms(self, x: torch.Tensor, noise: torch.Tensor,
                         labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return super().importance_terms(x, noise[..., :self.latent_dim], labels)

    def prior_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=generator.device)
