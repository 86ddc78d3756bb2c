import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from vaelab.losses import bernoulli_nll, elbo_terms, kl_standard_normal


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
    x = torch.rand(8, 1, 28, 28, generator=generator, dtype=torch.float64)  # grayscale: the seed's
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
    terms = elbo_terms(logits, x, mu, logvar, beta=0.25)
    assert torch.allclose(terms.loss, terms.recon + terms.kl)
    assert torch.allclose(terms.objective, terms.recon + 0.25 * terms.kl)
    assert all(t.shape == (5,) for t in terms)
