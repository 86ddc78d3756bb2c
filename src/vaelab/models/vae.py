"""The single-level VAE (Kingma & Welling 2014), the first family behind models/interface.py:

    q(z|x) = N(mu(x), diag sigma^2(x)),   p(z) = N(0, I),   p(x|z) = the likelihood

with the reference notebook's networks (networks.py) or residual ones, any likelihood,
conditioning on a label, beta and KL warm-up (through kl_weight), and the IWAE bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from ..likelihoods import make_likelihood, nll_samples
from ..losses import (
    elbo_terms,
    iwae_terms,
    kl_standard_normal,
    log_importance_weights,
)
from .interface import one_hot
from .networks import (
    ARCHS,
    REFERENCE_SHAPE,
    Decoder,
    Encoder,
    LocatelloDecoder,
    LocatelloEncoder,
    ResNetDecoder,
    ResNetEncoder,
)

if TYPE_CHECKING:
    from ..config import Config


class Decoded(NamedTuple):
    """One pass through the VAE. With K samples per image every z-shaped tensor gains a
    leading K: params (K, B, C * P, H, W), z (K, B, D); mu and logvar stay (B, D)."""

    params: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class VAE(nn.Module):
    """q(z|x) = N(mu(x), diag sigma^2(x)),  p(z) = N(0, I),  p(x|z) = `likelihood` with the
    decoder's outputs as its parameters (the reference's: Bernoulli logits). With `classes` > 0
    it is conditional: q(z|x, y) and p(x|z, y), and every method takes the labels y."""

    supports_exact = True  # one Gaussian latent with an N(0, I) prior: integrable on a grid
    term_names = ("recon", "kl")
    default_grad_clip = default_grad_skip = None  # the reference trains without either

    def __init__(self, latent_dim: int = 20, shape: tuple[int, int, int] = REFERENCE_SHAPE,
                 arch: str = "conv", likelihood: str = "bernoulli", components: int = 10,
                 classes: int = 0):
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"arch {arch!r} is unknown: choose one of {', '.join(ARCHS)}")
        self.latent_dim, self.shape, self.arch = latent_dim, tuple(shape), arch
        self.classes = classes
        self.likelihood = make_likelihood(likelihood, components)
        outputs = shape[0] * self.likelihood.params_per_channel
        if arch == "conv":
            self.encoder = Encoder(latent_dim, shape, classes)
            self.decoder = Decoder(latent_dim, shape, outputs, classes)
        elif arch == "locatello":
            self.encoder = LocatelloEncoder(latent_dim, shape, classes)
            self.decoder = LocatelloDecoder(latent_dim, shape, outputs, classes)
        else:
            self.encoder = ResNetEncoder(latent_dim, shape, classes)
            self.decoder = ResNetDecoder(latent_dim, shape, outputs, classes)
        bias = self.likelihood.initial_bias(shape[0])
        if bias is not None:  # set after every random draw: the weights are as before
            with torch.no_grad():
                self.decoder.net[-1].bias.copy_(bias)

    @classmethod
    def from_config(cls, config: Config) -> VAE:
        return cls(config.latent_dim, config.image_shape, config.arch, config.likelihood,
                   config.mixture_components, classes=config.classes or 0)

    @property
    def conditional(self) -> bool:
        return self.classes > 0

    @property
    def noise_size(self) -> int:
        return self.latent_dim

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return (self.latent_dim,)

    @property
    def code_dim(self) -> int:
        return self.latent_dim

    @property
    def summary(self) -> str:
        return f"{self.arch} VAE, latent size {self.latent_dim}"

    def condition(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The encoder's and decoder's extra input, (B, classes) float (interface.one_hot)."""
        return one_hot(labels, self.classes)

    # Outputs are float32 even under bf16 autocast: the sampling and the loss need the precision.
    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) in [0, 1] -> mu, logvar: (B, D)."""
        mu, logvar = self.encoder(x, self.condition(labels))
        return mu.float(), logvar.float()

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, D) -> the likelihood's parameters (B, C * P, H, W)."""
        return self.decoder(z, self.condition(labels)).float()

    def decode_mean(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, D) -> the picture to show, E[x|z] (B, C, H, W) in [0, 1]."""
        return self.likelihood.mean(self.decode(z, labels))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None,
                       eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): the noise is outside the graph, so gradients
        flow to mu and sigma. An explicit generator keeps runs resumable and evaluation fixed;
        a given `eps` (B, D) is used as it is (a data-parallel rank's slice of a global draw)."""
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    @staticmethod
    def sample_latents(mu: torch.Tensor, logvar: torch.Tensor, samples: int,
                       generator: torch.Generator | None = None,
                       eps: torch.Tensor | None = None) -> torch.Tensor:
        """`samples` draws z ~ q(z|x) per image: mu, logvar (B, D) -> z (samples, B, D);
        a given `eps` (samples, B, D) is used as it is."""
        if eps is None:
            eps = torch.randn((samples, *mu.shape), generator=generator, device=mu.device,
                              dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode_latents(self, z: torch.Tensor, labels: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """z (K, B, D) -> params (K, B, C * P, H, W): all K x B decoded in one batch, each
        sample of image b with image b's label."""
        y = self.condition(labels)
        if y is not None:
            y = y.expand(z.shape[0], *y.shape).flatten(0, 1)
        return self.decoder(z.flatten(0, 1), y).float().unflatten(0, z.shape[:2])

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                samples: int | None = None, eps: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Decoded:
        """x: (B, C, H, W) -> one z per image, or `samples` of them (the IWAE bound's),
        decoded. `eps`, if given, is the noise itself: (B, D), or (samples, B, D)."""
        mu, logvar = self.encode(x, labels)
        if samples is None:
            z = self.reparameterize(mu, logvar, generator, eps)
            return Decoded(self.decode(z, labels), z, mu, logvar)
        z = self.sample_latents(mu, logvar, samples, generator, eps)
        return Decoded(self.decode_latents(z, labels), z, mu, logvar)

    # ---- the interface (models/interface.py) ---------------------------------------------

    def draw_noise(self, count: int, generator: torch.Generator, samples: int | None = None
                   ) -> torch.Tensor:
        shape = ((samples,) if samples else ()) + (count, self.noise_size)
        return torch.randn(shape, generator=generator, device=generator.device)

    def terms(self, x: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None,
              kl_weight: float = 1.0, samples: int | None = None) -> dict[str, torch.Tensor]:
        """The negative ELBO's terms (losses.elbo_terms), or with `samples` K the IWAE
        bound as the objective (losses.iwae_terms); computed in float32 outside autocast."""
        out = self(x, samples=samples, eps=noise, labels=labels)
        with torch.autocast(x.device.type, enabled=False):
            if samples:
                found = iwae_terms(nll_samples(self.likelihood, out.params, x), out.z, out.mu,
                                   out.logvar, kl_weight)
            else:
                found = elbo_terms(self.likelihood.nll(out.params, x), out.mu, out.logvar,
                                   kl_weight)
        return found._asdict()

    def importance_terms(self, x: torch.Tensor, noise: torch.Tensor,
                         labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) in float64, noise (K, B, D)."""
        mu, logvar = self.encode(x, labels)
        z = self.sample_latents(mu, logvar, len(noise), eps=noise)
        nll = nll_samples(self.likelihood, self.decode_latents(z, labels), x).double()
        log_w = log_importance_weights(-nll, z.double(), mu.double(), logvar.double())
        kl = kl_standard_normal(mu, logvar).double()
        return {"log_w": log_w, "recon": nll, "kl": kl.expand_as(nll)}

    def group_means(self, x: torch.Tensor, labels: torch.Tensor | None = None
                    ) -> list[torch.Tensor]:
        return [self.encode(x, labels)[0]]

    def code(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(x, labels)[0]

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        mu, logvar = self.encode(x, labels)
        z = mu if generator is None else self.reparameterize(mu, logvar, generator)
        return self.decode(z, labels)

    def prior_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=generator.device)

    def from_prior(self, noise: torch.Tensor, temperature: float = 1.0,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
        """z = T * noise ~ N(0, T^2 I), decoded."""
        return self.decode(temperature * noise, labels)
