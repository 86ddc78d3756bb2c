"""The importance-weighted estimator against quadrature, its bounds, and the binarized protocol."""

import inspect
import json
import math
import warnings

import pytest
import torch
from helpers import cli

import vaelab.evaluate
import vaelab.models.vae as vae_module
import vaelab.training as training
from vaelab import load_run, train
from vaelab.data import (
    TEST_BINARIZATION_SEED,
    binarize,
    load_split,
    to_float,
    training_images,
    validation_images,
)
from vaelab.evaluate import log_likelihood_iw, summarize
from vaelab.likelihoods import Bernoulli, nll_samples
from vaelab.losses import bernoulli_nll, iwae_bound, iwae_terms

REAL_STEP = training._step


def test_the_estimate_bounds_the_elbo_and_rises_with_k(trained_run, data_dir):
    """L_K rises with K, and at K = 100 exceeds the ELBO by many standard errors."""
    model = load_run(trained_run).model
    images = load_split("mnist", "val", data_dir, limit=200).images
    estimates = {k: log_likelihood_iw(model, images, samples=k, seed=0) for k in (1, 10, 100)}
    means = {k: e["log_px"].mean().item() for k, e in estimates.items()}
    assert means[1] < means[10] < means[100]
    many = estimates[100]
    gain = many["log_px"] + many["recon"] + many["kl"]  # L_100(x) - ELBO(x), per image
    assert gain.mean().item() > 4 * gain.std().item() / math.sqrt(len(gain))


def test_k1_is_the_elbo_at_the_one_z_its_recon_used(trained_run, data_dir):
    """With K = 1, log w = log p(x|z) + log p(z) - log q(z|x) and recon = -log p(x|z) at the
    same z, so d = log_px + recon + KL = log p(z) - log q(z|x) + KL: the decoder cancels.
    With z = mu + sigma eps, d has mean 0 and variance sum_d mu^2 sigma^2 + (1 - sigma^2)^2 / 2
    exactly, so its sum over the images is within 4 of its standard deviations of 0, and
    d^2 / variance averages 1 within 4 standard errors (a recon at another z would add the
    decoder's noise to d and inflate it)."""
    model = load_run(trained_run).model
    images = load_split("mnist", "val", data_dir, limit=2000).images
    one = log_likelihood_iw(model, images, samples=1, seed=0)
    d = one["log_px"] + one["recon"] + one["kl"]
    with torch.inference_mode():
        mu, logvar = (t.double() for t in model.encode(to_float(images)))
    variance = (mu.pow(2) * logvar.exp() + (1 - logvar.exp()).pow(2) / 2).sum(1)
    assert abs(d.sum().item()) < 4 * variance.sum().sqrt().item()
    ratio = d.pow(2) / variance
    assert abs(ratio.mean().item() - 1) < 4 * ratio.std().item() / math.sqrt(len(ratio))


@pytest.mark.mutation
def test_iwae_bound_identities():
    log_w = torch.tensor([[-3.0, 0.5], [-1.0, 0.5]])
    assert torch.allclose(iwae_bound(log_w[:1]), log_w[0])  # K = 1: the ELBO sample itself
    assert torch.allclose(iwae_bound(log_w), torch.log(log_w.exp().mean(0)))
    assert (iwae_bound(log_w) >= log_w.mean(0)).all()  # Jensen: L_K >= the mean of log w


@pytest.mark.mutation
def test_iwae_terms_report_the_elbo_parts_and_a_tighter_objective():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=generator)
    mu, logvar = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    z = mu + (0.5 * logvar).exp() * torch.randn(7, 3, 4, generator=generator)
    logits = torch.randn(7, 3, 1, 28, 28, generator=generator)
    terms = iwae_terms(nll_samples(Bernoulli(), logits, x), z, mu, logvar)
    assert terms.objective.shape == terms.loss.shape == (3,)
    assert torch.allclose(terms.loss, terms.recon + terms.kl)
    nll = torch.stack([bernoulli_nll(logits[k], x) for k in range(7)])
    assert torch.allclose(terms.recon, nll.mean(0))


