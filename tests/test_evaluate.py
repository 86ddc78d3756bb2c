"""The importance-weighted estimator against quadrature, its bounds, and the binarized protocol."""

import json
import math

import pytest
import torch

import vaelab.training as training
from vaelab import load_run, train
from vaelab.cli import main
from vaelab.data import load_split, to_float, validation_images
from vaelab.evaluate import log_likelihood_iw, pixel_entropy, summarize
from vaelab.losses import bernoulli_nll, gaussian_log_density, iwae_bound, iwae_terms

REAL_STEP = training._step


@torch.inference_mode()
def log_integrand(model, x, z):
    """log p(x|z) + log p(z) at each row of z (M, D), in float64."""
    logits = torch.cat([model.decode(chunk) for chunk in z.split(4096)])
    return -bernoulli_nll(logits, x.expand_as(logits)).double() + gaussian_log_density(z.double())


def grid(lows, highs, points):
    axes = [torch.linspace(lo, hi, points, dtype=torch.float64) for lo, hi in zip(lows, highs)]
    cells = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    volume = math.prod((hi - lo) / (points - 1) for lo, hi in zip(lows, highs))
    return cells, volume


def log_px_by_quadrature(model, x, dim):
    """log p(x) = log of the integral of p(x|z) p(z) dz by a Riemann sum: a coarse grid over the
    prior finds where the mass lies, a fine grid over that box integrates it."""
    coarse, _ = grid([-10] * dim, [10] * dim, 2001 if dim == 1 else 161)
    values = log_integrand(model, x, coarse.float())
    mass = coarse[values > values.max() - 30]
    lows, highs = mass.min(0).values - 0.1, mass.max(0).values + 0.1
    fine, volume = grid(lows.tolist(), highs.tolist(), 4001 if dim == 1 else 241)
    values = log_integrand(model, x, fine.float())
    edges = (fine == lows).any(1) | (fine == highs).any(1)
    assert values[edges].max() < values.max() - 15  # the box holds all the mass
    return (torch.logsumexp(values, 0) + math.log(volume)).item()


@pytest.mark.parametrize("dim, images", [(1, 8), (2, 3)])
def test_iw_estimate_agrees_with_quadrature(tiny_config, tmp_path, dim, images):
    """Where q(z|x) covers the posterior (effective sample size >= 1% of K) the estimate
    equals the integral within 0.05 nats; elsewhere it stays below it (a lower bound that
    has not converged, which the effective sample size reports)."""
    run = load_run(train(tiny_config.replace(latent_dim=dim, limit_train=10_000, epochs=3),
                         tmp_path / "run"))
    val = load_split("mnist", "val", tiny_config.data_dir, limit=images)
    k = 5000
    estimates = log_likelihood_iw(run.model, val.images, samples=k, seed=1)
    converged = 0
    for i in range(images):
        exact = log_px_by_quadrature(run.model, to_float(val.images[i:i + 1]), dim)
        estimate = estimates["log_px"][i].item()
        if estimates["ess"][i] >= 0.01 * k:
            converged += 1
            assert abs(estimate - exact) < 0.05, (i, estimate, exact)
        else:
            assert estimate < exact + 0.05, (i, estimate, exact)
    assert converged >= images // 2  # the agreement was really tested


def test_the_estimate_bounds_the_elbo_and_rises_with_k(trained_run, data_dir):
    model = load_run(trained_run).model
    images = load_split("mnist", "val", data_dir, limit=200).images
    means = {}
    for k in (1, 10, 100):
        estimates = log_likelihood_iw(model, images, samples=k, seed=0)
        means[k] = estimates["log_px"].mean().item()
    elbo = -(estimates["recon"] + estimates["kl"]).mean().item()
    assert means[1] < means[10] < means[100]
    assert abs(means[1] - elbo) < 1.0  # K = 1 is a one-sample estimate of the ELBO
    assert means[100] > elbo + 1.0


def test_iwae_bound_identities():
    log_w = torch.tensor([[-3.0, 0.5], [-1.0, 0.5]])
    assert torch.allclose(iwae_bound(log_w[:1]), log_w[0])  # K = 1: the ELBO sample itself
    assert torch.allclose(iwae_bound(log_w), torch.log(log_w.exp().mean(0)))
    assert (iwae_bound(log_w) >= log_w.mean(0)).all()  # Jensen: L_K >= the mean of log w


def test_iwae_terms_report_the_elbo_parts_and_a_tighter_objective():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=generator)
    mu, logvar = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    z = mu + (0.5 * logvar).exp() * torch.randn(7, 3, 4, generator=generator)
    logits = torch.randn(7, 3, 1, 28, 28, generator=generator)
    terms = iwae_terms(logits, x, z, mu, logvar)
    assert terms.objective.shape == terms.loss.shape == (3,)
    assert torch.allclose(terms.loss, terms.recon + terms.kl)
    nll = torch.stack([bernoulli_nll(logits[k], x) for k in range(7)])
    assert torch.allclose(terms.recon, nll.mean(0))


