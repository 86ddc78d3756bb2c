"""The discretized logistic likelihoods: exact masses over the 256 values, finite gradients at
the edges and at extreme parameters, their means and samples, and runs that use them."""

import json
import math

import pytest
import torch
from helpers import cli
from test_figures import assert_writes_pngs
from test_quadrature import assert_iw_agrees_with_exact
from test_train import assert_same_run

from vaelab import VAE, load_run, resume, train
from vaelab.data import load_split
from vaelab.discretized import DiscretizedLogistic, DiscretizedLogisticMixture, levels
from vaelab.evaluate import evaluate_elbo
from vaelab.generate import reconstruct, sample_prior
from vaelab.plots import grid_figure_size

EPS64 = torch.finfo(torch.float64).eps
# log-scales across and beyond the clamp [-7, 7]; means inside, at and far outside [0, 1]
EXTREME_LOG_SCALES = [-20.0, -7.0, -3.0, 0.0, 3.0, 7.0, 10.0]
EXTREME_MEANS = [-50.0, -1.0, 0.0, 1 / 510, 0.3, 0.5, 1.0, 2.0, 50.0]


def extreme_grid(dtype=torch.float64):
    """(means, log-scales), each (63,): every pair of the extreme values."""
    means, scales = torch.meshgrid(torch.tensor(EXTREME_MEANS, dtype=dtype),
                                   torch.tensor(EXTREME_LOG_SCALES, dtype=dtype), indexing="ij")
    return means.flatten(), scales.flatten()


