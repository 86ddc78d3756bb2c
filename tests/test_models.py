"""The contract every registered model family keeps (models/interface.py), parametrized over
the registry: a family added to models.FAMILIES is tested here without a line more.

Each family runs at a small size on real MNIST slices: shapes and sums of its terms, finite
gradients, noise drawn from the given generator, importance weights that bound and agree with
the terms, a model rebuilt from its run folder, an exact resume, every figure command and the
report, and (in test_distributed.py's style) two processes computing what one does.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import cli
from test_distributed import SLICE, assert_same_metrics, torchrun
from test_robustness import assert_stop_at_step_5_then_resume_is_exact

from vaelab import Config, load_run, train
from vaelab.data import load_split, to_float, validation_split
from vaelab.evaluate import evaluate_elbo, log_likelihood_iw
from vaelab.models import FAMILIES, build_model, learns_prior

# Each family small enough to train in seconds on two cores.
SMALL = {"vae": dict(latent_dim=4),
         "hvae": dict(hvae_channels=16, hvae_latent_channels=2, hvae_groups=1),
         "beta-tcvae": dict(latent_dim=4),
         "factorvae": dict(latent_dim=4, factorvae_hidden=32),
         "capacity": dict(latent_dim=4, capacity_steps=10),
         "vqvae": dict(discrete_channels=16, codebook_size=16, code_dim=4),
         "fsq": dict(discrete_channels=16, levels="8,5,5")}
# Families whose objective is the ELBO with the KL weighted (--beta, --kl-warmup); the others
# check their own objectives in their own test files.
WEIGHTED_ELBO = {"vae", "hvae"}
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    assert request.param in SMALL, f"give the new family {request.param} a small size here"
    return request.param


def small_config(family: str, **changes) -> Config:
    return Config(model=family, device="cpu", **SMALL[family], **changes)


def real_images(data_dir, count: int) -> torch.Tensor:
    return to_float(load_split("mnist", "val", data_dir, limit=count).images)


def test_terms_have_their_shapes_and_add_up(family, data_dir):
    torch.manual_seed(0)
    model = build_model(small_config(family))
    x = real_images(data_dir, 5)
    noise = model.draw_noise(5, torch.Generator().manual_seed(1))
    terms = model.terms(x, noise, kl_weight=0.25)
    assert set(terms) == {"objective", "loss", *model.term_names}
    assert all(value.shape == (5,) and torch.isfinite(value).all() for value in terms.values())
    scale = terms["loss"].abs().max().item()  # a few float32 roundings of numbers this large
    assert torch.allclose(terms["loss"], terms["recon"] + terms["kl"], rtol=0,
                          atol=8 * EPS32 * scale)
    if family in WEIGHTED_ELBO:
        assert torch.allclose(terms["objective"], terms["recon"] + 0.25 * terms["kl"], rtol=0,
                              atol=8 * EPS32 * scale)
    groups = [terms[name] for name in model.term_names if name.startswith("kl_")]
    if groups:  # a hierarchy: the KL is its groups' KLs
        assert len(groups) == len(model.group_sizes)
        assert torch.allclose(sum(groups), terms["kl"], rtol=0, atol=8 * EPS32 * scale)
    assert (terms["kl"] >= -8 * EPS32 * scale).all()  # a KL is never negative


def test_noise_comes_from_the_generator_it_is_given(family):
    model = build_model(small_config(family))
    first = model.draw_noise(6, torch.Generator().manual_seed(3), samples=2)
    again = model.draw_noise(6, torch.Generator().manual_seed(3), samples=2)
    other = model.draw_noise(6, torch.Generator().manual_seed(4), samples=2)
    assert first.shape == (2, 6, model.noise_size)
    if model.noise_size == 0:  # a point-mass posterior (discrete codes) draws nothing
        return
    # a model may draw more than its latents (FactorVAE: the keys of its permutations)
    assert model.noise_size >= sum(model.group_sizes)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert model.prior_noise(3, torch.Generator()).shape == (3, sum(model.group_sizes))


def test_gradients_are_finite_and_reach_every_parameter(family, data_dir):
    """After two Adam steps (layers that start at zero, as a hierarchy's posterior corrections
    do, pass no gradient on the first), every parameter gets a finite, non-zero gradient."""
    torch.manual_seed(0)
    model = build_model(small_config(family))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, generator = real_images(data_dir, 16), torch.Generator().manual_seed(0)
    for _ in range(3):
        optimizer.zero_grad()
        model.terms(x, model.draw_noise(16, generator))["objective"].mean().backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_importance_weights_bound_and_agree_with_the_terms(family, data_dir):
    """With K samples z_k ~ q: (1) L_K = logsumexp(log w) - log K is at least the mean of the
    log w (Jensen), sample by sample; (2) log w_k + recon_k = log p(z_k) - log q(z_k|x), whose
    mean over q is minus the KL that `kl` gives analytically: their paired differences average
    to zero within 5 of their standard errors (and the float32 rounding of a sum over every
    latent unit), for each image. The weights are jittered so that q differs from p (a new
    hierarchy starts with q = p)."""
    torch.manual_seed(0)
    model = build_model(small_config(family)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    x, samples = real_images(data_dir, 6), 400
    with torch.inference_mode():
        found = model.importance_terms(x, model.draw_noise(6, torch.Generator().manual_seed(2),
                                                            samples))
    log_w = found["log_w"]
    assert log_w.shape == found["recon"].shape == found["kl"].shape == (samples, 6)
    bound = torch.logsumexp(log_w, 0) - math.log(samples)
    assert (bound >= log_w.mean(0) - 64 * torch.finfo(torch.float64).eps
            * log_w.abs().max()).all()
    difference = -(log_w + found["recon"]) - found["kl"]
    stderr = difference.std(0) / math.sqrt(samples)
    # one rounding per unit of terms of order one, and the float64 sum's own
    rounding = 4 * EPS32 * model.noise_size + 4 * torch.finfo(torch.float64).eps * \
        log_w.abs().max()
    assert (difference.mean(0).abs() <= 5 * stderr + rounding).all(), (difference.mean(0), stderr)


def test_the_iw_estimate_is_at_or_above_the_elbo(family, data_dir, tmp_path):
    config = small_config(family, data_dir=str(data_dir), limit_train=256, limit_val=64)
    model = load_run(train(config, tmp_path / "run", progress=False)).model
    images = load_split("mnist", "val", data_dir, limit=32).images
    estimates = log_likelihood_iw(model, images, samples=64)
    gain = estimates["log_px"] + estimates["recon"] + estimates["kl"]  # L_64 - ELBO per image
    # E[L_K] >= ELBO; the ELBO here is estimated (its recon from the same samples), so the mean
    # gain may fall below zero only by its own noise: 4 standard errors (and the float64
    # rounding of the logsumexp, where a point-mass posterior makes every sample the same)
    rounding = 8 * torch.finfo(torch.float64).eps * estimates["log_px"].abs().max()
    assert gain.mean() >= -4 * gain.std() / math.sqrt(len(gain)) - rounding
    assert estimates["mu"].shape == (32, sum(model.group_sizes))


def test_the_run_folder_alone_rebuilds_the_model(family, data_dir, tmp_path):
    """The model load_run builds from config.json and last.pt gives exactly the validation
    loss training recorded for that epoch (the same computation on the same inputs)."""
    config = small_config(family, data_dir=str(data_dir), limit_train=256, limit_val=64)
    run = load_run(train(config, tmp_path / "run", progress=False), "last")
    assert run.config.model == family and type(run.model).__name__ == \
        FAMILIES[family][1]
    val = validation_split(run.config).images[:64]
    again = evaluate_elbo(run.model, val, seed=run.config.seed).means("val", 64)
    assert again["val_loss"] == run.metrics[-1]["val_loss"]
    for name in run.model.term_names:
        assert again[f"val_{name}"] == run.metrics[-1][f"val_{name}"], name


def test_a_run_stopped_mid_epoch_resumes_exactly(family, data_dir, tmp_path):
    config = small_config(family, data_dir=str(data_dir), limit_train=256, limit_val=64,
                          epochs=2, batch_size=32)
    assert_stop_at_step_5_then_resume_is_exact(config, tmp_path)


def test_every_figure_command_and_the_report(family, data_dir, tmp_path, capsys):
    config = small_config(family, data_dir=str(data_dir), limit_train=256, limit_val=128)
    run = train(config, tmp_path / "run", progress=False)
    discrete = learns_prior(load_run(run).model)
    if discrete:  # sampling needs the prior over codes, trained after the autoencoder
        code, _, err = cli(capsys, "sample", run)
        assert code == 1 and "vaelab train-prior" in err and err.count("\n") == 1
        code, _, err = cli(capsys, "train-prior", run, "--epochs", 1, "--channels", 8,
                           "--layers", 1)
        assert code == 0, err
    commands = [["reconstruct", "--n", "6"], ["reconstruct", "--sample"], ["sample", "--n", "9"],
                ["sample", "--temperature", "0.7"], ["interpolate"], ["latent"], ["curves"],
                ["report"]]
    for command in commands:
        code, out, err = cli(capsys, command[0], run, *command[1:])
        assert code == 0, (command, err)
    figures = {path.stem for path in (run / "figures").glob("*.png")}
    assert {"reconstructions", "samples", "interpolation", "latent", "curves"} <= figures
    if discrete:  # the report drew the code maps and the codes' use
        assert {"code_map", "code_usage"} <= figures
    assert (run / "report.html").is_file()
    groups = len(load_run(run).model.group_sizes)
    code, _, err = cli(capsys, "levels", run, "--n", 3)
    if groups > 1:  # a hierarchy's own pictures, in the report too
        assert code == 0, err
        assert {"levels", "temperatures"} <= {path.stem for path in (run / "figures").glob("*")}
    else:
        assert code == 1 and "one latent group" in err


def test_two_processes_compute_what_one_does(family, data_dir, tmp_path):
    if family == "vae":
        pytest.skip("test_distributed.py tests the vae at length")
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in SMALL[family].items()]
    one = train(small_config(family, data_dir=str(data_dir), limit_train=449, limit_val=255,
                             epochs=2), tmp_path / "one", progress=False)
    two = tmp_path / "two"
    result = torchrun(data_dir, "train", "--out", two, "--epochs", 2, "--model", family,
                      *flags, *SLICE)
    assert result.returncode == 0, result.stderr[-8000:]
    assert_same_metrics(two, one)