def independent_iwae_bound(logits, x, z, mu, logvar, beta):
    """L_K from torch.distributions, and a bound on its float64 summation error: n terms
    summed in float64 err by at most n * eps * (the sum of their magnitudes)."""
    from torch.distributions import Bernoulli, Normal

    log_px_z = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(2).sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    bound = torch.logsumexp(log_px_z + beta * (log_pz - log_qz), 0) - math.log(len(z))
    terms = logits[0, 0].numel() + 2 * z.shape[-1]
    magnitude = (log_px_z.abs() + log_pz.abs() + log_qz.abs()).max()
    return bound, terms * torch.finfo(torch.float64).eps * magnitude.item()


def binary_iwae_inputs(k=7, batch=3, dim=4):
    generator = torch.Generator().manual_seed(0)
    double = {"generator": generator, "dtype": torch.float64}
    x = torch.bernoulli(torch.rand(batch, 1, 28, 28, **double), generator=generator)
    mu, logvar = torch.randn(batch, dim, **double), torch.randn(batch, dim, **double)
    z = mu + (0.5 * logvar).exp() * torch.randn(k, batch, dim, **double)
    logits = 3 * torch.randn(k, batch, 1, 28, 28, **double)
    return logits, x, z, mu, logvar


@pytest.mark.mutation
@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
def test_iwae_objective_is_minus_the_bound_from_torch_distributions(beta):
    """objective = -log (1/K) sum_k p(x|z_k) [p(z_k) / q(z_k|x)]^beta, with Bernoulli(logits)
    for p(x|z) on binary x and Normal for q(z|x) and the prior; beta < 1 weights only
    log p(z) - log q(z|x) (KL warm-up), never log p(x|z)."""
    logits, x, z, mu, logvar = binary_iwae_inputs()
    expected, tolerance = independent_iwae_bound(logits, x, z, mu, logvar, beta)
    objective = iwae_terms(nll_samples(Bernoulli(), logits, x), z, mu, logvar, beta).objective
    assert objective.dtype == torch.float64
    assert (objective + expected).abs().max().item() <= tolerance
    if beta != 1.0:  # the weight matters: beta = 1 is a different number
        unweighted = iwae_terms(nll_samples(Bernoulli(), logits, x), z, mu, logvar).objective
        assert ((objective - unweighted).abs() > tolerance).all()


@pytest.mark.mutation
def test_summary_has_standard_errors_bits_and_active_units():
    estimates = {"log_px": -torch.tensor([100.0, 102.0, 104.0], dtype=torch.float64),
                 "recon": torch.tensor([80.0, 82.0, 84.0], dtype=torch.float64),
                 "kl": torch.tensor([25.0, 25.0, 25.0], dtype=torch.float64),
                 "ess": torch.tensor([3.0, 90.0, 40.0], dtype=torch.float64),
                 "mu": torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.05], [0.0, 0.0, -0.05]])}
    result = summarize(estimates, 784)
    assert result["nll"] == pytest.approx(102.0)
    assert result["nll_stderr"] == pytest.approx(2.0 / math.sqrt(3))
    assert result["nll_bits_per_dim"] == pytest.approx(102.0 / (784 * math.log(2)))
    assert result["nll_bits_per_dim_stderr"] == pytest.approx(
        2.0 / math.sqrt(3) / (784 * math.log(2)))
    assert result["neg_elbo"] == pytest.approx(107.0)
    assert result["neg_elbo_bits_per_dim"] == pytest.approx(107.0 / (784 * math.log(2)))
    assert result["active_units"] == 1  # variances 0, 2/3, 1/600: only the middle unit
    assert result["effective_samples_median"] == 40.0
    assert "kl_per_group" not in result and "kl_per_group" not in summarize(estimates, 784, (3,))
    # Two latent groups, of 1 and 2 units (top first), with a KL each; one image alone has no
    # standard error.
    grouped = dict(estimates, kl_1=torch.tensor([5.0, 7.0, 9.0], dtype=torch.float64),
                   kl_2=torch.tensor([20.0, 18.0, 16.0], dtype=torch.float64),
                   mu=torch.tensor([[0.0, 1.0, 0.3], [0.0, -1.0, -0.3], [0.0, 0.0, 0.0]]))
    groups = summarize(grouped, 784, (1, 2))
    assert groups["active_units_per_group"] == [0, 2] and groups["active_units"] == 2
    assert groups["kl_per_group"] == [7.0, 18.0]
    three = summarize(dict(grouped, kl_3=torch.zeros(3, dtype=torch.float64)), 784, (1, 1, 1))
    assert three["active_units_per_group"] == [0, 1, 1] and three["kl_per_group"] == [7, 18, 0]
    with warnings.catch_warnings():  # and says so without torch's warning about its std
        warnings.simplefilter("error")
        assert math.isnan(summarize({key: value[:1] for key, value in estimates.items()},
                                    784)["nll_stderr"])