def random_parameters(n, seed, dtype=torch.float64):
    """n means in [-1.5, 2.5] and log-scales in [-20, 10]."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=generator, dtype=dtype) * 4 - 1.5,
            torch.rand(n, generator=generator, dtype=dtype) * 30 - 20)


def as_params(*parts):
    """Per-sub-pixel parameter vectors (K, N) or (N,) -> params (1, P, N, 1): N sub-pixels
    in one grey image N pixels tall."""
    return torch.cat([p.reshape(-1, p.shape[-1]) for p in parts]).view(1, -1, parts[0].shape[-1],
                                                                       1)


def mass_of_every_value(likelihood, params):
    """P(v) for v = 0 ... 255 at each sub-pixel: (256, N), from log_mass, which must be
    finite (no log of zero) even where the mass underflows."""
    n = params.shape[2]
    x = levels(params.dtype).view(256, 1, 1, 1).expand(256, 1, n, 1)
    log_mass = likelihood.log_mass(params.expand(256, -1, -1, -1), x).view(256, n)
    assert torch.isfinite(log_mass).all()
    return log_mass.exp()


@pytest.mark.mutation
@pytest.mark.parametrize("parameters", [extreme_grid, lambda: random_parameters(2000, 0)])
def test_the_256_masses_of_a_logistic_sum_to_one(parameters):
    """Each mass is computed to a few ulps of itself (no probabilities are subtracted), so
    256 of them sum to one within 256 float64 epsilons."""
    masses = mass_of_every_value(DiscretizedLogistic(), as_params(*parameters()))
    assert (masses.sum(0) - 1).abs().max().item() <= 256 * EPS64


@pytest.mark.mutation
def test_the_masses_are_the_logistic_cdf_differences():
    """Against scipy's logistic CDF, F(x + h) - F(x - h) with the edges taking the tails,
    where the parameters are moderate and the plain difference loses little (its error is
    a few ulps of the CDF, not of the mass)."""
    from scipy.stats import logistic

    means, scales = torch.meshgrid(torch.linspace(-0.2, 1.2, 8, dtype=torch.float64),
                                   torch.linspace(-5, 1, 8, dtype=torch.float64), indexing="ij")
    means, scales = means.flatten(), scales.flatten()
    x = levels().view(256, 1).numpy()
    cdf = lambda t: logistic.cdf(t, loc=means.numpy(), scale=scales.exp().numpy())  # noqa: E731
    upper = torch.from_numpy(cdf(x + 0.5 / 255))
    lower = torch.from_numpy(cdf(x - 0.5 / 255))
    upper[-1], lower[0] = 1.0, 0.0
    masses = mass_of_every_value(DiscretizedLogistic(), as_params(means, scales))
    assert (masses - (upper - lower)).abs().max().item() <= 8 * EPS64


@pytest.mark.mutation
@pytest.mark.parametrize("components", [1, 3, 10])
def test_the_mixture_sums_to_one_for_random_and_extreme_parameters(components):
    """Weights from logits over +-40 (so some are ~e^-80), and one column where a single
    component takes all the weight; means and scales random over the extreme ranges."""
    n = 600
    means, scales = random_parameters(components * n, components)
    logits = 20 * torch.randn(components, n, generator=torch.Generator().manual_seed(9),
                              dtype=torch.float64)
    logits[0, 0] = 1e4
    params = as_params(logits, means.view(components, n), scales.view(components, n))
    masses = mass_of_every_value(DiscretizedLogisticMixture(components), params)
    assert (masses.sum(0) - 1).abs().max().item() <= 256 * EPS64


@pytest.mark.mutation
@pytest.mark.parametrize("likelihood", [DiscretizedLogistic(), DiscretizedLogisticMixture(3)])
def test_gradients_are_finite_at_the_edges_and_extreme_parameters(likelihood):
    """float32, as in training: at v = 0, 255 and in between, for every extreme pair."""
    means, scales = extreme_grid(torch.float32)
    for v in (0, 1, 128, 254, 255):
        parts = [means, scales]
        if isinstance(likelihood, DiscretizedLogisticMixture):
            parts = [torch.stack([torch.full_like(means, w) for w in (-30.0, 0.0, 30.0)]),
                     torch.stack([means, means.flip(0), torch.zeros_like(means)]),
                     torch.stack([scales, scales.flip(0), torch.full_like(scales, -7.0)])]
        params = as_params(*parts).requires_grad_()
        x = torch.full((1, 1, params.shape[2], 1), v / 255)
        nll = likelihood.nll(params, x)
        nll.sum().backward()
        assert torch.isfinite(nll).all(), v
        assert torch.isfinite(params.grad).all(), v


@pytest.mark.mutation
def test_a_new_decoder_starts_mid_range_with_its_components_apart():
    # Started at zero, every mean would sit at black with a scale of the whole range (see
    # discretized.INITIAL_LOG_SCALE); the biases put them inside [0, 1], a mixture's spread.
    torch.manual_seed(0)
    mixture = VAE(4, (3, 16, 16), likelihood="logistic-mixture", components=4)
    bias = mixture.decoder.net[-1].bias.view(1, -1, 1, 1)
    log_weight, mean, log_scale = (part.flatten() for part in mixture.likelihood.split(bias))
    assert mean.tolist() == [0.125] * 3 + [0.375] * 3 + [0.625] * 3 + [0.875] * 3  # k-major
    assert torch.equal(log_scale, torch.full((12,), math.log(0.1)))
    assert (log_weight == log_weight[0]).all()
    logistic = VAE(4, (3, 16, 16), likelihood="logistic")
    assert torch.equal(logistic.decoder.net[-1].bias, torch.tensor([0.5] * 3 + [math.log(0.1)] * 3))
    with torch.no_grad():  # the biases alone: the weights zeroed, every z decodes the same
        for layer in logistic.decoder.net:
            if hasattr(layer, "weight"):
                layer.weight.zero_()
    picture = logistic.decode_mean(torch.randn(4, 4))
    # a logistic centred on 0.5 is symmetric about the middle of the 256 levels, so its mean
    # is 0.5 exactly; the mean sums 255 float32 sigmoids of at most 1 (ceil(log2 255) eps32
    # of their sum, about 127.5) and divides by 255: within 8 eps32 * 127.5 / 255 + 1 ulp
    tolerance = (8 * 127.5 / 255 + 1) * torch.finfo(torch.float32).eps
    assert (picture - 0.5).abs().max().item() <= tolerance


@pytest.mark.mutation
@pytest.mark.parametrize("likelihood", [DiscretizedLogistic(), DiscretizedLogisticMixture(3)])
def test_the_mean_is_that_of_the_256_values(likelihood):
    """E[x|z] = sum_v (v / 255) P(v): the survival-sum form against the masses themselves;
    each of 256 terms is exact to a few ulps."""
    generator = torch.Generator().manual_seed(1)
    params = as_params(torch.randn(likelihood.params_per_channel, 300, generator=generator,
                                   dtype=torch.float64) * 2)
    expected = (levels().view(256, 1) * mass_of_every_value(likelihood, params)).sum(0)
    mean = likelihood.mean(params).flatten()
    assert ((mean >= 0) & (mean <= 1)).all()
    assert (mean - expected).abs().max().item() <= 512 * EPS64


@pytest.mark.mutation
@pytest.mark.parametrize("likelihood, parts", [
    (DiscretizedLogistic(), [[0.4], [-3.0]]),
    (DiscretizedLogistic(), [[0.01], [-4.0]]),  # much of the mass on the edge bin 0
    (DiscretizedLogisticMixture(2), [[-0.85, 0.0], [0.02, 0.9], [-4.0, -5.0]]),
])
def test_samples_follow_the_masses(likelihood, parts):
    """The share of 20,000 draws at each value v within 5 binomial standard errors of P(v)
    (plus one draw, for values of tiny mass)."""
    n = 20_000
    one = as_params(*[torch.tensor(p, dtype=torch.float64).view(-1, 1) for p in parts])
    masses = mass_of_every_value(likelihood, one)[:, 0]
    draws = likelihood.sample(one.float().expand(-1, -1, n, -1),
                              torch.Generator().manual_seed(0)).flatten()
    values = draws * 255
    assert torch.equal(values, values.round())  # on the 8-bit grid
    shares = torch.bincount(values.round().long(), minlength=256).double() / n
    allowed = 5 * (masses * (1 - masses) / n).sqrt() + 1 / n
    assert ((shares - masses).abs() <= allowed).all()


# ---- runs ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixture_run(data_dir, tmp_path_factory):
    from vaelab import Config
    config = Config(data_dir=str(data_dir), limit_train=512, limit_val=256, epochs=1,
                    device="cpu", likelihood="logistic-mixture", mixture_components=3)
    return train(config, tmp_path_factory.mktemp("runs") / "mixture", progress=False)


@pytest.fixture(scope="module")
def logistic_1d_run(data_dir, tmp_path_factory):
    """A model with a 1-dimensional latent space and the logistic likelihood, 3 epochs on
    10,000 real images, as tests/test_quadrature.py's Bernoulli one (with 2 epochs on 5,000,
    q(z|x) covered the exact posterior of too few test images for a two-sided check)."""
    from vaelab import Config
    config = Config(data_dir=str(data_dir), latent_dim=1, limit_train=10_000, limit_val=256,
                    epochs=3, device="cpu", likelihood="logistic")
    return train(config, tmp_path_factory.mktemp("runs") / "logistic-1d", progress=False)


def test_the_iw_estimate_agrees_with_the_exact_value_within_its_standard_error(
        logistic_1d_run, data_dir):
    """As for the Bernoulli (tests/test_quadrature.py): where q(z|x) covers the exact
    posterior, within 4 standard errors sqrt(1/ESS - 1/K) (plus the bias, about its square);
    else a lower bound within the same noise. 16 images: q covers the exact posterior of
    only some (measured: 1 of the first 6), and at least 3 must be covered."""
    images = load_split("mnist", "val", data_dir, limit=16).images
    assert_iw_agrees_with_exact(load_run(logistic_1d_run).model, images, 5000,
                                covered_at_least=3)


def test_evaluate_prints_bits_per_dimension_of_a_logistic_run(capsys, logistic_1d_run):
    code, out, err = cli(capsys, "evaluate", logistic_1d_run, "--limit", 3, "--iw-samples",
                         200, "--exact", "--quiet")
    assert code == 0, err
    result = json.loads((logistic_1d_run / "eval.json").read_text())
    assert result["density_of_8bit"] and result["likelihood"] == "logistic"
    bits = 784 * math.log(2)
    assert result["nll_bits_per_dim"] == pytest.approx(result["nll"] / bits, rel=1e-12)
    assert result["neg_elbo_bits_per_dim"] == pytest.approx(result["neg_elbo"] / bits,
                                                            rel=1e-12)
    assert f"{result['nll_bits_per_dim']:.4f}" in out and "exact" in out
    assert "grayscale floor" not in out and "pixel_entropy" not in result


def test_a_bernoulli_run_prints_no_bits_per_dimension(capsys, tiny_config, tmp_path):
    run = train(tiny_config, tmp_path / "run", progress=False)
    code, out, err = cli(capsys, "evaluate", run, "--limit", 20, "--iw-samples", 5, "--quiet")
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert not result["density_of_8bit"]
    assert f"{result['nll_bits_per_dim']:.4f}" not in out
    assert "not a density of 8-bit images" in out and "grayscale floor" in out


def test_a_logistic_run_lowers_the_loss_on_real_mnist(tiny_config, tmp_path):
    config = tiny_config.replace(limit_train=2048, epochs=2, likelihood="logistic")
    val = load_split("mnist", "val", config.data_dir, config.limit_val)
    torch.manual_seed(config.seed)
    untrained = evaluate_elbo(VAE(config.latent_dim, likelihood="logistic"), val.images,
                              seed=0).means("val", 64)
    first, second = load_run(train(config, tmp_path / "run"), checkpoint="last").metrics
    assert second["train_loss"] < first["train_loss"]
    assert second["val_loss"] < first["val_loss"] < untrained["val_loss"]


def test_a_resumed_mixture_run_equals_an_uninterrupted_one(tiny_config, tmp_path):
    config = tiny_config.replace(batch_size=48, likelihood="logistic-mixture",
                                 mixture_components=3)
    straight = train(config.replace(epochs=2), tmp_path / "straight")
    interrupted = train(config.replace(epochs=1), tmp_path / "resumed")
    resume(interrupted, epochs=2)
    assert load_run(interrupted).config.likelihood == "logistic-mixture"
    assert_same_run(straight, interrupted)


@pytest.mark.parametrize("args, files", [
    (["reconstruct", "--n", "8"], {"reconstructions.png": grid_figure_size(2, 8)}),
    (["reconstruct", "--n", "8", "--sample-pixels"],
     {"reconstructions.png": grid_figure_size(2, 8)}),
    (["sample", "--n", "16", "--sample-pixels"], {"samples.png": grid_figure_size(4, 4)}),
    (["sample", "--n", "16"], {"samples.png": grid_figure_size(4, 4)}),
    (["interpolate", "--index", "0", "1", "--steps", "5"],
     {"interpolation.png": grid_figure_size(1, 5)}),
    (["latent"], {"latent.png": (700, 600)}),
    (["curves"], {"curves.png": (1200, 360)}),
])
def test_the_figure_commands_on_a_mixture_run(capsys, mixture_run, tmp_path, args, files):
    assert_writes_pngs(capsys, mixture_run, tmp_path, args, files)


def test_sample_pixels_draws_8_bit_values_and_the_mean_lies_between(mixture_run, data_dir):
    model = load_run(mixture_run).model
    means, drawn = sample_prior(model, 8, seed=2), sample_prior(model, 8, seed=2, pixels=True)
    assert ((means >= 0) & (means <= 1)).all()
    assert torch.equal(drawn * 255, (drawn * 255).round()) and not torch.equal(drawn, means)
    assert torch.equal(drawn, sample_prior(model, 8, seed=2, pixels=True))  # seeded
    images = load_split("mnist", "val", data_dir, limit=4).images
    assert not torch.equal(reconstruct(model, images, pixels=True), reconstruct(model, images))


def test_the_report_of_a_mixture_run(capsys, mixture_run):
    code, out, err = cli(capsys, "report", mixture_run)
    assert code == 0, err
    assert "mean E[x|z]" in (mixture_run / "report.html").read_text()


@pytest.mark.mutation
@pytest.mark.parametrize("flags, words", [
    (["--likelihood", "logistic", "--binarize", "dynamic"], "not 8-bit"),
    (["--likelihood", "logistic-mixture", "--binarize", "static"], "not 8-bit"),
    (["--likelihood", "gaussian"], "invalid choice: 'gaussian'"),
    (["--likelihood", "logistic-mixture", "--mixture-components", "0"], "at least 1"),
])
def test_bad_likelihood_settings_get_one_line(capsys, tmp_path, flags, words):
    code, out, err = cli(capsys, "train", "--out", tmp_path / "run", "--epochs", 1, *flags)
    assert code != 0 and words in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
