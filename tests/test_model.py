import math

import pytest
import torch

from vaelab import VAE
from vaelab.models import count_parameters


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
    n, sd = 100_000, torch.tensor([1.0, 3.0])
    z = VAE.reparameterize(mu.expand(n, 2), logvar.expand(n, 2), generator)
    # within 5 standard errors: sd / sqrt(n) for the mean, sd / sqrt(2 n) for a normal's sd
    assert ((z.mean(0) - mu[0]).abs() <= 5 * sd / math.sqrt(n)).all()
    assert ((z.std(0) - sd).abs() <= 5 * sd / math.sqrt(2 * n)).all()
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


# ---- models built from the data's shape ------------------------------------------------------

from vaelab import Config  # noqa: E402
from vaelab.config import check_shape, stages  # noqa: E402
from vaelab.errors import ConfigError  # noqa: E402
from vaelab.models import build_model  # noqa: E402

SEED_LAYERS = ["encoder.features.0", "encoder.features.2", "encoder.mu", "encoder.logvar",
               "decoder.net.0", "decoder.net.3", "decoder.net.5"]


def test_the_seed_shape_builds_the_seeds_network_with_its_layer_names():
    """Old checkpoints load only if the names and sizes are the reference notebook's, exactly."""
    model = build_model(Config())
    names = sorted({key.rsplit(".", 1)[0] for key in model.state_dict()})
    assert names == sorted(SEED_LAYERS)
    assert [tuple(p.shape) for p in model.encoder.features.parameters()] == \
        [(32, 1, 4, 4), (32,), (64, 32, 4, 4), (64,)]
    assert count_parameters(model) == 258_025


@pytest.mark.parametrize("side, count", [(16, 2), (20, 2), (28, 2), (32, 3), (64, 4),
                                         (12, 1), (30, 1), (8, 1), (7, 0)])
def test_stages_halve_while_the_side_stays_even_and_at_least_4(side, count):
    assert stages(side) == count


@pytest.mark.parametrize("arch", ["conv", "resnet"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 64, 48), (3, 16, 16), (1, 28, 28)])
def test_every_shape_round_trips_and_every_parameter_learns(arch, shape):
    model = VAE(6, shape, arch)
    x = torch.rand(3, *shape)
    params, z, mu, logvar = model(x, torch.Generator().manual_seed(0))
    assert params.shape == (3, *shape) and z.shape == mu.shape == (3, 6)
    assert model.decode_mean(z).shape == (3, *shape)
    (params.sum() + mu.sum() + logvar.sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_a_resnet_codes_each_image_independently_of_its_batch():
    """GroupNorm, not BatchNorm: an image's code is the same alone or among others."""
    model = VAE(6, (3, 32, 32), "resnet").eval()
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    alone, together = model.encode(x[:1])[0], model.encode(x)[0][:1]
    scale = together.abs().max().item()
    assert (alone - together).abs().max().item() <= 64 * torch.finfo(torch.float32).eps * scale


@pytest.mark.parametrize("shape, words", [
    ((1, 30, 30), ["30x30 cannot be taken by --arch conv", "multiple of 4", "--image-size"]),
    ((1, 12, 32), ["12x32"]),
    ((4, 32, 32), ["4 channels", "--channels"]),
])
def test_a_shape_an_architecture_cannot_take_is_one_line(shape, words):
    with pytest.raises(ConfigError) as error:
        check_shape(shape, "--arch conv")
    assert all(word in str(error.value) for word in words) and "\n" not in str(error.value)


def test_the_config_knows_its_image_shape():
    assert Config().image_shape == (1, 28, 28)
    assert Config(image_size=32, channels=3).image_shape == (3, 32, 32)
    assert Config(data="x", channels=3, height=16, width=24).image_shape == (3, 16, 24)
    with pytest.raises(RuntimeError, match="known once they are loaded"):
        Config(data="x").image_shape
    with pytest.raises(ConfigError, match="30x30 cannot be taken.*choose another --image-size"):
        Config(image_size=30)
