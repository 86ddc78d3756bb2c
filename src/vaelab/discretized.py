"""Discretized logistics: probabilities of 8-bit images (Salimans et al. 2017, PixelCNN++).

A sub-pixel holds one of 256 values v, seen as x = v / 255 in [0, 1]. Under a logistic with
mean m and scale s (CDF F(t) = sigmoid((t - m) / s)) the value v gets the mass of its bin,
of width 1/255 and centred on x; the edge bins take the tails, so the 256 masses sum to one:

    P(v = 0) = F(x + h),   P(v = 255) = 1 - F(x - h),   P(v) = F(x + h) - F(x - h) otherwise,

with h = 1/510, half a bin. No probability is ever subtracted from another: with
a = (x + h - m) / s and b = (x - h - m) / s the identity

    sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a))

gives  log P(v) = log sigmoid(a) + log sigmoid(-b) + log(-expm1(-1 / (255 s))),  each term
finite and accurate at any scale and any mean. So the bin's log mass is exact where it
underflows too, with no switch to PixelCNN++'s mid-bin density approximation (which it
takes below 1e-5 and which is not a mass: the 256 values would no longer sum to one). The
edge bins drop one term each: log sigmoid(a) alone at v = 0, log sigmoid(-b) alone at 255.

Colour: the channels of a pixel are independent given z, each with its own logistic (or
mixture). PixelCNN++ makes green depend linearly on red, and blue on both, because its
pixels see no latent variable that could carry their colour; here z does (the decoder
sees all of the image's colour through it), and independent sub-pixels keep one code path
for grey and colour, and a sum to one that is tested per sub-pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LEVELS = 256
HALF_BIN = 0.5 / (LEVELS - 1)
# log s is clamped to [-7, 7]: below, as PixelCNN++ does, a scale under a quarter of a bin
# already puts nearly all the mass in one bin (and the loss cannot be driven to -inf by it);
# above, a scale 1100 times the whole range is uniform over the 256 values, and the bound
# keeps 1 / (255 s) far from float32's underflow (where log(-expm1) would become log 0).
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 7.0
THRESHOLDS_AT_ONCE = 16  # bin edges the mean evaluates per pass: bounds its memory
# The decoder's last layer starts with these biases (its weights are small, so its first
# outputs are near them): the means inside [0, 1] (a mixture's components spread over it,
# so they start apart) and a scale of 0.1, a few tenths of the range. Left at zero, every
# mean starts at black and the scale at the whole range, far from colour images, whose
# backgrounds can be any colour: a short colour run learned faster from this start (the
# measurement is in the message of commit 8b7dce8).
INITIAL_LOG_SCALE = math.log(0.1)


def log_bin_mass(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(v) of each sub-pixel x = v / 255 under a discretized logistic; all broadcast."""
    inv_scale = torch.exp(-log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX))
    centred = (x - mean) * inv_scale
    a, b = centred + HALF_BIN * inv_scale, centred - HALF_BIN * inv_scale
    bottom, top = x < HALF_BIN, x > 1 - HALF_BIN
    upper = torch.where(top, 0.0, F.logsigmoid(a))
    lower = torch.where(bottom, 0.0, F.logsigmoid(-b))
    width = torch.where(bottom | top, 0.0, torch.log(-torch.expm1(-2 * HALF_BIN * inv_scale)))
    return upper + lower + width


def expected_value(mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """E[x] = E[v] / 255 of a discretized logistic, exactly: E[v] = sum_{j=1}^{255} P(v >= j)
    and P(v >= j) = sigmoid(-(t_j - m) / s) at the bin edge t_j = (j - 1/2) / 255."""
    inv_scale = torch.exp(-log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX))
    edges = (torch.arange(1, LEVELS, dtype=mean.dtype, device=mean.device) - 0.5) / (LEVELS - 1)
    total = torch.zeros_like(mean)
    for chunk in edges.split(THRESHOLDS_AT_ONCE):
        t = chunk.view(-1, *[1] * mean.dim())
        total += torch.sigmoid((mean - t) * inv_scale).sum(0)
    return total / (LEVELS - 1)


