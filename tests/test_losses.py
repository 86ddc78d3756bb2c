import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vaelab.losses import bernoulli_nll, elbo_terms, kl_standard_normal

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant


def test_kl_matches_a_monte_carlo_estimate():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    logvar = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    q = Normal(mu, (0.5 * logvar).exp())
    z = q.sample((200_000,))
    log_ratio = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)  # (S, B)
    estimate, stderr = log_ratio.mean(0), log_ratio.std(0) / 200_000 ** 0.5
    analytic = kl_standard_normal(mu, logvar)
    assert analytic.shape == (4,)
    assert ((estimate - analytic).abs() < 4 * stderr).all()
    assert torch.allclose(analytic, kl_divergence(q, Normal(0.0, 1.0)).sum(-1))


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 7)
    assert torch.equal(kl_standard_normal(zeros, zeros), torch.zeros(3))
    assert (kl_standard_normal(torch.full((3, 7), 0.1), zeros) > 0).all()


def test_logits_form_equals_sigmoid_then_bce():
    generator = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(8, 1, 28, 28, generator=generator, dtype=torch.float64)
    x = torch.rand(8, 1, 28, 28, generator=generator, dtype=torch.float64)  # grayscale targets
    expected = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
    assert torch.allclose(bernoulli_nll(logits, x), expected, rtol=1e-10)


def test_logits_form_stays_exact_where_sigmoid_saturates():
    logits = torch.full((1, 1, 28, 28), 120.0)
    x = torch.zeros(1, 1, 28, 28)
    # -log(1 - sigmoid(120)) = 120 per pixel; sigmoid rounds to 1 and BCE clamps at 100.
    assert torch.allclose(bernoulli_nll(logits, x), torch.tensor([120.0 * 784]))
    clamped = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum()
    assert clamped.item() == 100.0 * 784


def test_elbo_terms_add_up_and_beta_weights_only_the_objective():
    generator = torch.Generator().manual_seed(2)
    logits, x = torch.randn(5, 1, 28, 28, generator=generator), torch.rand(5, 1, 28, 28)
    mu, logvar = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    terms = elbo_terms(bernoulli_nll(logits, x), mu, logvar, beta=0.25)
    assert torch.allclose(terms.loss, terms.recon + terms.kl)
    assert torch.allclose(terms.objective, terms.recon + 0.25 * terms.kl)
    assert all(t.shape == (5,) for t in terms)


def test_totals_sum_per_image_terms_and_give_both_averaging_conventions():
    """Sums of 5 + 3 images in float64; batch_loss is the total over ceil(8 / 5) = 2 batches.
    The values are small integers and halves, exact in float32 and float64, hence ==."""
    from vaelab.losses import ELBOTerms, Totals

    totals = Totals(torch.device("cpu"))
    assert totals.sums.dtype == torch.float64 and totals.sums.tolist() == [0.0, 0.0, 0.0]
    assert totals.images == 0
    first = ELBOTerms(torch.tensor([3.0, 4, 5, 6, 7]), torch.tensor([1.0, 1, 2, 2, 3]),
                      torch.tensor([2.0, 3, 3, 4, 4]), torch.zeros(5))
    second = ELBOTerms(torch.tensor([1.5, 2.5, 5.0]), torch.tensor([0.5, 0.5, 1.0]),
                       torch.tensor([1.0, 2.0, 4.0]), torch.zeros(3))
    totals.add(first._asdict())  # a model's terms come by name
    totals.add(second._asdict())
    assert totals.images == 8 and totals.sums.tolist() == [34.0, 11.0, 23.0]
    assert totals.means("val", batch_size=5) == {
        "val_loss": 34 / 8, "val_recon": 11 / 8, "val_kl": 23 / 8, "val_batch_loss": 34 / 2}
    assert totals.means("train", batch_size=1)["train_batch_loss"] == 34 / 8


def test_totals_of_nothing_are_zero_not_a_division_error():
    from vaelab.losses import Totals

    assert Totals(torch.device("cpu")).means("val", 64) == {
        "val_loss": 0.0, "val_recon": 0.0, "val_kl": 0.0, "val_batch_loss": 0.0}


def test_totals_of_one_image_average_over_one_image_and_one_batch():
    from vaelab.losses import ELBOTerms, Totals

    totals = Totals(torch.device("cpu"))
    one = torch.tensor([6.0])
    totals.add(ELBOTerms(one, one / 2, one / 3, one)._asdict())
    assert totals.means("t", 64) == {"t_loss": 6.0, "t_recon": 3.0, "t_kl": 2.0,
                                     "t_batch_loss": 6.0}



def test_totals_are_kept_on_the_device_asked_for_not_the_default_one():
    """On a GPU run the sums live on the GPU; without one, a default device of `meta` stands
    in for "not where asked" (see test_discretized_units' device test)."""
    from vaelab.losses import Totals

    with torch.device("meta"):
        totals = Totals(torch.device("cpu"), ("kl_1",))
    assert totals.sums.device.type == "cpu" and totals.sums.tolist() == [0.0, 0.0]
    from vaelab.losses import gaussian_log_density

    z = torch.zeros(2, 3)
    with torch.device("meta"):
        prior = gaussian_log_density(z)  # its logvar of 0 is made on z's device
    assert prior.device.type == "cpu"
    assert prior.tolist() == pytest.approx([-1.5 * math.log(2 * math.pi)] * 2,
                                           rel=4 * torch.finfo(torch.float32).eps)

def test_default_weights_are_one():
    """beta / kl_weight default to 1: the true ELBO and the unweighted IWAE bound."""
    from vaelab.likelihoods import Bernoulli, nll_samples
    from vaelab.losses import iwae_terms, log_importance_weights

    generator = torch.Generator().manual_seed(3)
    logits, x = torch.randn(2, 1, 28, 28, generator=generator), torch.rand(2, 1, 28, 28)
    mu, logvar = torch.randn(2, 3, generator=generator), torch.randn(2, 3, generator=generator)
    z = torch.randn(4, 2, 3, generator=generator)
    terms = elbo_terms(bernoulli_nll(logits, x), mu, logvar)
    assert torch.equal(terms.objective, terms.recon + terms.kl)
    log_px_z = torch.randn(4, 2, generator=generator)
    assert torch.equal(log_importance_weights(log_px_z, z, mu, logvar),
                       log_importance_weights(log_px_z, z, mu, logvar, 1.0))
    many = torch.randn(4, 2, 1, 28, 28, generator=generator)
    assert torch.equal(iwae_terms(nll_samples(Bernoulli(), many, x), z, mu, logvar).objective,
                       iwae_terms(nll_samples(Bernoulli(), many, x), z, mu, logvar, 1.0).objective)


def test_gaussian_log_density_is_the_normal_log_pdf():
    """Against torch.distributions.Normal, for the prior (scalar mu, logvar) and a diagonal
    Gaussian; float64 sums of D = 5 terms, so agreement to 100 eps of the magnitude."""
    from vaelab.losses import gaussian_log_density

    generator = torch.Generator().manual_seed(4)
    z = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    mu = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    logvar = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    tolerance = 100 * torch.finfo(torch.float64).eps
    prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(gaussian_log_density(z), prior, rtol=tolerance, atol=0)
    posterior = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(gaussian_log_density(z, mu, logvar), posterior, rtol=tolerance,
                          atol=tolerance)
    assert gaussian_log_density(z, 0.0, 0.5).dtype == torch.float64
