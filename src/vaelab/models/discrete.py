"""Autoencoders with discrete latents: VQ-VAE (van den Oord et al. 2017) and FSQ (Mentzer et
al. 2023), behind models/interface.py.

An encoder maps an image to a grid of vectors (a quarter of its height and width: 7x7 for
MNIST), each replaced by a code; a decoder maps the grid of codes back to the likelihood's
parameters. The two families differ only in how a vector becomes a code:

    vqvae  its nearest entry of a codebook of K vectors (--codebook-size, --code-dim); the
           straight-through gradient; the commitment loss beta ||z_e - sg(z_q)||^2 (beta 0.25,
           as the paper); the codebook follows the encoder by exponential moving averages
           (decay 0.99, the paper's appendix), not by gradients.
    fsq    each of its channels bounded by tanh and rounded to one of a few levels
           (--levels 8,5,5,5: 1,000 codes); no codebook, no extra loss.

The bound on -log p(x). Training sees a uniform prior over the codes, as the paper does: the
posterior is a point mass, so KL(q || p) = log K at each of the grid's positions, and the
negative ELBO is recon + h w log K nats ("kl" below). A prior learned afterwards over the code
maps (`vaelab train-prior`, prior.py) replaces log K h w by -log p(codes) in `evaluate`:
bits/dim = (-log p(codes) - log p(x | codes)) / dims, the VQ-VAE paper's number.

The code the figures and the explorer move in is the encoder's continuous output before
quantization (h w channels numbers), decoded through the quantizer: interpolation walks there
and snaps to codes. Sampling needs the learned prior: without one it is a one-line refusal.

Dead codes (VQ-VAE). A codebook entry no encoder output comes near stops being updated and is
never used again: the codebook collapses to a few entries (2 epochs of 6,400 MNIST images
without the cure used 2% of 512 entries on the validation images; with it, 83%). The cure
has two parts: at the first training step every entry is set to an encoder output of the
global batch, evenly spaced through it (a start in the data, not in an arbitrary box); and
afterwards an entry whose moving average of use falls below DEAD_SHARE of the average entry's
is re-seeded, in the same step, with the encoder output of the global batch that is quantized
worst (the largest error first, each output used once). Both choices are deterministic, so a
resumed or data-parallel run makes the same ones.
`--vqvae-dead-codes keep` turns the cure off, for contrast (bench/discrete.py measures both).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from .. import distributed
from ..config import check_shape, parse_levels
from ..errors import VaelabError
from ..likelihoods import make_likelihood
from .interface import one_hot

if TYPE_CHECKING:
    from ..config import Config

DECAY = 0.99        # the codebook's moving averages (the paper's appendix)
COMMITMENT = 0.25   # beta of the commitment loss (the paper's)
DEAD_SHARE = 0.03   # an entry used less than this share of the average entry's use is dead
EPSILON = 1e-5      # Laplace smoothing of the use counts
TRAIN_PSNR_IMAGES = 8  # images of each training batch whose PSNR is measured


class Quantized(NamedTuple):
    """A grid of encoder outputs quantized: z (B, D, h, w) with the straight-through gradient,
    the codes' indices (B, h, w), and an extra loss per image (B,) (VQ-VAE's commitment)."""

    z: torch.Tensor
    indices: torch.Tensor
    extra: torch.Tensor


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels // 2, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(channels // 2, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class DiscreteAutoencoder(nn.Module):
    """The networks and the interface shared by both families; a subclass says how to quantize
    (`quantize`), how many codes there are (`codebook_size`) and the channels of a code
    (`code_channels`)."""

    supports_exact = False
    default_grad_clip = default_grad_skip = None
    learns_prior = True  # sampling needs a prior trained over its code maps (prior.py)
    noise_size = 0       # a point-mass posterior: nothing to draw

    def __init__(self, shape: tuple[int, int, int], likelihood: str, components: int,
                 classes: int, channels: int, code_channels: int, network: str):
        super().__init__()
        self.shape, self.classes = tuple(shape), classes
        check_shape(self.shape, network)
        self.grid = (self.shape[1] // 4, self.shape[2] // 4)
        self.likelihood = make_likelihood(likelihood, components)
        self.code_channels = code_channels
        outputs = self.shape[0] * self.likelihood.params_per_channel
        self.encoder = nn.Sequential(
            nn.Conv2d(self.shape[0] + classes, channels, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            Residual(channels), Residual(channels), nn.ReLU(),
            nn.Conv2d(channels, code_channels, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(code_channels + classes, channels, 3, padding=1),
            Residual(channels), Residual(channels), nn.ReLU(),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(channels, outputs, 4, stride=2, padding=1))
        bias = self.likelihood.initial_bias(self.shape[0])
        if bias is not None:
            with torch.no_grad():
                self.decoder[-1].bias.copy_(bias)
        self.prior = None  # a PixelCNN over the code maps, once trained (prior.py)

    # ---- sizes ---------------------------------------------------------------------------

    @property
    def conditional(self) -> bool:
        return self.classes > 0

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """The encoder's continuous outputs, one group (what active units count)."""
        return (self.code_channels * self.positions,)

    @property
    def code_dim(self) -> int:
        return self.code_channels * self.positions

    @property
    def term_names(self) -> tuple[str, ...]:
        return ("recon", "kl", "commit", "psnr", "usage", "perplexity")

    # ---- the networks --------------------------------------------------------------------

    def _planes(self, y: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        """A label as constant planes beside the features (a conditional model's input)."""
        if y is None:
            return h
        return torch.cat([h, y.to(h.dtype)[:, :, None, None].expand(-1, -1, *h.shape[2:])], 1)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) -> the continuous grid z_e (B, D, h, w), float32."""
        return self.encoder(self._planes(one_hot(labels, self.classes), x)).float()

    def decode_grid(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """A grid of code vectors (B, D, h, w) -> the likelihood's parameters."""
        return self.decoder(self._planes(one_hot(labels, self.classes), z)).float()

    # ---- the interface (models/interface.py) ---------------------------------------------

    def draw_noise(self, count: int, generator: torch.Generator, samples: int | None = None
                   ) -> torch.Tensor:
        shape = ((samples,) if samples else ()) + (count, 0)
        return torch.zeros(shape, device=generator.device)

    def terms(self, x: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None,
              kl_weight: float = 1.0, samples: int | None = None) -> dict[str, torch.Tensor]:
        """recon + commitment is trained; "loss" is the negative ELBO under the uniform prior
        (recon + h w log K); psnr per image; the share of codes in use and their perplexity
        over the global batch (the same for each of its images)."""
        z_e = self.encode(x, labels)
        with torch.autocast(x.device.type, enabled=False):
            quantized = self.quantize(z_e)
        params = self.decode_grid(quantized.z, labels)
        with torch.autocast(x.device.type, enabled=False):
            recon = self.likelihood.nll(params, x)
            kl = torch.full_like(recon, self.positions * math.log(self.codebook_size))
            usage, perplexity = self.code_statistics(quantized.indices)
            psnr = self._psnr(params.detach(), x)
            return {"objective": recon + quantized.extra, "loss": recon + kl, "recon": recon,
                    "kl": kl, "commit": quantized.extra.detach(),
                    "psnr": psnr,
                    "usage": usage.expand_as(recon), "perplexity": perplexity.expand_as(recon)}

    def _psnr(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """PSNR of E[x|z] per image, in dB (pixels in [0, 1]). In training, the first
        TRAIN_PSNR_IMAGES images' mean stands for the batch's: the exact mean of a discretized
        likelihood sums 256 levels per sub-pixel, and on every image (150 ms of a 360 ms
        step, 64 MNIST images, 3-component mixture) it slowed training by 40%."""
        if not self.training:
            return _psnr(self.likelihood.mean(params), x)
        some = _psnr(self.likelihood.mean(params[:TRAIN_PSNR_IMAGES]), x[:TRAIN_PSNR_IMAGES])
        return some.mean().expand(len(x))

    def code_statistics(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The share of the K codes used by the global batch, and the perplexity of their use
        (exp of its entropy: K if all were used equally, 1 for one code)."""
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
        counts = distributed.all_sum(counts)
        share = counts / counts.sum()
        entropy = -(share * torch.log(share.clamp_min(1e-30))).sum()
        return (counts > 0).float().mean(), torch.exp(entropy)

    def log_prior(self, indices: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """log p(codes) per image: the learned prior's, or the uniform one's (-h w log K)."""
        if self.prior is None:
            return torch.full((len(indices),), -self.positions * math.log(self.codebook_size),
                              dtype=torch.float64, device=indices.device)
        return self.prior.log_prob(indices, labels).double()

    def importance_terms(self, x: torch.Tensor, noise: torch.Tensor,
                         labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """A point-mass posterior: every sample is the same, log w = log p(x|codes) +
        log p(codes), computed once; "kl" is -log p(codes), the bound's rate."""
        quantized = self.quantize(self.encode(x, labels))
        recon = self.likelihood.nll(self.decode_grid(quantized.z, labels), x).double()
        rate = -self.log_prior(quantized.indices, labels)
        samples = len(noise)
        return {"log_w": (-recon - rate).expand(samples, -1), "recon": recon.expand(samples, -1),
                "kl": rate.expand(samples, -1)}

    def group_means(self, x: torch.Tensor, labels: torch.Tensor | None = None
                    ) -> list[torch.Tensor]:
        return [self.code(x, labels)]

    def code(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(x, labels).flatten(1)

    def decode(self, code: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        grid = code.reshape(code.shape[0], self.code_channels, *self.grid)
        return self.decode_grid(self.quantize(grid).z, labels)

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Deterministic: a point-mass posterior has nothing to sample (`generator` unused)."""
        return self.decode_grid(self.quantize(self.encode(x, labels)).z, labels)

    def prior_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform numbers, one per grid position: the prior samples a code map from them by
        inverse CDF, position by position."""
        return torch.rand(n, self.positions, generator=generator, device=generator.device)

    def from_prior(self, noise: torch.Tensor, temperature: float = 1.0,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.prior is None:
            raise VaelabError("this run has no prior over its codes yet, so it cannot sample: "
                              "train one with `vaelab train-prior RUN`")
        indices = self.prior.sample(noise, temperature, labels)
        return self.decode_grid(self.embed(indices), labels)

    def code_map(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The codes' indices (B, h, w) of images: what the prior models."""
        return self.quantize(self.encode(x, labels)).indices


def _psnr(shown: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per image, in dB, of pixels in [0, 1]."""
    error = (shown - x).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(error.clamp_min(1e-10))


class VQVAE(DiscreteAutoencoder):
    """Nearest-neighbour quantization against a codebook that follows the encoder by moving
    averages, with the commitment loss and (unless `dead_codes` is "keep") dead entries
    re-seeded; see the module's docstring."""

    def __init__(self, shape: tuple[int, int, int] = (1, 28, 28), likelihood: str = "bernoulli",
                 components: int = 10, classes: int = 0, channels: int = 64,
                 codebook_size: int = 512, code_dim: int = 64, dead_codes: str = "reseed"):
        super().__init__(shape, likelihood, components, classes, channels, code_dim,
                         "--model vqvae")
        self.codebook_size, self.dead_codes = codebook_size, dead_codes
        # uniform in +-1/K, as the paper's code: near the encoder's first outputs, so that
        # they spread over the entries from the start
        codebook = (2 * torch.rand(codebook_size, code_dim) - 1) / codebook_size
        self.register_buffer("codebook", codebook)
        # moving averages of each entry's use and of the vectors it took; a start of use 1
        # with the entry itself as its sum, so an unused entry stays where it began
        self.register_buffer("use", torch.ones(codebook_size))
        self.register_buffer("sums", codebook.clone())
        self.register_buffer("started", torch.tensor(False))  # entries set from the data

    @classmethod
    def from_config(cls, config: Config) -> VQVAE:
        return cls(config.image_shape, config.likelihood, config.mixture_components,
                   config.classes or 0, config.discrete_channels, config.codebook_size,
                   config.code_dim, config.vqvae_dead_codes)

    @property
    def summary(self) -> str:
        return (f"VQ-VAE, {self.grid[0]}x{self.grid[1]} codes of {self.codebook_size} "
                f"({self.code_channels} channels)")

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) -> their codebook vectors (B, D, h, w)."""
        return self.codebook[indices].permute(0, 3, 1, 2)

    def quantize(self, z_e: torch.Tensor) -> Quantized:
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.code_channels)
        distances = torch.cdist(flat, self.codebook).pow(2)
        errors, chosen = distances.min(1)
        indices = chosen.reshape(z_e.shape[0], *self.grid)
        z_q = self.embed(indices)
        if self.training:
            self._follow(flat.detach(), chosen, errors.detach())
        commitment = COMMITMENT * (z_e - z_q.detach()).pow(2).flatten(1).sum(1)
        return Quantized(z_e + (z_q - z_e).detach(), indices, commitment)

    @torch.no_grad()
    def _follow(self, flat: torch.Tensor, chosen: torch.Tensor, errors: torch.Tensor) -> None:
        """One moving-average step over the global batch's vectors, then the dead entries
        re-seeded (every rank holds the same averages, so all agree on which are dead)."""
        counts = distributed.all_sum(torch.bincount(chosen, minlength=self.codebook_size)
                                     .float())
        sums = distributed.all_sum(torch.zeros_like(self.sums).index_add_(0, chosen, flat))
        self.use.mul_(DECAY).add_(counts, alpha=1 - DECAY)
        self.sums.mul_(DECAY).add_(sums, alpha=1 - DECAY)
        total = self.use.sum()
        smoothed = (self.use + EPSILON) / (total + self.codebook_size * EPSILON) * total
        self.codebook.copy_(self.sums / smoothed[:, None])
        if self.dead_codes == "keep":
            return
        if not self.started:
            self._start_from(distributed.global_batch(flat)[0])
            return
        dead = (self.use < DEAD_SHARE * self.use.mean()).nonzero().flatten()
        if len(dead):
            self._reseed(dead, flat, errors)

    def _start_from(self, everyone: torch.Tensor) -> None:
        """Every entry an encoder output, evenly spaced through the global batch (as many as
        there are, if the batch holds fewer vectors than entries)."""
        count = min(self.codebook_size, len(everyone))
        picked = everyone[torch.linspace(0, len(everyone) - 1, count).round().long()]
        self._set(torch.arange(count, device=picked.device), picked)
        self.started.fill_(True)

    def _reseed(self, dead: torch.Tensor, flat: torch.Tensor, errors: torch.Tensor) -> None:
        everyone, _ = distributed.global_batch(torch.cat([flat, errors[:, None]], 1))
        worst = everyone[:, -1].argsort(descending=True, stable=True)[:len(dead)]
        self._set(dead[:len(worst)], everyone[worst, :-1])

    def _set(self, entries: torch.Tensor, vectors: torch.Tensor) -> None:
        """Entries restarted at `vectors`, with a use just above the dead line: one the encoder
        does not take up is re-seeded again about 20 steps later (0.99^20 = 1/1.2)."""
        self.use[entries] = 1.2 * DEAD_SHARE * self.use.mean()
        self.codebook[entries] = vectors
        self.sums[entries] = vectors * self.use[entries, None]


class FSQ(DiscreteAutoencoder):
    """Finite scalar quantization: channel c bounded to (-1, 1) by tanh and rounded to one of
    `levels[c]` values; the code is the tuple of levels, K = prod(levels)."""

    def __init__(self, shape: tuple[int, int, int] = (1, 28, 28), likelihood: str = "bernoulli",
                 components: int = 10, classes: int = 0, channels: int = 64,
                 levels: tuple[int, ...] = (8, 5, 5, 5)):
        super().__init__(shape, likelihood, components, classes, channels, len(levels),
                         "--model fsq")
        self.levels = tuple(levels)
        self.codebook_size = math.prod(levels)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.float32),
                             persistent=False)
        # mixed-radix place values: index = sum(digit_c * radix_c)
        radix = torch.cumprod(torch.tensor((1, *levels[:-1])), 0)
        self.register_buffer("_radix", radix, persistent=False)

    @classmethod
    def from_config(cls, config: Config) -> FSQ:
        return cls(config.image_shape, config.likelihood, config.mixture_components,
                   config.classes or 0, config.discrete_channels, parse_levels(config.levels))

    @property
    def summary(self) -> str:
        return (f"FSQ, {self.grid[0]}x{self.grid[1]} codes of levels "
                f"{','.join(map(str, self.levels))} ({self.codebook_size})")

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """Each channel into (-(L-1)/2, (L-1)/2), shifted for even L so that rounding gives
        exactly L integers (Mentzer et al.'s bound)."""
        levels = self._levels[:, None, None]
        half = (levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def quantize(self, z_e: torch.Tensor) -> Quantized:
        bounded = self._bound(z_e)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        digits = torch.round(bounded).long() + (self._levels.long() // 2)[:, None, None]
        indices = (digits * self._radix[:, None, None]).sum(1)
        scale = (self._levels // 2)[:, None, None]
        return Quantized(rounded / scale, indices, torch.zeros(len(z_e), device=z_e.device))

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) -> the levels' values (B, D, h, w), as quantize gives them."""
        digits = (indices[:, None] // self._radix[:, None, None]) % \
            self._levels.long()[:, None, None]
        scale = (self._levels // 2)[:, None, None]
        return (digits - (self._levels.long() // 2)[:, None, None]) / scale
