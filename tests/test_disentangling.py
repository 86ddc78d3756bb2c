"""The disentangling families' own promises (models/disentangling.py); test_models.py runs the
interface's contract over them (shapes, gradients, resume, figures, two processes = one).

beta-TCVAE's decomposition is checked against a second computation (explicit loops over the
pairs of a batch, in float64) and against its closed form when every posterior is the prior;
FactorVAE's two players against each other's gradients; the capacity's rise step by step.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import cli

from vaelab import Config
from vaelab.errors import ConfigError
from vaelab.models import build_model
from vaelab.models.disentangling import kl_decomposition

EPS32 = torch.finfo(torch.float32).eps


def small(family: str, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Config(model=family, latent_dim=3, device="cpu", **changes))


def looped_decomposition(z, mu, logvar, n):
    """MWS by its definition, one pair (i, j) and one unit at a time, in float64."""
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    batch, units = z.shape
    normal = [[[torch.distributions.Normal(mu[j, d], (0.5 * logvar[j, d]).exp()).log_prob(
        z[i, d]) for d in range(units)] for j in range(batch)] for i in range(batch)]
    rows = []
    for i in range(batch):
        joint = torch.stack([sum(normal[i][j]) for j in range(batch)])
        log_qz = torch.logsumexp(joint, 0) - math.log(n * batch)
        log_product = sum(torch.logsumexp(torch.stack([normal[i][j][d] for j in range(batch)]),
                                          0) - math.log(n * batch) for d in range(units))
        log_qz_x = sum(normal[i][i])
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z[i]).sum()
        rows.append((log_qz_x - log_qz, log_qz - log_product, log_product - log_pz))
    return [torch.stack(part) for part in zip(*rows)]


def test_the_decomposition_matches_its_definition_pair_by_pair():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=generator)
    logvar = torch.randn(5, 3, generator=generator) * 0.5
    z = mu + (0.5 * logvar).exp() * torch.randn(5, 3, generator=generator)
    found = kl_decomposition(z, mu, logvar, dataset_size=1000)
    for part, expected in zip(found, looped_decomposition(z, mu, logvar, 1000)):
        # float32 sums of about 3 x 5 terms of order log(5000) ~ 10
        assert torch.allclose(part.double(), expected, rtol=0, atol=64 * EPS32 * 10)


def test_when_every_posterior_is_the_prior_the_parts_are_their_closed_forms():
    """q(z|x_j) the same for every j: log q(z_i) = log q(z_i|x_i) - log N, so MI = log N,
    TC = (D - 1) log N and DWKL = -D log N (MWS's known bias: the true MI and TC are 0)."""
    n, units = 500, 3
    z = torch.randn(7, units, generator=torch.Generator().manual_seed(1))
    mi, tc, dwkl = kl_decomposition(z, torch.zeros(7, units), torch.zeros(7, units), n)
    scale = 8 * EPS32 * units * math.log(n * 7)
    assert torch.allclose(mi, torch.full_like(mi, math.log(n)), rtol=0, atol=scale)
    assert torch.allclose(tc, torch.full_like(tc, (units - 1) * math.log(n)), rtol=0, atol=scale)
    assert torch.allclose(dwkl, torch.full_like(dwkl, -units * math.log(n)), rtol=0, atol=scale)


def test_beta_tcvae_weighs_each_part(data_dir):
    from test_models import real_images

    x = real_images(data_dir, 6)
    model = small("beta-tcvae", tcvae_alpha=0.5, tcvae_beta=3.0, tcvae_gamma=2.0)
    terms = model.terms(x, model.draw_noise(6, torch.Generator().manual_seed(0)), kl_weight=0.5)
    penalty = 0.5 * terms["mi"] + 3.0 * terms["tc"] + 2.0 * terms["dwkl"]
    scale = terms["objective"].abs().max().item()
    assert torch.allclose(terms["objective"], terms["recon"] + 0.5 * penalty, rtol=0,
                          atol=16 * EPS32 * scale)
    assert model.dataset_size == 60_000  # unrecorded: MNIST's; a run records its own


def test_factorvae_players_each_move_only_their_own_weights(data_dir):
    from test_models import real_images

    model = small("factorvae", factorvae_hidden=16)
    x = real_images(data_dir, 8)
    terms = model.terms(x, model.draw_noise(8, torch.Generator().manual_seed(0)))
    discriminator = list(model.discriminator.parameters())
    encoder = list(model.encoder.parameters())
    tc_grads = torch.autograd.grad(terms["tc"].sum(), discriminator + encoder,
                                   retain_graph=True, allow_unused=True)
    assert all(g is None for g in tc_grads[:len(discriminator)])  # TC: not the judge's
    assert any(g is not None and g.abs().sum() > 0 for g in tc_grads[len(discriminator):])
    judge_grads = torch.autograd.grad(terms["discriminator"].sum(), discriminator + encoder,
                                      retain_graph=True, allow_unused=True)
    assert all(g is None for g in judge_grads[len(discriminator):])  # not the encoder's
    assert all(g.abs().sum() > 0 for g in judge_grads[:len(discriminator)])
    expected = terms["recon"] + terms["kl"] + 35.0 * terms["tc"] + terms["discriminator"]
    assert torch.allclose(terms["objective"], expected, rtol=0,
                          atol=16 * EPS32 * expected.abs().max().item())


def test_factorvae_permutes_each_unit_across_the_batch_with_its_own_keys():
    model = small("factorvae", factorvae_hidden=4)
    seen = {}

    def keep_input(module, inputs, output) -> None:
        seen[len([key for key in seen if isinstance(key, int)])] = inputs[0].detach()

    model.discriminator.register_forward_hook(keep_input)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for seed in (0, 1):
        for key in (0, 1, 2):
            seen.pop(key, None)
        model.terms(x, model.draw_noise(16, torch.Generator().manual_seed(seed)))
        codes, permuted = seen[1], seen[2]  # [0] is the TC term's pass
        assert torch.equal(codes.sort(0).values, permuted.sort(0).values)  # each column
        assert not torch.equal(codes, permuted)
        seen[f"permuted {seed}"] = permuted
    assert not torch.equal(seen["permuted 0"], seen["permuted 1"])


def test_the_capacity_rises_with_training_steps_only():
    model = small("capacity", capacity_max=10.0, capacity_steps=4)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    noise = model.draw_noise(4, torch.Generator().manual_seed(0))
    targets = []
    for _ in range(6):
        targets.append(model.terms(x, noise)["capacity"][0].item())
    assert targets == [0.0, 2.5, 5.0, 7.5, 10.0, 10.0]
    model.eval()
    with torch.no_grad():
        assert model.terms(x, noise)["capacity"][0].item() == 10.0
        assert int(model.steps) == 6  # evaluation does not count as training
    terms = model.train().terms(x, noise)
    expected = terms["recon"] + 1000.0 * (terms["kl"] - 10.0).abs()
    assert torch.allclose(terms["objective"], expected, rtol=0,
                          atol=16 * EPS32 * expected.abs().max().item())


@pytest.mark.parametrize("changes, named", [
    (dict(model="vae", factorvae_gamma=10.0), "factorvae_gamma"),
    (dict(model="hvae", tcvae_beta=2.0), "tcvae_beta"),
    (dict(model="hvae", latent_dim=4), "latent_dim"),
    (dict(model="beta-tcvae", iw_train=5), "iw_train"),
    (dict(model="factorvae", factorvae_hidden=0), "factorvae_hidden"),
    (dict(model="beta-tcvae", tcvae_beta=-1.0), "tcvae_beta"),
    (dict(model="capacity", capacity_steps=0), "capacity_steps"),
    (dict(model="capacity", capacity_gamma=math.inf), "capacity_gamma"),
])
def test_options_a_family_does_not_take_or_out_of_range_are_refused(changes, named):
    with pytest.raises(ConfigError, match=named):
        Config(**changes)


def test_the_cli_refuses_them_in_one_line(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--model", "factorvae", "--factorvae-hidden", "0",
                       "--out", tmp_path / "run")
    assert code == 1 and "factorvae_hidden" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_literature_network_has_disentanglement_lib_s_size():
    """Encoder: convs 1->32->32->64->64 (4x4, bias) = 544 + 16416 + 32832 + 65600, dense
    1024->256 = 262400, mu and log sigma^2 2 x 2570; decoder: dense 10->256 = 2816,
    256->1024 = 263168, deconvs 64->64->32->32->1 = 65600 + 32800 + 16416 + 513."""
    model = build_model(Config(arch="locatello", latent_dim=10, channels=1, height=64,
                               width=64, data="x.npz"))
    assert sum(p.numel() for p in model.parameters()) == 382_932 + 381_313
    x = torch.rand(2, 1, 64, 64)
    assert model.decode(model.code(x)).shape == (2, 1, 64, 64)