@pytest.mark.mutation
def test_the_weights_are_summed_in_float64_whatever_precision_a_model_gives():
    """A stand-in model whose log weights (near -1000, where float32 keeps 4 decimals) come
    in float32, over two chunks of noise: the chunks' sums are added in float64. 1e-10 lies
    far above float64's rounding at that scale (1000 x 2^-52 = 2e-13) and far below
    float32's (1000 x 2^-23 = 1e-4)."""
    class Float32Weights:
        def importance_terms(self, x, eps, y):
            log_w = (-1000.0 + eps[..., 0]).float()
            return {"log_w": log_w, "recon": -log_w, "kl": torch.zeros_like(log_w)}

        def group_means(self, x, y):
            return [torch.zeros(len(x), 1)]

    generator = torch.Generator().manual_seed(0)
    noise = [torch.randn(3, 2, 1, generator=generator), torch.randn(4, 2, 1, generator=generator)]
    found = vaelab.evaluate._estimates(Float32Weights(), torch.zeros(2, 1, 2, 2), noise)
    chunks = torch.stack([torch.logsumexp((-1000.0 + eps[..., 0]).float(), 0).double()
                          for eps in noise])
    assert found["log_px"].dtype == torch.float64
    assert torch.allclose(found["log_px"], torch.logsumexp(chunks, 0) - math.log(7), rtol=0,
                          atol=1e-10)


@pytest.mark.mutation
def test_evaluate_runs_default_seed_is_0():
    """An untrained seed network (its q is not its prior, so the draws matter): no seed is
    seed 0, and seed 1 differs."""
    from vaelab import Config
    from vaelab.evaluate import evaluate_run
    from vaelab.models import build_model

    torch.manual_seed(0)
    model = build_model(Config(channels=1, height=28, width=28)).eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    default, zero, one = (evaluate_run(model, images, samples=4, **seed)["nll"]
                          for seed in ({}, {"seed": 0}, {"seed": 1}))
    assert default == zero != one


@pytest.mark.mutation
def test_bernoulli_floor_is_none_for_binary_images_and_the_grayscale_floor():
    binary = torch.tensor([0, 255], dtype=torch.uint8).repeat(392).view(1, 1, 28, 28)
    assert Bernoulli().floor(to_float(binary)) is None
    half = torch.full((1, 1, 28, 28), 128, dtype=torch.uint8)
    p = 128 / 255  # float32's 128/255 is what the floor sees, exactly representable in float64
    p = torch.tensor(p, dtype=torch.float32).item()
    entropy = 784 * -(p * math.log(p) + (1 - p) * math.log(1 - p))
    # 784 float64 terms, each to a few ulps, in a cascade sum: (log2 784 + 4) eps64 relative
    tolerance = (math.ceil(math.log2(784)) + 4) * torch.finfo(torch.float64).eps * entropy
    assert abs(Bernoulli().floor(to_float(half)) - entropy) <= tolerance


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


