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
from vaelab.quadrature import (
    OFF_BY,
    TOLERANCE,
    grid,
    integration_box,
    log_joint,
    log_marginal,
)

K = 5000


def float32_sum_error(image, size):
    """How far a float32 sum of an image's pixel terms, of total magnitude `size` (nats), may
    lie from the exact sum: ceil(log2 P) eps32 for torch's cascade sum of P terms, plus 4 eps32
    for each term's own evaluation."""
    return (math.ceil(math.log2(image.numel())) + 4) * torch.finfo(torch.float32).eps * size


@pytest.fixture(scope="module", params=[1, 2])
def small_latent_run(request, data_dir, tmp_path_factory):
    """A model with a 1- or 2-dimensional latent space, 3 epochs on 10,000 real images."""
    from vaelab import Config
    config = Config(data_dir=str(data_dir), latent_dim=request.param, limit_train=10_000,
                    limit_val=256, epochs=3, device="cpu")
    return load_run(train(config, tmp_path_factory.mktemp("runs") / f"d{request.param}"))


def reference_log_px(model, x, dim):
    """An independent integral and its own error estimate, in nats: scipy's adaptive
    Gauss-Kronrod (QUADPACK) for one dimension (asked for 1e-4 relative: the float32 decoder
    is noisier than 1e-5 nats, so a tighter request only hits the subdivision limit), whose
    error estimate it returns; for two, a plain Riemann sum on a fixed 201 x 201 grid over a
    box found by a coarse scan, sharing no code with vaelab.quadrature's refinement, whose
    error is at most its change from a grid of half the resolution (101 x 101)."""
    if dim == 1:
        from scipy.integrate import quad
        z = torch.linspace(-8, 8, 3201, dtype=torch.float64)[:, None]
        values = log_joint(model, x, z)
        peak, top = values.max().item(), z[values.argmax(), 0].item()
        inside = z[values > peak - 40, 0]

        def density(point):
            return math.exp(log_joint(model, x, torch.tensor([[point]]))[0].item() - peak)

        total, error = quad(density, inside.min().item() - 0.05, inside.max().item() + 0.05,
                            points=[top], limit=200, epsabs=0, epsrel=1e-4)  # 1e-4 nats
        return peak + math.log(total), error / total
    axis = torch.linspace(-8, 8, 101, dtype=torch.float64)
    coarse = torch.cartesian_prod(axis, axis)
    values = log_joint(model, x, coarse)
    inside = coarse[values > values.max() - 40]
    lows, highs = inside.min(0).values - 0.32, inside.max(0).values + 0.32
    fine, coarser = (riemann_log_sum(model, x, lows, highs, points) for points in (201, 101))
    return fine, abs(fine - coarser)


def riemann_log_sum(model, x, lows, highs, points):
    axes = [torch.linspace(lo, hi, points, dtype=torch.float64) for lo, hi in zip(lows, highs)]
    cells = torch.cartesian_prod(*axes)
    cell = math.prod(((hi - lo) / (points - 1)).item() for lo, hi in zip(lows, highs))
    return (torch.logsumexp(log_joint(model, x, cells), 0) + math.log(cell)).item()


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
    """Within the two integrators' own errors: vaelab's stops once a doubling of its grid
    moved it by less than quadrature.TOLERANCE (and each doubling shrinks the error of a sum
    over a smooth integrand several-fold, so what is left is below that); the reference's is
    its own estimate. Both integrate the same float32 log_joint values, so its rounding is
    common to both."""
    model, dim = small_latent_run.model, small_latent_run.config.latent_dim
    images = load_split("mnist", "val", data_dir, limit=2 if dim == 1 else 1).images
    for image in images:
        x = to_float(image[None])
        mu, logvar = model.encode(x)
        ours = log_marginal(model, x, mu[0].detach(), logvar[0].detach())
        reference, error = reference_log_px(model, x, dim)
        assert abs(ours - reference) <= TOLERANCE + error


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
        # 4 standard errors and the bias, the quadrature's own tolerance, and float32's
        # rounding of the decoder's log p(x|z) that both sides sum (at different z)
        bound = 4 * error + error ** 2 + TOLERANCE + float32_sum_error(image, abs(exact))
        # q covers the posterior when the mass it misses, whose log biases the estimate
        # (log of the mass near q), is within one standard error
        mass = posterior_mass_near_q(model, x, mu, logvar)
        if mass > 0 and -math.log(mass) <= error:
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
    # float32 sums of 784 pixel terms against float64 ones: float32_sum_error of their size
    tolerance = float32_sum_error(x[0], expected.abs().max().item())
    assert (log_joint(model, x, z) - expected).abs().max().item() <= tolerance


def test_evaluate_exact_reports_the_gap(small_latent_run, capsys):
    run = small_latent_run.path
    code = main(["evaluate", str(run), "--iw-samples", "200", "--limit", "2", "--exact",
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "-log p(x), exact" in out and "off by more than 0.05" in out
    import json
    result = json.loads((run / "eval.json").read_text())
    # the exact figures against the independent integrators, on the same 2 test images, and
    # the estimate's gaps against the IW estimates evaluate made (K = 200, seed 0)
    model, dim = small_latent_run.model, small_latent_run.config.latent_dim
    images = load_split("mnist", "val", small_latent_run.config.data_dir, limit=2).images
    references = [reference_log_px(model, to_float(image[None]), dim) for image in images]
    exact = torch.tensor([value for value, _ in references], dtype=torch.float64)
    tolerance = TOLERANCE + max(error for _, error in references)
    assert abs(result["exact_nll"] + exact.mean().item()) <= tolerance
    gaps = exact - log_likelihood_iw(model, images, 200, seed=0)["log_px"]
    assert abs(result["exact_gap_mean"] - gaps.mean().item()) <= tolerance
    sizes = gaps.abs().tolist()
    if abs(sizes[0] - sizes[1]) > 2 * tolerance:  # which is worst is decided
        assert result["exact_gap_worst_image"] == int(gaps.abs().argmax())
    if all(abs(size - OFF_BY) > tolerance for size in sizes):  # neither is on the edge
        assert result["exact_share_off"] == (gaps.abs() > OFF_BY).double().mean().item()
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
