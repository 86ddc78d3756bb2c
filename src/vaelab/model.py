"""The seed's convolutional VAE: encoder -> (mu, log sigma^2), reparameterize, decoder -> logits.

    Encoder  1x28x28 -Conv(4,s2)+ReLU-> 32x14x14 -Conv(4,s2)+ReLU-> 64x7x7 -Flatten-> 3136
             -> Linear(3136, D) = mu,  Linear(3136, D) = log sigma^2
    Decoder  D -Linear+ReLU-> 3136 = 64x7x7 -ConvT(4,s2)+ReLU-> 32x14x14 -ConvT(4,s2)-> 1x28x28

The decoder returns Bernoulli *logits*; the loss applies the sigmoid inside
`binary_cross_entropy_with_logits`, which is exact where sigmoid + BCE saturates.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

_HIDDEN = (64, 7, 7)


class Decoded(NamedTuple):
    """One pass through the VAE. With K samples per image every z-shaped tensor gains a
    leading K: logits (K, B, 1, 28, 28), z (K, B, D); mu and logvar stay (B, D)."""

    logits: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class Encoder(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.mu = nn.Linear(64 * 7 * 7, latent_dim)
        self.logvar = nn.Linear(64 * 7 * 7, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 1, 28, 28) in [0, 1] -> mu, logvar: (B, D)."""
        h = self.features(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 64 * 7 * 7), nn.ReLU(),
            nn.Unflatten(1, _HIDDEN),
            nn.ConvTranspose2d(64, 32, kernel_size=4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, kernel_size=4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D) -> Bernoulli logits (B, 1, 28, 28)."""
        return self.net(z)


class VAE(nn.Module):
    """q(z|x) = N(mu(x), diag sigma^2(x)),  p(z) = N(0, I),  p(x|z) = Bernoulli(sigmoid(logits))."""

    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = Encoder(latent_dim)
        self.decoder = Decoder(latent_dim)

    # Outputs are float32 even under bf16 autocast: the sampling and the loss need the precision.
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        return mu.float(), logvar.float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).float()

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): the noise is outside the graph, so gradients
        flow to mu and sigma. An explicit generator keeps runs resumable and evaluation fixed."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    @staticmethod
    def sample_latents(mu: torch.Tensor, logvar: torch.Tensor, samples: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """`samples` draws z ~ q(z|x) per image: mu, logvar (B, D) -> z (samples, B, D)."""
        eps = torch.randn((samples, *mu.shape), generator=generator, device=mu.device,
                          dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z (K, B, D) -> logits (K, B, 1, 28, 28): all K x B decoded in one batch."""
        return self.decode(z.flatten(0, 1)).unflatten(0, z.shape[:2])

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                samples: int | None = None) -> Decoded:
        """x: (B, 1, 28, 28) -> one z per image, or `samples` of them (the IWAE bound's),
        decoded. Both go through forward so that torch.compile (and any wrapper) sees them."""
        mu, logvar = self.encode(x)
        if samples is None:
            z = self.reparameterize(mu, logvar, generator)
            return Decoded(self.decode(z), z, mu, logvar)
        z = self.sample_latents(mu, logvar, samples, generator)
        return Decoded(self.decode_latents(z), z, mu, logvar)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
