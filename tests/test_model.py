import pytest
import torch

from vaelab import VAE
from vaelab.model import count_parameters


@pytest.mark.parametrize("batch", [1, 64])
def test_shapes(batch):
    model = VAE(latent_dim=20)
    x = torch.rand(batch, 1, 28, 28)
    logits, z, mu, logvar = model(x)
    assert logits.shape == (batch, 1, 28, 28)
    assert z.shape == mu.shape == logvar.shape == (batch, 20)
    assert model.decode(torch.zeros(batch, 20)).shape == (batch, 1, 28, 28)


def test_parameter_count_matches_the_readme():
    assert count_parameters(VAE(20)) == 258_025


def test_every_parameter_gets_a_gradient():
    model = VAE(latent_dim=3)
    logits, _, mu, logvar = model(torch.rand(4, 1, 28, 28))
    (logits.sum() + mu.sum() + logvar.sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_reparameterize_draws_from_q_and_passes_gradients():
    mu = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, 2 * torch.log(torch.tensor(3.0)).item()]], requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    z = VAE.reparameterize(mu.expand(100_000, 2), logvar.expand(100_000, 2), generator)
    assert torch.allclose(z.mean(0), mu[0], atol=0.03)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 3.0]), atol=0.03)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.full((1, 2), 100_000.0))
    assert logvar.grad.abs().sum() > 0


def test_same_generator_seed_same_sample():
    model = VAE(latent_dim=4)
    x = torch.rand(2, 1, 28, 28)
    first = model(x, torch.Generator().manual_seed(5))[0]
    again = model(x, torch.Generator().manual_seed(5))[0]
    other = model(x, torch.Generator().manual_seed(6))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