def sample_values(mean: torch.Tensor, log_scale: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """x = v / 255 drawn from the discretized logistic: t = m + s logit(u), u ~ U(0, 1),
    rounded to the nearest level (the bins are centred on the levels; the edges take the
    tails, which the clamp to [0, 255] does)."""
    u = torch.rand(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    scale = torch.exp(log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX))
    t = mean + scale * torch.logit(u, eps=1e-7)
    return torch.round(t * (LEVELS - 1)).clamp(0, LEVELS - 1) / (LEVELS - 1)


class DiscretizedLogistic:
    """One logistic per sub-pixel: the decoder gives its mean m (in the units of x, [0, 1])
    and log-scale, params (B, 2C, H, W) = [means (C) | log-scales (C)]."""

    name = "logistic"
    params_per_channel = 2

    @staticmethod
    def split(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = params.unflatten(1, (2, -1)).unbind(1)
        return mean, log_scale

    def log_mass(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log P(v) of each sub-pixel: params (B, 2C, H, W), x (B, C, H, W) -> (B, C, H, W)."""
        return log_bin_mass(x, *self.split(params))

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) = -sum_sub-pixels log P(v): (B, 2C, H, W), (B, C, H, W) -> (B,)."""
        return -self.log_mass(params, x).flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] of the discretized distribution (not the logistic's m, which may lie
        outside [0, 1]): (B, C, H, W) in [0, 1]."""
        return expected_value(*self.split(params))

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        return sample_values(*self.split(params), generator)

    def floor(self, x: torch.Tensor) -> float | None:
        return None  # a probability of the 8-bit values: nothing outside the model bounds it

    def initial_bias(self, channels: int) -> torch.Tensor:
        """[means at 0.5 | log-scales at INITIAL_LOG_SCALE], (2C,)."""
        return torch.tensor([0.5, INITIAL_LOG_SCALE]).repeat_interleave(channels)


class DiscretizedLogisticMixture:
    """A mixture of `components` discretized logistics per sub-pixel (PixelCNN++'s, with
    channels independent: see the module's docstring). params (B, 3KC, H, W) =
    [mixture logits (K x C) | means (K x C) | log-scales (K x C)], component-major.

        log p(v) = logsumexp_k (log softmax(logits)_k + log P_k(v))
    """

    name = "logistic-mixture"

    def __init__(self, components: int = 10):
        self.components = components
        self.params_per_channel = 3 * components

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> log mixture weights, means, log-scales, each (B, K, C, H, W)."""
        logits, mean, log_scale = params.unflatten(1, (3, self.components, -1)).unbind(1)
        return torch.log_softmax(logits, 1), mean, log_scale

    def log_mass(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(v) of each sub-pixel: params (B, 3KC, H, W), x (B, C, H, W) -> (B, C, H, W)."""
        log_weight, mean, log_scale = self.split(params)
        return torch.logsumexp(log_weight + log_bin_mass(x.unsqueeze(1), mean, log_scale), 1)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -self.log_mass(params, x).flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] = sum_k pi_k E_k[x], each E_k that of the discretized component (so exact,
        in [0, 1]): (B, C, H, W)."""
        log_weight, mean, log_scale = self.split(params)
        return (log_weight.exp() * expected_value(mean, log_scale)).sum(1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """A component k ~ pi per sub-pixel (Gumbel-max), then v from component k."""
        log_weight, mean, log_scale = self.split(params)
        u = torch.rand(log_weight.shape, generator=generator, device=params.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
        pick = (log_weight + gumbel).argmax(1, keepdim=True)
        return sample_values(mean.gather(1, pick).squeeze(1), log_scale.gather(1, pick).squeeze(1),
                             generator)

    def floor(self, x: torch.Tensor) -> float | None:
        return None

    def initial_bias(self, channels: int) -> torch.Tensor:
        """Equal weights, component k's mean at (k + 1/2) / K, log-scales at
        INITIAL_LOG_SCALE: (3KC,), in the order of `split`."""
        k = self.components
        means = (torch.arange(k) + 0.5) / k
        bias = torch.stack([torch.zeros(k), means, torch.full((k,), INITIAL_LOG_SCALE)])
        return bias[:, :, None].expand(3, k, channels).flatten()


def levels(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 256 values x = v / 255 a sub-pixel can take, (256,)."""
    return torch.arange(LEVELS, dtype=dtype) / (LEVELS - 1)

