"""The hierarchical VAE's own promises (test_models.py holds the contract every family keeps):
its KL and log-ratios against torch.distributions, the groups at each resolution, what the
temperature and a code mean, skipped updates, and its bad input, one line each."""

from __future__ import annotations

import pytest
import torch
from helpers import cli
from torch.distributions import Normal, kl_divergence

from vaelab import Config, load_run, train
from vaelab.checkpoint import load_checkpoint
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.hvae import HVAE

SMALL = dict(hvae_channels=16, hvae_latent_channels=2, hvae_groups=1)
EPS32 = torch.finfo(torch.float32).eps


def jittered(model: HVAE, scale: float = 0.1) -> HVAE:
    """The weights moved off their start, where each posterior equals its prior."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model.eval()


def test_the_top_group_s_kl_and_log_ratio_match_torch_distributions():
    """Group 1 reads the learned start and the deepest bottom-up features: rebuild its q and p
    from the model's own layers and let torch.distributions give the KL and the log-densities
    the model computes in closed form."""
    model = jittered(HVAE(channels=16, latent_channels=3, groups=2))
    x = torch.rand(4, 1, 28, 28)
    eps = torch.randn(4, model.noise_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, kept = model.posterior_pass(x, None, eps)
        group, h = model.down_groups[0], model._start(4, None)
        mu_p, log_p = group.prior_of(h)
        shift, log_ratio = group.correction_of(h, model.bottom_up(x, None)[0])
    prior = Normal(mu_p.double(), log_p.double().exp())
    posterior = Normal((mu_p + shift).double(), (log_p + log_ratio).double().exp())
    kl = kl_divergence(posterior, prior).flatten(1).sum(1)
    assert torch.allclose(kept[0]["kl"].double(), kl, rtol=0, atol=64 * EPS32 * kl.abs().max())
    assert kl.min() > 0  # q differs from p once the weights moved
    z = posterior.mean + posterior.stddev * eps[:, :model.group_sizes[0]].reshape(mu_p.shape)
    ratio = (prior.log_prob(z) - posterior.log_prob(z)).flatten(1).sum(1)
    assert torch.allclose(kept[0]["log_ratio"].double(), ratio, rtol=0,
                          atol=64 * EPS32 * ratio.abs().max())


def test_a_new_hierarchy_starts_with_every_posterior_equal_to_its_prior():
    model = HVAE(channels=16, latent_channels=2, groups=2)
    terms = model.terms(torch.rand(3, 1, 28, 28), model.draw_noise(3, torch.Generator()))
    for g in range(1, 5):
        assert torch.equal(terms[f"kl_{g}"], torch.zeros(3)), g


@pytest.mark.parametrize("side, sides", [(28, [7, 7, 14, 14]), (32, [4, 4, 8, 8, 16, 16]),
                                         (64, [4, 4, 8, 8, 16, 16, 32, 32])])
def test_groups_sit_at_every_resolution_from_half_the_image_down(side, sides):
    model = HVAE((3, side, side), channels=8, latent_channels=2, groups=2)
    assert [shape[1] for shape in model.group_shapes] == sides
    assert model.group_sizes == tuple(2 * s * s for s in sides)
    assert model.code_dim == 2 * sides[0] ** 2 and model.noise_size == sum(model.group_sizes)
    params = model.from_prior(model.prior_noise(2, torch.Generator()))
    assert params.shape == (2, 3, side, side)


def test_temperature_zero_is_the_prior_means_path_and_a_code_holds_the_top_group():
    model = jittered(HVAE(channels=16, latent_channels=2, groups=2))
    generator = torch.Generator().manual_seed(0)
    a, b = model.prior_noise(2, generator), model.prior_noise(2, generator)
    with torch.no_grad():
        assert torch.equal(model.from_prior(a, 0.0), model.from_prior(b, 0.0))
        assert not torch.equal(model.from_prior(a, 1.0), model.from_prior(b, 1.0))
        top_mean = model.down_groups[0].prior_of(model._start(2, None))[0].flatten(1)
        assert torch.allclose(model.decode(top_mean), model.from_prior(a, 0.0), atol=1e-6)
        code = model.code(torch.rand(2, 1, 28, 28))
        assert code.shape == (2, model.code_dim)
        assert not torch.allclose(model.decode(code), model.from_prior(a, 0.0))


def test_the_label_reaches_both_paths():
    model = jittered(HVAE(channels=16, latent_channels=2, groups=1, classes=3))
    noise = model.prior_noise(2, torch.Generator())
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.equal(model.from_prior(noise, 1.0, torch.tensor([0, 0])),
                               model.from_prior(noise, 1.0, torch.tensor([1, 1])))
        assert not torch.equal(model.code(x, torch.tensor([0, 0])),
                               model.code(x, torch.tensor([2, 2])))


def test_updates_with_an_outlying_gradient_are_skipped_and_counted(tiny_config, tmp_path,
                                                                   monkeypatch):
    """Steps 3 and 6 of 8 (batches of 64) get a gradient norm far above --grad-skip: Adam
    applies the other 6 (its step count), and metrics.csv counts the 2 skipped."""
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def outlier_at_steps_3_and_6(*args, **kwargs):
        norm = real(*args, **kwargs)
        calls.append(1)
        return norm + 1e12 if len(calls) in (3, 6) else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", outlier_at_steps_3_and_6)
    config = tiny_config.replace(model="hvae", **SMALL, grad_skip=1e9)
    run_dir = train(config, tmp_path / "run", progress=False)
    adam = load_checkpoint(run_dir / "last.pt")["optimizer"]["state"]
    assert {state["step"].item() for state in adam.values()} == {6}
    run = load_run(run_dir, "last")
    assert run.metrics[-1]["skipped_updates"] == 2 and run.metrics[-1]["step"] == 8


def test_an_epoch_whose_every_update_is_skipped_stops_the_run(tiny_config, tmp_path):
    """A threshold below every gradient norm would leave the model as it started."""
    config = tiny_config.replace(model="hvae", **SMALL, grad_skip=1e-12)
    with pytest.raises(VaelabError, match=r"^every update of epoch 1 was skipped: their "
                       r"gradient norms were above --grad-skip 1e-12; nothing was saved\. "
                       r"Raise --grad-skip, or leave it unset$"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_vae_records_no_skipped_updates_unless_asked(tiny_config, tmp_path):
    run = load_run(train(tiny_config.replace(limit_train=128), tmp_path / "run",
                         progress=False))
    assert "skipped_updates" not in run.metrics[-1]


@pytest.mark.parametrize("changes, words", [
    (dict(model="hvae", latent_dim=5), "latent_dim = 5 is not allowed (--latent-dim): an "
                                       "option of --model vae or beta-tcvae or factorvae or "
                                       "capacity, and this run is --model hvae"),
    (dict(model="hvae", iw_train=3), "iw_train = 3 is not allowed (--iw-train): an option of "
                                     "--model vae"),
    (dict(hvae_groups=3), "hvae_groups = 3 is not allowed (--hvae-groups): an option of "
                          "--model hvae, and this run is --model vae"),
    (dict(model="hvae", image_size=30), "images of 30x30 cannot be taken by --model hvae"),
    (dict(model="hvae", hvae_channels=0), "hvae_channels = 0 is not allowed"),
])
def test_options_another_family_takes_are_refused_by_name(changes, words):
    with pytest.raises(ConfigError) as caught:
        Config(**changes)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_bad_model_requests_get_one_line_and_write_nothing(capsys, tiny_config, tmp_path):
    code, _, err = cli(capsys, "train", "--model", "gan", "--out", tmp_path / "gan")
    assert code == 2 and "invalid choice: 'gan' (choose from 'vae', 'hvae', 'beta-tcvae'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "gan").exists()
    run = train(tiny_config.replace(model="hvae", **SMALL, limit_train=128, limit_val=64),
                tmp_path / "run", progress=False)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    code, _, err = cli(capsys, "evaluate", run, "--exact", "--limit", 2, "--iw-samples", 2)
    assert code == 1 and "--exact integrates over z on a grid" in err and "Drop --exact" in err
    code, _, err = cli(capsys, "train", "--resume", run, "--model", "vae")
    assert code == 1 and "cannot change model" in err
    after = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert after == before  # nothing written, nothing trained


def test_every_likelihood_and_colour(tiny_config):
    for likelihood in ("bernoulli", "logistic", "logistic-mixture"):
        model = HVAE((3, 16, 16), likelihood, components=2, channels=8, latent_channels=2)
        x = torch.randint(0, 256, (2, 3, 16, 16)).float() / 255
        terms = model.terms(x, model.draw_noise(2, torch.Generator()))
        assert torch.isfinite(terms["loss"]).all(), likelihood
