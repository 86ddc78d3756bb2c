"""The likelihoods one by one: the discretized logistics' per-image -log p(x|z) against scipy on
colour images, their bounds on the scale and their sampling; the Bernoulli's draws and the
registry (fast: run for every mutant)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import logistic

from vaelab.discretized import (
    LOG_SCALE_MAX,
    LOG_SCALE_MIN,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    expected_value,
    log_bin_mass,
    sample_values,
)
from vaelab.likelihoods import Bernoulli, make_likelihood, nll_samples

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant

EPS64 = torch.finfo(torch.float64).eps


def scipy_log_mass(x, mean, log_scale):
    """log P(v) of a discretized logistic from scipy's CDF: F(x + h) - F(x - h), the edges
    taking the tails, in float64."""
    scale = np.exp(np.clip(log_scale, LOG_SCALE_MIN, LOG_SCALE_MAX))
    h = 0.5 / 255
    upper = np.where(x > 1 - h, 1.0, logistic.cdf(x + h, mean, scale))
    lower = np.where(x < h, 0.0, logistic.cdf(x - h, mean, scale))
    return np.log(upper - lower)


def colour_batch(seed=0):
    """2 images of 3 x 2 x 2 sub-pixels, every image different, values at the edges too."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (2, 3, 2, 2), generator=generator).double() / 255
    x[0, 0, 0, 0], x[1, 2, 1, 1] = 0.0, 1.0
    return x, generator


def test_the_logistics_nll_per_image_is_scipys():
    x, generator = colour_batch()
    params = torch.randn(2, 6, 2, 2, generator=generator, dtype=torch.float64) * 0.5
    params[:, :3] += 0.5  # means in the range, so no mass is vanishingly small
    mean, log_scale = params[:, :3].numpy(), params[:, 3:].numpy()
    expected = -scipy_log_mass(x.numpy(), mean, log_scale).reshape(2, -1).sum(1)
    nll = DiscretizedLogistic().nll(params, x)
    assert nll.shape == (2,)  # one number per image
    # 12 terms each to a few ulps of its size (scipy's subtraction costs a few more)
    assert np.abs(nll.numpy() - expected).max() <= 12 * 64 * EPS64 * np.abs(expected).max()


@pytest.mark.parametrize("components", [1, 3])
def test_the_mixtures_nll_per_image_is_scipys(components):
    x, generator = colour_batch(1)
    params = torch.randn(2, 3 * components * 3, 2, 2, generator=generator,
                         dtype=torch.float64) * 0.5
    logits, means, log_scales = (part.numpy() for part in
                                 params.unflatten(1, (3, components, 3)).unbind(1))
    means = means + 0.5
    params = torch.cat([torch.from_numpy(p).flatten(1, 2) for p in (logits, means, log_scales)],
                       1)
    weights = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # (B, K, C, H, W)
    masses = sum(weights[:, k] * np.exp(scipy_log_mass(x.numpy(), means[:, k], log_scales[:, k]))
                 for k in range(components))
    expected = -np.log(masses).reshape(2, -1).sum(1)
    nll = DiscretizedLogisticMixture(components).nll(params, x)
    assert nll.shape == (2,)
    assert np.abs(nll.numpy() - expected).max() <= 12 * 64 * EPS64 * np.abs(expected).max()


def test_scales_beyond_the_bounds_act_as_the_bounds():
    mean = torch.linspace(-0.2, 1.2, 50, dtype=torch.float64)
    for beyond, bound in ((-20.0, LOG_SCALE_MIN), (20.0, LOG_SCALE_MAX)):
        assert torch.equal(expected_value(mean, torch.full_like(mean, beyond)),
                           expected_value(mean, torch.full_like(mean, bound)))
        levels = torch.arange(256, dtype=torch.float64) / 255
        assert torch.equal(log_bin_mass(levels, mean[:1], torch.tensor(beyond)),
                           log_bin_mass(levels, mean[:1], torch.tensor(bound)))
        mean_many = torch.full((100_000,), 0.5)

        def draw(log_scale):
            return sample_values(mean_many, torch.full_like(mean_many, log_scale),
                                 torch.Generator().manual_seed(3))

        assert torch.equal(draw(beyond), draw(bound))
    # at the smallest scale a fifth of the draws still leave the middle level (P(|logit u| >
    # 2.15) = 0.21): a scale below the bound would leave none
    draws = sample_values(torch.full((10_000,), 128 / 255), torch.full((10_000,), -20.0),
                          torch.Generator().manual_seed(0))
    assert 0.15 < (draws != 128 / 255).double().mean().item() < 0.27


