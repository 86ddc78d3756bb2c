"""A VAE whose log p(x) is known in closed form, as an independent reference for the estimators.

Its encoder's last layers are zero, so q(z|x) = N(0, I) = p(z) for every image; every weight of
its decoder is zero and the last bias is LOGIT, so p(x|z) is Bernoulli(sigmoid(LOGIT)) on every
pixel whatever z is. Then log w = log p(x|z) + log p(z) - log q(z|x) = log p(x|z) for every
sample, and

    log p(x) = L_K = ELBO = log p(x|z) = S log sigmoid(a) + (P - S) log sigmoid(-a),

with S the sum of the image's pixel values in [0, 1], P its number of pixels and a = LOGIT:
one number per image, computed here in float64 from the pixels alone.
"""

from __future__ import annotations

import math

import torch

from vaelab import VAE

LOGIT = -1.25  # any value: sigmoid(-1.25) = 0.22, about MNIST's mean pixel
# The quadrature sums p(z) on a grid over a box holding every point within 30 nats of the
# peak: the Gaussian's mass outside it is below 2e-14 per axis, and a Riemann sum of a
# Gaussian on a grid this fine errs by far less (exponentially small in 1/spacing^2); the
# float64 sum of at most 641^2 terms adds 641^2 eps64 relative. Together below 1e-10 nats.
QUADRATURE_ERROR = 2 * 2e-14 + 641 ** 2 * torch.finfo(torch.float64).eps
# Grids a tenth of the real ones' size: still exact for this integrand (a Riemann sum of a
# Gaussian at spacing h errs by about exp(-2 pi^2 / h^2), below 1e-14 for h < 0.8), and fast
# enough to run for every mutant. test_quadrature.py integrates trained models on the real ones.
SMALL_GRIDS = {"COARSE_POINTS": {1: 201, 2: 41}, "FINE_POINTS": {1: (51, 801), 2: (21, 161)}}


def use_small_grids(monkeypatch) -> None:
    import vaelab.quadrature

    for name, value in SMALL_GRIDS.items():
        monkeypatch.setattr(vaelab.quadrature, name, value)


def closed_form_model(latent_dim: int, logit: float = LOGIT, classes: int = 0) -> VAE:
    """With classes: a conditional VAE, whose label reaches only zero weights (it must still
    be given: a conditional network refuses to run without one)."""
    model = VAE(latent_dim, classes=classes)
    with torch.no_grad():
        for layer in (model.encoder.mu, model.encoder.logvar):
            layer.weight.zero_()
            layer.bias.zero_()
        for parameter in model.decoder.parameters():
            parameter.zero_()
        model.decoder.net[-1].bias.fill_(logit)
    return model.eval()


def log_sigmoid(a: float) -> float:
    return -math.log1p(math.exp(-a)) if a >= 0 else a - math.log1p(math.exp(a))


def pixel_sums(images: torch.Tensor) -> list[float]:
    """S per uint8 image, exactly: an integer sum of 8-bit values, divided by 255 once."""
    return [int(image.to(torch.int64).sum()) / 255 for image in images]


def closed_form_log_px(images: torch.Tensor, logit: float = LOGIT) -> list[float]:
    """log p(x) of each uint8 image (N, C, H, W) under closed_form_model, in float64."""
    pixels = images[0].numel()
    return [s * log_sigmoid(logit) + (pixels - s) * log_sigmoid(-logit)
            for s in pixel_sums(images)]


def float32_tolerance(images: torch.Tensor, logit: float = LOGIT) -> float:
    """How far vaelab's float32 -log p(x|z) may lie from the float64 closed form: P pixel
    terms summed in float32 by torch's cascade (pairwise) reduction err by at most
    ceil(log2 P) eps32 times the sum of their magnitudes; each term's own evaluation (exp,
    log1p, a product) adds a few ulps, counted as 4 more eps32 per term."""
    pixels = images[0].numel()
    largest = max(-log_sigmoid(logit), -log_sigmoid(-logit))
    return (math.ceil(math.log2(pixels)) + 4) * torch.finfo(torch.float32).eps * \
        pixels * largest
