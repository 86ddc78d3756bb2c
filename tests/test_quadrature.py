"""The importance-weighted estimator against log p(x) by quadrature, where z has 1 or 2
dimensions, and the quadrature itself against independent integrators."""

import math

import pytest
import torch

from vaelab import load_run, train
from vaelab.cli import main
from vaelab.data import load_split, to_float
from vaelab.errors import VaelabError
from vaelab.evaluate import log_likelihood_iw
from vaelab.losses import gaussian_log_density
from vaelab.quadrature import grid, integration_box, log_joint, log_marginal

K = 5000


@pytest.fixture(scope="module", params=[1, 2])
def small_latent_run(request, data_dir, tmp_path_factory):
    """A model with a 1- or 2-dimensional latent space, 3 epochs on 10,000 real images."""
    from vaelab import Config
    config = Config(data_dir=str(data_dir), latent_dim=request.param, limit_train=10_000,
                    limit_val=256, epochs=3, device="cpu")
    return load_run(train(config, tmp_path_factory.mktemp("runs") / f"d{request.param}"))


def reference_log_px(model, x, dim):
    """An independent integral: scipy's adaptive Gauss-Kronrod (QUADPACK) for one dimension
    (asked for 1e-4 relative: the float32 decoder is noisier than 1e-5 nats, so a tighter
    request only hits the subdivision limit); for two, a plain Riemann sum on a fixed
    201 x 201 grid over a box found by a coarse scan, sharing no code with vaelab.quadrature's
    refinement."""
    if dim == 1:
        from scipy.integrate import quad
        z = torch.linspace(-8, 8, 3201, dtype=torch.float64)[:, None]
        values = log_joint(model, x, z)
        peak, top = values.max().item(), z[values.argmax(), 0].item()
        inside = z[values > peak - 40, 0]

        def density(point):
            return math.exp(log_joint(model, x, torch.tensor([[point]]))[0].item() - peak)

        total, _ = quad(density, inside.min().item() - 0.05, inside.max().item() + 0.05,
                        points=[top], limit=200, epsabs=0, epsrel=1e-4)  # 1e-4 nats
        return peak + math.log(total)
    axis = torch.linspace(-8, 8, 101, dtype=torch.float64)
    coarse = torch.cartesian_prod(axis, axis)
    values = log_joint(model, x, coarse)
    inside = coarse[values > values.max() - 40]
    lows, highs = inside.min(0).values - 0.32, inside.max(0).values + 0.32
    axes = [torch.linspace(lo, hi, 201, dtype=torch.float64) for lo, hi in zip(lows, highs)]
    fine = torch.cartesian_prod(*axes)
    cell = math.prod(((hi - lo) / 200).item() for lo, hi in zip(lows, highs))
    return (torch.logsumexp(log_joint(model, x, fine), 0) + math.log(cell)).item()


def posterior_mass_near_q(model, x, mu, logvar):
    """The exact posterior's mass within 4 standard deviations of q(z|x)'s mean (per axis),
    on a grid over the box that holds all of its mass: 1 when q covers the posterior, much
    less when q misses a mode."""
    lows, highs = integration_box(model, x, mu, logvar)
    z, _ = grid(lows, highs, 2001 if len(mu) == 1 else 101)
    weights = torch.softmax(log_joint(model, x, z), 0)
    sd = torch.exp(0.5 * logvar.double())
    near = ((z - mu.double()).abs() <= 4 * sd).all(1)
    return weights[near].sum().item()


def test_the_quadrature_agrees_with_independent_integrators(small_latent_run, data_dir):
    """Within the refinement tolerance plus float32 decoding noise (784 pixel terms of about
    1 nat each, summed in float32: far below 1e-3 nats)."""
    model, dim = small_latent_run.model, small_latent_run.config.latent_dim
    images = load_split("mnist", "val", data_dir, limit=2 if dim == 1 else 1).images
    for image in images:
        x = to_float(image[None])
        mu, logvar = model.encode(x)
        ours = log_marginal(model, x, mu[0].detach(), logvar[0].detach())
        assert ours == pytest.approx(reference_log_px(model, x, dim), abs=1e-3)