def spy_on_objectives(monkeypatch):
    """(name, arguments) of each call a training step makes (through the VAE's `terms`) to
    elbo_terms or iwae_terms; validation's calls, without gradients, are not counted."""
    calls = []
    for name in ("elbo_terms", "iwae_terms"):
        real = getattr(vae_module, name)

        def spy(*args, _name=name, _real=real, **kwargs):
            if torch.is_grad_enabled():  # a training step (validation runs without gradients)
                bound = inspect.signature(_real).bind(*args, **kwargs)
                bound.apply_defaults()
                calls.append((_name, bound.arguments))
            return _real(*args, **kwargs)

        monkeypatch.setattr(vae_module, name, spy)
    return calls


@pytest.mark.parametrize("k", [5, 1])
def test_iw_train_samples_reach_every_steps_objective(tiny_config, tmp_path, monkeypatch, k):
    """iw_train = K > 1: each step's objective is the IWAE bound over K decodes per image
    (never the ELBO); K = 1: the ELBO, one decode per image."""
    calls = spy_on_objectives(monkeypatch)
    config = tiny_config.replace(iw_train=k, binarize="dynamic")
    train(config, tmp_path / "run")
    steps = 512 // config.batch_size
    assert [name for name, _ in calls] == ["iwae_terms" if k > 1 else "elbo_terms"] * steps
    for _, arguments in calls:
        if k > 1:
            assert arguments["z"].shape == (k, config.batch_size, config.latent_dim)
            assert arguments["nll"].shape == (k, config.batch_size)  # K decodes per image
        else:
            assert arguments["recon"].shape == (config.batch_size,)


@pytest.mark.parametrize("k", [1, 3])
def test_each_step_uses_the_warmed_up_kl_weight(tiny_config, tmp_path, monkeypatch, k):
    """The beta each step hands its objective is beta * min(1, step / warm-up steps)."""
    calls = spy_on_objectives(monkeypatch)
    config = tiny_config.replace(limit_train=256, batch_size=32, beta=0.5, kl_warmup=2,
                                 epochs=3, iw_train=k)
    train(config, tmp_path / "run")
    per_epoch = 256 // 32
    expected = [config.beta * min(1.0, step / (config.kl_warmup * per_epoch))
                for step in range(config.epochs * per_epoch)]
    used = [arguments["beta"] for _, arguments in calls]
    assert used == pytest.approx(expected, rel=0, abs=4 * torch.finfo(torch.float64).eps)
    assert used[0] == 0 and used[-1] == config.beta  # the ramp really ran, and ended


def spy_on_evaluated_images(monkeypatch):
    """The images each log_likelihood_iw call of `vaelab evaluate` receives."""
    seen = []
    real = vaelab.evaluate.log_likelihood_iw

    def spy(model, images, *args, **kwargs):
        seen.append(images.clone())
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(vaelab.evaluate, "log_likelihood_iw", spy)
    return seen


def test_evaluate_measures_a_dynamic_run_on_the_shared_test_binarization(
        tiny_config, tmp_path, capsys, monkeypatch):
    config = tiny_config.replace(binarize="dynamic", seed=7, limit_train=64, limit_val=64)
    train(config, tmp_path / "run")
    seen = spy_on_evaluated_images(monkeypatch)
    assert cli(capsys, "evaluate", tmp_path / "run", "--iw-samples", 2, "--limit", 50,
               "--quiet")[0] == 0
    val = load_split("mnist", "val", config.data_dir, limit=50)
    assert len(seen) == 1 and torch.equal(seen[0], validation_images(config, val))
    assert torch.equal(seen[0], binarize(val.images, TEST_BINARIZATION_SEED))
    assert set(seen[0].unique().tolist()) == {0, 255}