def test_summary_has_standard_errors_bits_and_active_units():
    estimates = {"log_px": -torch.tensor([100.0, 102.0, 104.0], dtype=torch.float64),
                 "recon": torch.tensor([80.0, 82.0, 84.0], dtype=torch.float64),
                 "kl": torch.tensor([25.0, 25.0, 25.0], dtype=torch.float64),
                 "ess": torch.tensor([3.0, 90.0, 40.0], dtype=torch.float64),
                 "mu": torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.05], [0.0, 0.0, -0.05]])}
    result = summarize(estimates)
    assert result["nll"] == pytest.approx(102.0)
    assert result["nll_stderr"] == pytest.approx(2.0 / math.sqrt(3))
    assert result["nll_bits_per_dim"] == pytest.approx(102.0 / (784 * math.log(2)))
    assert result["neg_elbo"] == pytest.approx(107.0)
    assert result["active_units"] == 1  # variances 0, 2/3, 1/600: only the middle unit
    assert result["effective_samples_median"] == 40.0


def test_pixel_entropy_is_zero_for_binary_images_and_the_grayscale_floor():
    binary = torch.tensor([0, 255], dtype=torch.uint8).repeat(392).view(1, 1, 28, 28)
    assert pixel_entropy(binary) == pytest.approx(0.0, abs=1e-6)
    half = torch.full((1, 1, 28, 28), 128, dtype=torch.uint8)
    assert pixel_entropy(half) == pytest.approx(784 * math.log(2), rel=1e-4)


def test_kl_warmup_values():
    weight = training.kl_weight
    assert [weight(1.0, 2, step, 10) for step in (0, 5, 10, 20, 100)] == [0, 0.25, 0.5, 1, 1]
    assert weight(0.5, 2, 10, 10) == 0.25 and weight(0.7, 0, 0, 10) == 0.7


def test_kl_warmup_in_a_run(tiny_config, tmp_path):
    run = load_run(train(tiny_config.replace(kl_warmup=2, epochs=3), tmp_path / "run"))
    assert [row["beta"] for row in run.metrics] == [0.5, 1.0, 1.0]


def binarized_batches(config, tmp_path, monkeypatch, name):
    """The x of every training step of a run on one image (batch 1, so x is that image)."""
    seen = []
    monkeypatch.setattr(training, "_step", lambda state, x, *args: seen.append(x.clone())
                        or REAL_STEP(state, x, *args))
    train(config, tmp_path / name)
    return seen


def test_dynamic_binarization_changes_each_epoch_and_repeats_by_seed(tiny_config, tmp_path,
                                                                     monkeypatch):
    config = tiny_config.replace(binarize="dynamic", limit_train=1, batch_size=1, epochs=3)
    first = binarized_batches(config, tmp_path, monkeypatch, "a")
    again = binarized_batches(config, tmp_path, monkeypatch, "b")
    other = binarized_batches(config.replace(seed=1), tmp_path, monkeypatch, "c")
    assert all(set(x.unique().tolist()) <= {0.0, 1.0} for x in first)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_static_binarization_is_fixed_across_epochs(tiny_config, tmp_path, monkeypatch):
    config = tiny_config.replace(binarize="static", limit_train=1, batch_size=1, epochs=3)
    seen = binarized_batches(config, tmp_path, monkeypatch, "s")
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])
    assert set(seen[0].unique().tolist()) == {0.0, 1.0}


def test_importance_weighted_training_runs_and_learns(tiny_config, tmp_path):
    run = load_run(train(tiny_config.replace(iw_train=5, epochs=2, binarize="dynamic"),
                         tmp_path / "run"))
    assert run.metrics[1]["val_loss"] < run.metrics[0]["val_loss"]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_writes_eval_json_and_prints_a_table(capsys, trained_run):
    code, out, _ = cli(capsys, "evaluate", trained_run, "--iw-samples", 20, "--limit", 100,
                       "--quiet")
    assert code == 0 and "-log p(x), IW K=20" in out and "active units" in out
    result = json.loads((trained_run / "eval.json").read_text())
    assert result["images"] == 100 and result["iw_samples"] == 20 and result["split"] == "test"
    assert result["nll"] < result["neg_elbo"] and result["nll_stderr"] > 0
    assert 0 < result["active_units"] <= 20 and result["pixel_entropy"] > 0


def test_binarized_runs_are_measured_on_one_shared_binarization(tiny_config, tmp_path, capsys):
    for name in ("a", "b"):
        train(tiny_config.replace(binarize="dynamic", seed=ord(name)), tmp_path / name)
        assert cli(capsys, "evaluate", tmp_path / name, "--iw-samples", 2, "--limit", 50,
                   "--quiet")[0] == 0
    val = load_split("mnist", "val", tiny_config.data_dir, limit=50)
    images = validation_images(tiny_config.replace(binarize="dynamic"), val)
    assert set(images.unique().tolist()) == {0, 255}
    assert torch.equal(images, validation_images(
        tiny_config.replace(binarize="static", seed=5), val))
    assert "pixel_entropy" not in json.loads((tmp_path / "a" / "eval.json").read_text())


@pytest.mark.parametrize("args, words", [
    (["--iw-samples", "0"], ["--iw-samples 0", "at least 1"]),
    (["--limit", "0"], ["--limit 0", "at least 1"]),
])
def test_evaluate_rejects_bad_arguments(capsys, trained_run, args, words):
    code, _, err = cli(capsys, "evaluate", trained_run, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert all(word in err for word in words)


def test_evaluate_rejects_a_missing_run(capsys, tmp_path):
    code, _, err = cli(capsys, "evaluate", tmp_path / "nothing-here")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no run directory" in err