def test_samples_are_levels_clamped_to_the_range_and_follow_the_generator():
    far = sample_values(torch.tensor([3.0, -2.0]).repeat(500), torch.full((1000,), -7.0),
                        torch.Generator().manual_seed(0))
    assert far.view(500, 2)[:, 0].eq(1.0).all() and far.view(500, 2)[:, 1].eq(0.0).all()
    mean, log_scale = torch.rand(1000), torch.full((1000,), -2.0)

    def draw(seed):
        return sample_values(mean, log_scale, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    assert torch.equal(draw(1) * 255, (draw(1) * 255).round())  # on the 256 levels


@pytest.mark.parametrize("likelihood", [DiscretizedLogistic(), DiscretizedLogisticMixture(3)])
def test_a_colour_sample_has_the_images_shape_and_follows_the_generator(likelihood):
    params = torch.randn(2, 3 * likelihood.params_per_channel, 4, 5,
                         generator=torch.Generator().manual_seed(0))

    def draw(seed):
        return likelihood.sample(params, torch.Generator().manual_seed(seed))

    assert draw(0).shape == (2, 3, 4, 5)
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))


def test_the_mixture_picks_components_by_their_weights():
    """Three components far apart (means 0.1, 0.5 and 0.9, tiny scales), weights 0.6, 0.3 and
    0.1 on every sub-pixel: each component's share of the draws is its weight within 5
    binomial standard errors. (With two components a reversed Gumbel would pick alike: the
    difference of two Gumbels is symmetric.)"""
    n = 20_000
    weights = torch.tensor([0.6, 0.3, 0.1])
    means, log_scales = torch.tensor([0.1, 0.5, 0.9]), torch.full((3,), -6.0)
    params = torch.stack([weights.log(), means, log_scales]).view(1, 9, 1, 1).expand(n, 9, 1, 1)
    draws = DiscretizedLogisticMixture(3).sample(params, torch.Generator().manual_seed(0))
    for k, weight in enumerate(weights.tolist()):
        share = ((draws - means[k]).abs() < 0.2).double().mean().item()
        assert abs(share - weight) <= 5 * math.sqrt(weight * (1 - weight) / n), k


def test_bernoulli_draws_ones_at_the_rate_sigmoid_gives_and_follows_the_generator():
    """Each sub-pixel is 1 with probability sigmoid(logit): 0.2 here, within 5 binomial
    standard errors over 20,000 draws."""
    n = 20_000
    logits = torch.full((n, 1, 1, 1), math.log(0.2 / 0.8))

    def draw(seed):
        return Bernoulli().sample(logits, torch.Generator().manual_seed(seed))

    # The picture it shows is the probability of a 1: logit log(p / (1 - p)) gives p.
    assert torch.allclose(Bernoulli().mean(logits[:2]), torch.full((2, 1, 1, 1), 0.2),
                          rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    ones = draw(0)
    assert set(ones.unique().tolist()) == {0.0, 1.0} and ones.dtype == torch.float32
    assert abs(ones.mean().item() - 0.2) <= 5 * math.sqrt(0.2 * 0.8 / n)
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))


def test_the_registry_and_k_decodes_per_image():
    assert isinstance(make_likelihood("bernoulli"), Bernoulli)
    assert isinstance(make_likelihood("logistic"), DiscretizedLogistic)
    mixture = make_likelihood("logistic-mixture", 4)
    assert mixture.components == 4 and mixture.params_per_channel == 12
    assert make_likelihood("logistic-mixture").components == 10
    assert DiscretizedLogisticMixture().components == 10  # PixelCNN++'s, as the registry's
    params = torch.randn(3, 2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    each = nll_samples(Bernoulli(), params, x)
    assert each.shape == (3, 2)
    assert torch.equal(each[2], Bernoulli().nll(params[2], x))


@pytest.mark.parametrize("name", ["bernoulli", "logistic", "logistic-mixture"])
def test_pictures_and_draws_are_made_on_the_parameters_device(name):
    """The tensors a likelihood makes (bin edges, uniform draws) follow its parameters' device,
    never torch's default one: on a GPU a tensor made without a device would be a CPU one and
    fail. Without a GPU, the stand-in is a default device of `meta`, where a tensor made
    without naming its device lands (and mixing it with the CPU parameters fails)."""
    likelihood = make_likelihood(name, 2)
    params = torch.randn(2, likelihood.params_per_channel, 3, 3,
                         generator=torch.Generator().manual_seed(0))
    def seeded():
        return torch.Generator().manual_seed(1)

    picture, draw = likelihood.mean(params), likelihood.sample(params, seeded())
    generator = seeded()
    with torch.device("meta"):
        assert torch.empty(1).device.type == "meta"  # the stand-in works
        on_default = likelihood.mean(params), likelihood.sample(params, generator)
    assert [tensor.device.type for tensor in on_default] == ["cpu", "cpu"]
    assert torch.equal(on_default[0], picture) and torch.equal(on_default[1], draw)