def test_the_iw_estimate_agrees_with_the_exact_value_within_its_standard_error(
        small_latent_run, data_dir):
    """Where q(z|x) covers the exact posterior (checked by quadrature, not by the weights),
    the estimate is within 4 of its standard errors of log p(x). The standard error of
    log((1/K) sum w) is sqrt(1/ESS - 1/K) by the delta method; its bias is about half its
    square. Where q misses part of the posterior, the estimate is a lower bound only:
    above log p(x) by no more than the same noise."""
    model, dim = small_latent_run.model, small_latent_run.config.latent_dim
    images = load_split("mnist", "val", data_dir, limit=8 if dim == 1 else 2).images
    assert_iw_agrees_with_exact(model, images, K)


def assert_iw_agrees_with_exact(model, images, samples, covered_at_least=None):
    """The check above, for any model with a latent size of 1 or 2 (the discretized
    logistics' test uses it too); q must cover the posterior of `covered_at_least` of the
    images (default: half of them)."""
    covered_at_least = covered_at_least or len(images) // 2
    estimates = log_likelihood_iw(model, images, samples=samples, seed=1)
    covered = 0
    for i, image in enumerate(images):
        x = to_float(image[None])
        mu, logvar = (t[0].detach() for t in model.encode(x))
        exact = log_marginal(model, x, mu, logvar)
        estimate = estimates["log_px"][i].item()
        error = math.sqrt(max(1 / estimates["ess"][i].item() - 1 / samples, 0.0))
        bound = 4 * error + error ** 2 + 1e-6 * abs(exact)  # float64 sums of ~300-1000 nats
        if posterior_mass_near_q(model, x, mu, logvar) > 0.999:
            covered += 1
            assert abs(estimate - exact) <= bound, (i, estimate, exact, error)
        else:
            assert estimate <= exact + bound, (i, estimate, exact, error)
    assert covered >= covered_at_least  # the two-sided agreement was really tested


def test_the_joint_density_is_the_decoders_likelihood_times_the_prior(small_latent_run):
    model, dim = small_latent_run.model, small_latent_run.config.latent_dim
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)).round()
    z = torch.randn(5, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = model.decode(z.float())
    bernoulli = torch.distributions.Bernoulli(logits=logits.double())
    expected = bernoulli.log_prob(x.double().expand_as(logits)).sum((1, 2, 3))
    expected = expected + gaussian_log_density(z)
    assert torch.allclose(log_joint(model, x, z), expected, atol=1e-9, rtol=1e-5)


def test_evaluate_exact_reports_the_gap(small_latent_run, capsys):
    run = small_latent_run.path
    code = main(["evaluate", str(run), "--iw-samples", "200", "--limit", "2", "--exact",
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "-log p(x), exact" in out and "off by more than 0.05" in out
    import json
    result = json.loads((run / "eval.json").read_text())
    assert 0 <= result["exact_share_off"] <= 1 and 0 <= result["exact_gap_worst_image"] < 2
    # the IW estimate is a stochastic lower bound: on average it falls short, never far above
    assert result["exact_gap_mean"] > -0.05
    assert result["exact_nll"] == pytest.approx(result["nll"] - result["exact_gap_mean"])
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "exact (quadrature over z)" in html and f"{result['exact_nll']:.2f}" in html


def test_evaluate_exact_is_refused_for_larger_latent_spaces(capsys, trained_run):
    code = main(["evaluate", str(trained_run), "--exact", "--limit", "2"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "latent sizes 1 and 2; this run has 20" in err


def test_a_posterior_too_narrow_for_the_grid_is_refused(small_latent_run, monkeypatch):
    import vaelab.quadrature as quadrature
    model, dim = small_latent_run.model, small_latent_run.config.latent_dim
    first, _ = quadrature.FINE_POINTS[dim]
    monkeypatch.setitem(quadrature.FINE_POINTS, dim, (first, first))  # no refinement allowed
    x = torch.zeros(1, 1, 28, 28)
    mu, logvar = (t[0].detach() for t in model.encode(x))
    with pytest.raises(VaelabError, match="did not settle"):
        log_marginal(model, x, mu, logvar)