def test_evaluate_split_train_of_a_static_run_uses_its_training_binarization(
        tiny_config, tmp_path, capsys, monkeypatch):
    config = tiny_config.replace(binarize="static", seed=3, limit_train=64, limit_val=64)
    train(config, tmp_path / "run")
    seen = spy_on_evaluated_images(monkeypatch)
    assert cli(capsys, "evaluate", tmp_path / "run", "--iw-samples", 2, "--limit", 50,
               "--split", "train", "--quiet")[0] == 0
    images = load_split("mnist", "train", config.data_dir, limit=50)
    assert len(seen) == 1 and torch.equal(seen[0], training_images(config, images))
    assert not torch.equal(seen[0], validation_images(config, images))  # the other one
    assert json.loads((tmp_path / "run" / "eval-train.json").read_text())["split"] == "train"




def test_evaluate_writes_eval_json_and_prints_a_table(capsys, trained_run):
    code, out, _ = cli(capsys, "evaluate", trained_run, "--iw-samples", 20, "--limit", 100,
                       "--quiet")
    assert code == 0 and "-log p(x), IW K=20" in out and "active units" in out
    result = json.loads((trained_run / "eval.json").read_text())
    assert result["images"] == 100 and result["iw_samples"] == 20 and result["split"] == "test"
    assert result["nll"] < result["neg_elbo"] and result["nll_stderr"] > 0
    assert 0 < result["active_units"] <= 20 and result["pixel_entropy"] > 0


def test_binarized_runs_are_measured_on_one_shared_binarization(tiny_config, tmp_path, capsys,
                                                                 monkeypatch):
    """Two runs binarized differently (dynamic with seed 97, static with seed 98) are both
    evaluated on the same images: the test images binarized once with TEST_BINARIZATION_SEED,
    whatever the run's own seed or binarization."""
    seen = spy_on_evaluated_images(monkeypatch)
    for name, binarization in (("a", "dynamic"), ("b", "static")):
        train(tiny_config.replace(binarize=binarization, seed=ord(name), limit_train=128),
              tmp_path / name)
        assert cli(capsys, "evaluate", tmp_path / name, "--iw-samples", 2, "--limit", 50,
                   "--quiet")[0] == 0
        assert "pixel_entropy" not in json.loads((tmp_path / name / "eval.json").read_text())
    val = load_split("mnist", "val", tiny_config.data_dir, limit=50)
    shared = binarize(val.images, TEST_BINARIZATION_SEED)
    assert len(seen) == 2 and all(torch.equal(images, shared) for images in seen)
    assert set(shared.unique().tolist()) == {0, 255}
    assert not torch.equal(shared, binarize(val.images, ord("a")))  # the seed matters


@pytest.mark.parametrize("args, words", [
    (["--iw-samples", "0"], ["--iw-samples 0", "at least 1"]),
    (["--limit", "0"], ["--limit 0", "at least 1"]),
])
def test_evaluate_rejects_bad_arguments(capsys, trained_run, args, words):
    code, _, err = cli(capsys, "evaluate", trained_run, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert all(word in err for word in words)


@pytest.mark.mutation
def test_evaluate_rejects_a_missing_run(capsys, tmp_path):
    code, _, err = cli(capsys, "evaluate", tmp_path / "nothing-here")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no run directory" in err


@pytest.mark.mutation
def test_a_hierarchys_evaluation_has_each_groups_kl_and_active_units(data_dir):
    """Untrained, so the numbers are not the point: their shape is. The KL per group adds up
    to the KL."""
    from vaelab import Config
    from vaelab.evaluate import evaluate_run
    from vaelab.models import build_model

    model = build_model(Config(model="hvae", hvae_channels=8, channels=1, height=28, width=28))
    images = load_split("mnist", "val", data_dir, limit=3).images
    result = evaluate_run(model.eval(), images, samples=2, seed=0)
    groups = len(model.group_sizes)
    assert groups > 1 and len(result["kl_per_group"]) == groups
    assert len(result["active_units_per_group"]) == groups
    assert sum(result["active_units_per_group"]) == result["active_units"]
    assert result["latent_dim"] == sum(model.group_sizes)
    # the total is the groups' float32 sum per image: off by at most a few eps32 per group
    eps32 = torch.finfo(torch.float32).eps
    assert sum(result["kl_per_group"]) == pytest.approx(result["kl"], rel=4 * groups * eps32)
