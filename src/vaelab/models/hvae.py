"""A top-down hierarchical VAE, in the line of the Ladder VAE (Sønderby et al. 2016), NVAE
(Vahdat & Kautz 2020) and VDVAE (Child 2021): `--model hvae`.

A bottom-up path of residual blocks reads the image at several resolutions (half its size,
then halving down to 7x7 or 4x4). A top-down path starts from a learned state at the coarsest
resolution and, group by group, holds the latents z_1 (top) ... z_L, each a (c, h, w) map:

    p(z_l | z_<l)    = N(mu_p, sigma_p^2)                    from the top-down state h
    q(z_l | x, z_<l) = N(mu_p + dmu, (sigma_p exp(dlog))^2)  from h and the bottom-up features

so the posterior is a correction of the prior (NVAE's residual normal), and both start equal
(the correction's last layer starts at zero): every group's KL starts at zero, and

    KL(q || p) = sum over the group's units of  dmu^2 / (2 sigma_p^2) + (exp(2 dlog) - 1) / 2
                                                 - dlog

in closed form. Each z_l enters h (a 1x1 convolution added to it) before the next group. The
decoder's last layer turns the finest state into the likelihood's parameters; the objective
is the ELBO summed over the groups' KLs:  -ELBO = -log p(x | z_1..L) + sum_l KL_l.

What keeps a deep VAE stable here (the anchors' lessons, chosen for small CPU runs): the
residual posterior above; log-scales soft-clamped to (-5, 5) (NVAE's 5 tanh(x / 5)), so no
exp overflows; the residual blocks' last layers scaled down at the start (VDVAE), so the paths
begin near the identity; and in training, gradient-norm clipping (VDVAE's; the family's
default_grad_clip). Skipping outlying updates (--grad-skip) is there, off by default.

The code that interpolation, the latent map and the explorer move in is the top group's
posterior mean. Decoding a code holds the lower groups at their prior means. With classes,
the label enters the bottom-up path as one constant plane per class beside the image and the
top-down path's starting state.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_shape
from ..likelihoods import make_likelihood
from .interface import one_hot

if TYPE_CHECKING:
    from ..config import Config

LOG_SCALE_BOUND = 5.0  # log-scales live in (-5, 5): scales from 0.007 to 150


def soft_clamp(x: torch.Tensor) -> torch.Tensor:
    """5 tanh(x / 5): the identity near 0, bounded, with a gradient everywhere (NVAE)."""
    return LOG_SCALE_BOUND * torch.tanh(x / LOG_SCALE_BOUND)


class Block(nn.Module):
    """x + conv(silu(conv(silu(x)))), 3x3 convolutions; the last one starts scaled by
    `start_scale` so that a deep stack begins close to the identity."""

    def __init__(self, channels: int, start_scale: float):
        super().__init__()
        self.inner = nn.Conv2d(channels, channels, 3, padding=1)
        self.outer = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.outer.weight.mul_(start_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(F.silu(self.inner(F.silu(x))))


class Group(nn.Module):
    """One latent group of the top-down path: its prior from h, its posterior as a correction
    of the prior from h and the bottom-up features, z merged into h, then a residual block."""

    def __init__(self, channels: int, latent_channels: int, start_scale: float):
        super().__init__()
        self.prior = nn.Conv2d(channels, 2 * latent_channels, 1)
        self.correction = nn.Conv2d(2 * channels, 2 * latent_channels, 3, padding=1)
        self.merge = nn.Conv2d(latent_channels, channels, 1)
        self.block = Block(channels, start_scale)
        with torch.no_grad():  # q = p at the start: every KL starts at zero
            self.correction.weight.zero_()
            self.correction.bias.zero_()

    def prior_of(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu_p, log sigma_p), each (B, c, h, w)."""
        mu, log_scale = self.prior(h).float().chunk(2, 1)
        return mu, soft_clamp(log_scale)

    def correction_of(self, h: torch.Tensor, features: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(dmu, dlog): q's mean is mu_p + dmu, its log-scale log sigma_p + dlog."""
        shift, log_ratio = self.correction(torch.cat([h, features], 1)).float().chunk(2, 1)
        return shift, soft_clamp(log_ratio)

    def proceed(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.block(h + self.merge(z.to(h.dtype)))


class HVAE(nn.Module):
    """A top-down hierarchical VAE over images of `shape` (C, H, W) with `groups` latent groups
    of `latent_channels` channels at each resolution, `channels` wide; see the module's
    docstring. It implements models/interface.py."""

    supports_exact = False  # many groups of many units: no grid can integrate them
    default_grad_clip = 200.0  # VDVAE clips at a few hundred: a rare spike is bounded
    # No skipping by default: VDVAE's thresholds are for a loss per dimension, ours is per image
    # and grows with the image; a fixed threshold skipped every step of binarized MNIST from
    # the start (its first gradients' norms are above 2000), so the model never moved.
    default_grad_skip = None

    def __init__(self, shape: tuple[int, int, int] = (1, 28, 28), likelihood: str = "bernoulli",
                 components: int = 10, classes: int = 0, channels: int = 64,
                 latent_channels: int = 8, groups: int = 2):
        super().__init__()
        self.shape, self.classes = tuple(shape), classes
        self.likelihood = make_likelihood(likelihood, components)
        halvings = check_shape(self.shape, "--model hvae")
        # resolutions from half the image's size down, finest first: 28 -> 14, 7
        self.scales = [(self.shape[1] >> s, self.shape[2] >> s) for s in range(1, halvings + 1)]
        self.groups_per_scale, self.latent_channels = groups, latent_channels
        start = 1 / math.sqrt(2 * groups * len(self.scales) + 1)  # over all blocks
        self.stem = nn.Conv2d(self.shape[0] + classes, channels, 4, stride=2, padding=1)
        self.up_blocks = nn.ModuleList(Block(channels, start)
                                       for _ in range(groups * len(self.scales)))
        self.top = nn.Parameter(torch.zeros(1, channels, *self.scales[-1]))
        self.label_in = nn.Linear(classes, channels) if classes else None
        self.down_groups = nn.ModuleList(Group(channels, latent_channels, start)
                                         for _ in range(groups * len(self.scales)))
        self.out_block = Block(channels, start)
        self.out = nn.ConvTranspose2d(channels, self.shape[0] * self.likelihood.params_per_channel,
                                      4, stride=2, padding=1)
        bias = self.likelihood.initial_bias(self.shape[0])
        if bias is not None:
            with torch.no_grad():
                self.out.bias.copy_(bias)

    @classmethod
    def from_config(cls, config: Config) -> HVAE:
        return cls(config.image_shape, config.likelihood, config.mixture_components,
                   config.classes or 0, config.hvae_channels, config.hvae_latent_channels,
                   config.hvae_groups)

    # ---- sizes ---------------------------------------------------------------------------

    @property
    def conditional(self) -> bool:
        return self.classes > 0

    @property
    def group_shapes(self) -> list[tuple[int, int, int]]:
        """(c, h, w) of each latent group, top first."""
        return [(self.latent_channels, *scale) for scale in reversed(self.scales)
                for _ in range(self.groups_per_scale)]

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.group_shapes)

    @property
    def noise_size(self) -> int:
        return sum(self.group_sizes)

    @property
    def code_dim(self) -> int:
        return self.group_sizes[0]

    @property
    def term_names(self) -> tuple[str, ...]:
        return ("recon", "kl", *(f"kl_{g}" for g in range(1, len(self.group_sizes) + 1)))

    @property
    def summary(self) -> str:
        sides = ", ".join(f"{h}x{w}" for h, w in reversed(self.scales))
        return f"hierarchical VAE, {len(self.group_sizes)} latent groups at {sides}"

    # ---- the two paths -------------------------------------------------------------------

    def bottom_up(self, x: torch.Tensor, y: torch.Tensor | None) -> list[torch.Tensor]:
        """The features each latent group reads, in top-down order (coarsest, last first)."""
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1)
        h = self.stem(x)
        features = []
        blocks = iter(self.up_blocks)
        for index in range(len(self.scales)):
            if index:
                h = F.avg_pool2d(h, 2)
            for _ in range(self.groups_per_scale):
                h = next(blocks)(h)
                features.append(h)
        return features[::-1]

    def _start(self, count: int, y: torch.Tensor | None) -> torch.Tensor:
        h = self.top.expand(count, -1, -1, -1)
        if y is not None:
            h = h + self.label_in(y.to(h.dtype))[:, :, None, None]
        return h

    def top_down(self, count: int, y: torch.Tensor | None, choose) -> tuple[torch.Tensor, list]:
        """Walk the groups top first: `choose(g, h)` returns group g's z (B, c, h, w) and
        whatever it wants kept; returns the likelihood's parameters and the kept values."""
        h, kept = self._start(count, y), []
        for g, group in enumerate(self.down_groups):
            if g and g % self.groups_per_scale == 0:  # the next resolution down
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            z, keep = choose(g, group, h)
            kept.append(keep)
            h = group.proceed(h, z)
        return self.out(self.out_block(h)).float(), kept

    def _split(self, noise: torch.Tensor) -> list[torch.Tensor]:
        """(B, noise_size) -> each group's (B, c, h, w), top first."""
        parts = noise.split(list(self.group_sizes), -1)
        return [part.reshape(noise.shape[0], *shape) for part, shape in
                zip(parts, self.group_shapes)]

    def posterior_pass(self, x: torch.Tensor, y: torch.Tensor | None, noise: torch.Tensor | None
                       ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Through q: z_l = mu_q + sigma_q * eps_l (eps from `noise` (B, noise_size); None:
        the means). Per group: its KL (B,) and log p(z_l|z_<l) - log q(z_l|x, z_<l) (B,)."""
        features = self.bottom_up(x, y)
        eps = self._split(noise) if noise is not None else None

        def choose(g, group, h):
            mu_p, log_p = group.prior_of(h)
            shift, log_ratio = group.correction_of(h, features[g])
            kl = (0.5 * (shift * torch.exp(-log_p)).pow(2)
                  + 0.5 * torch.expm1(2 * log_ratio) - log_ratio).flatten(1).sum(1)
            if eps is None:
                return mu_p + shift, {"kl": kl, "mean": (mu_p + shift).flatten(1)}
            e = eps[g]
            z = mu_p + shift + torch.exp(log_p + log_ratio) * e
            # log N(z; mu_q, s_q) - log N(z; mu_p, s_p), the constants cancel
            log_q = -0.5 * e.pow(2) - (log_p + log_ratio)
            log_prior = -0.5 * ((z - mu_p) * torch.exp(-log_p)).pow(2) - log_p
            return z, {"kl": kl, "log_ratio": (log_prior - log_q).flatten(1).sum(1)}

        return self.top_down(x.shape[0], y, choose)

    def prior_pass(self, noise: torch.Tensor, temperature: float, y: torch.Tensor | None,
                   code: torch.Tensor | None = None) -> torch.Tensor:
        """Through p: z_l = mu_p + T sigma_p eps_l; with `code`, the top group is that code
        and the lower groups sit at their prior means."""
        eps = self._split(noise)

        def choose(g, group, h):
            mu_p, log_p = group.prior_of(h)
            if code is not None:
                return (code.reshape(mu_p.shape) if g == 0 else mu_p), None
            return mu_p + temperature * torch.exp(log_p) * eps[g], None

        return self.top_down(noise.shape[0], y, choose)[0]

    # ---- the interface (models/interface.py) ---------------------------------------------

    def condition(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return one_hot(labels, self.classes)

    def draw_noise(self, count: int, generator: torch.Generator, samples: int | None = None
                   ) -> torch.Tensor:
        shape = ((samples,) if samples else ()) + (count, self.noise_size)
        return torch.randn(shape, generator=generator, device=generator.device)

    def terms(self, x: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None,
              kl_weight: float = 1.0, samples: int | None = None) -> dict[str, torch.Tensor]:
        """-ELBO = recon + sum_l KL_l, and each group's KL; `samples` (the IWAE bound) is not
        taken (Config refuses --iw-train with --model hvae)."""
        params, kept = self.posterior_pass(x, self.condition(labels), noise)
        with torch.autocast(x.device.type, enabled=False):
            recon = self.likelihood.nll(params, x)
            kls = [part["kl"] for part in kept]
            kl = torch.stack(kls).sum(0)
        return {"objective": recon + kl_weight * kl, "loss": recon + kl, "recon": recon,
                "kl": kl, **{f"kl_{g}": value for g, value in enumerate(kls, 1)}}

    def importance_terms(self, x: torch.Tensor, noise: torch.Tensor,
                         labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """log w = log p(x|z) + sum_l [log p(z_l|z_<l) - log q(z_l|x, z_<l)], noise (K, B, N):
        the K x B paths in one batch (float64 results)."""
        samples, count = noise.shape[:2]
        y = self.condition(labels)
        y = y.repeat(samples, 1) if y is not None else None
        x_each = x.repeat(samples, 1, 1, 1)
        params, kept = self.posterior_pass(x_each, y, noise.flatten(0, 1))
        nll = self.likelihood.nll(params, x_each).double()
        log_ratio = torch.stack([part["log_ratio"] for part in kept]).sum(0).double()
        kls = [part["kl"].double() for part in kept]
        found = {"log_w": -nll + log_ratio, "recon": nll, "kl": torch.stack(kls).sum(0),
                 **{f"kl_{g}": value for g, value in enumerate(kls, 1)}}
        return {name: value.view(samples, count) for name, value in found.items()}

    def group_means(self, x: torch.Tensor, labels: torch.Tensor | None = None
                    ) -> list[torch.Tensor]:
        _, kept = self.posterior_pass(x, self.condition(labels), None)
        return [part["mean"] for part in kept]

    def code(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.group_means(x, labels)[0]

    def decode(self, code: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        placeholder = code.new_zeros(code.shape[0], self.noise_size)
        return self.prior_pass(placeholder, 0.0, self.condition(labels), code)

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        noise = None if generator is None else self.draw_noise(len(x), generator)
        return self.posterior_pass(x, self.condition(labels), noise)[0]

    def prior_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.noise_size, generator=generator, device=generator.device)

    def from_prior(self, noise: torch.Tensor, temperature: float = 1.0,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.prior_pass(noise, temperature, self.condition(labels))
