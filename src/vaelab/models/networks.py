"""The networks of the single-level VAE: a convolutional encoder (B, C, H, W) -> mu, logvar
(B, D) and decoder z (B, D) -> the likelihood's parameters, and their residual versions.

For 1x28x28 images the default ("conv") is the reference notebook's network exactly
(258,025 parameters with the VAE at latent size 20):

    Encoder  1x28x28 -Conv(4,s2)+ReLU-> 32x14x14 -Conv(4,s2)+ReLU-> 64x7x7 -Flatten-> 3136
             -> Linear(3136, D) = mu,  Linear(3136, D) = log sigma^2
    Decoder  D -Linear+ReLU-> 3136 = 64x7x7 -ConvT(4,s2)+ReLU-> 32x14x14 -ConvT(4,s2)-> 1x28x28

Other sizes get the same pattern with one stride-2 stage per halving (widths 32, 64, 128, 256)
while each side stays even and at least 4 (28 -> 14 -> 7: two stages; 64 -> ... -> 4: four).
"resnet" is a wider residual network on the same stages, for colour images. "locatello" is the
network of the disentanglement literature (disentanglement_lib's conv_encoder and
deconv_decoder, Locatello et al. 2019, after Burgess et al. 2018), so that its scores compare:

    Encoder  1x64x64 -4 x [Conv(4,s2)+ReLU], widths 32, 32, 64, 64-> 64x4x4 -Linear+ReLU-> 256
             -> Linear(256, D) = mu,  Linear(256, D) = log sigma^2
    Decoder  D -Linear+ReLU-> 256 -Linear+ReLU-> 64x4x4 -ConvT(4,s2) x 4, widths 64, 32, 32, C

A conditional VAE (Sohn et al. 2015) takes the label y as a one-hot vector in both halves
(q(z|x, y), p(x|z, y)); the prior stays N(0, I). The encoder sees y twice: as one constant input
plane per class beside the image, and appended to the flattened features before mu and
log sigma^2. The decoder's first layer reads [z, y], and y then scales and shifts the channels
of every hidden stage (FiLM, Perez et al. 2018), starting as the identity. The planes let the
convolutions describe the image relative to its class, which leaves z with the style; FiLM lets
the label scale the decoder's features, not only add to them. Both raised the share of samples
that follow their label (bench/conditional.py measures it; the changelog tells how the design
was chosen). With no classes the layers are exactly the unconditional ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import check_shape

REFERENCE_SHAPE = (1, 28, 28)
ARCHS = ("conv", "resnet", "locatello")


def _widths(count: int, first: int, most: int = 256) -> list[int]:
    return [min(first * 2 ** i, most) for i in range(count)]


class Encoder(nn.Module):
    """The reference's convolutional encoder, generalized: (B, C, H, W) -> mu, logvar (B, D)."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int] = REFERENCE_SHAPE,
                 classes: int = 0):
        super().__init__()
        count = check_shape(shape, "--arch conv")
        layers: list[nn.Module] = []
        channels = shape[0] + classes  # the image, then one plane per class
        for width in _widths(count, 32):
            layers += [nn.Conv2d(channels, width, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        hidden = channels * (shape[1] >> count) * (shape[2] >> count) + classes
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h = labelled_features(self.features, x, y)
        return self.mu(h), self.logvar(h)


def labelled_features(features: nn.Module, x: torch.Tensor, y: torch.Tensor | None
                      ) -> torch.Tensor:
    """The flattened features of x; with a label y, of x beside one constant plane per class,
    with y appended."""
    if y is None:
        return features(x)
    planes = y.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
    h = features(torch.cat([x, planes], 1))
    return torch.cat([h, y.to(h.dtype)], 1)


class Decoder(nn.Module):
    """The reference notebook's decoder, generalized: z (B, D) -> (B, outputs, H, W)."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int] = REFERENCE_SHAPE,
                 outputs: int = 1, classes: int = 0):
        super().__init__()
        count = check_shape(shape, "--arch conv")
        widths = _widths(count, 32)
        hidden = (widths[-1], shape[1] >> count, shape[2] >> count)
        # FiLM modulates each hidden stage's pre-activation: {index of its layer: channels}
        layers: list[nn.Module] = [nn.Linear(latent_dim + classes,
                                             hidden[0] * hidden[1] * hidden[2]),
                                   nn.Unflatten(1, hidden)]
        modulated = {1: hidden[0]}
        for wide, narrow in zip(widths[:0:-1], widths[-2::-1]):
            layers += [nn.ReLU(), nn.ConvTranspose2d(wide, narrow, 4, stride=2, padding=1)]
            modulated[len(layers) - 1] = narrow
        layers += [nn.ReLU(), nn.ConvTranspose2d(widths[0], outputs, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)
        self.film = class_films(modulated, classes)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            return self.net(z)
        h = torch.cat([z, y.to(z.dtype)], 1)
        for index, layer in enumerate(self.net):
            h = layer(h)
            if str(index) in self.film:
                h = self.film[str(index)](h, y)
        return h


class ClassFiLM(nn.Module):
    """h * (1 + gain(y)) + shift(y), per channel: the label's feature-wise modulation (FiLM).
    Both start at zero, so a new conditional decoder starts as if the stage were unmodulated."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        # (classes, channels), a row per class. Zeros, not a random draw: building the model
        # takes the same random numbers as without FiLM.
        self.gain = nn.Parameter(torch.zeros(classes, channels))
        self.shift = nn.Parameter(torch.zeros(classes, channels))

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.to(h.dtype)
        gain, shift = y @ self.gain.to(h.dtype), y @ self.shift.to(h.dtype)
        return h * (1 + gain[:, :, None, None]) + shift[:, :, None, None]


def class_films(modulated: dict[int, int], classes: int) -> nn.ModuleDict:
    """A ClassFiLM after each decoder layer named in `modulated` ({index: channels}), keyed by
    that index; none without classes, so an unconditional decoder is exactly the reference's."""
    if not classes:
        return nn.ModuleDict()
    return nn.ModuleDict({str(index): ClassFiLM(channels, classes)
                          for index, channels in modulated.items()})


class ResidualBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))): GroupNorm, as it does not depend on the batch
    (an image's likelihood must not change with the images evaluated beside it)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetEncoder(nn.Module):
    """Stem conv, then per stage a residual block and a stride-2 conv (widths 64, 128, 128, ...)."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], classes: int = 0):
        super().__init__()
        count = check_shape(shape, "--arch resnet")
        widths = _widths(count + 1, 64, 128)
        layers: list[nn.Module] = [nn.Conv2d(shape[0] + classes, widths[0], 3, padding=1)]
        for narrow, wide in zip(widths, widths[1:]):
            layers += [ResidualBlock(narrow), nn.Conv2d(narrow, wide, 4, stride=2, padding=1)]
        layers += [ResidualBlock(widths[-1]), nn.GroupNorm(8, widths[-1]), nn.SiLU(),
                   nn.Flatten()]
        self.features = nn.Sequential(*layers)
        hidden = widths[-1] * (shape[1] >> count) * (shape[2] >> count) + classes
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    forward = Encoder.forward


class ResNetDecoder(nn.Module):
    """The encoder mirrored: stride-2 transposed convs, each followed by a residual block."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], outputs: int,
                 classes: int = 0):
        super().__init__()
        count = check_shape(shape, "--arch resnet")
        widths = _widths(count + 1, 64, 128)
        hidden = (widths[-1], shape[1] >> count, shape[2] >> count)
        layers: list[nn.Module] = [nn.Linear(latent_dim + classes,
                                             hidden[0] * hidden[1] * hidden[2]),
                                   nn.Unflatten(1, hidden), ResidualBlock(widths[-1])]
        modulated = {2: widths[-1]}  # FiLM after every residual block
        for wide, narrow in zip(widths[::-1], widths[-2::-1]):
            layers += [nn.ConvTranspose2d(wide, narrow, 4, stride=2, padding=1),
                       ResidualBlock(narrow)]
            modulated[len(layers) - 1] = narrow
        layers += [nn.GroupNorm(8, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], outputs, 3,
                                                                    padding=1)]
        self.net = nn.Sequential(*layers)
        self.film = class_films(modulated, classes)

    forward = Decoder.forward


LOCATELLO_WIDTHS = (32, 32, 64, 64)  # one per halving, up to four (64x64 -> 4x4)
LOCATELLO_HIDDEN = 256


class LocatelloEncoder(nn.Module):
    """The disentanglement literature's encoder (see the module's docstring); a label enters
    as the conv encoder's does (class planes, and appended before the dense layers)."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], classes: int = 0):
        super().__init__()
        count = min(check_shape(shape, "--arch locatello"), len(LOCATELLO_WIDTHS))
        layers: list[nn.Module] = []
        channels = shape[0] + classes
        for width in LOCATELLO_WIDTHS[:count]:
            layers += [nn.Conv2d(channels, width, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        flat = channels * (shape[1] >> count) * (shape[2] >> count) + classes
        self.dense = nn.Sequential(nn.Linear(flat, LOCATELLO_HIDDEN), nn.ReLU())
        self.mu = nn.Linear(LOCATELLO_HIDDEN, latent_dim)
        self.logvar = nn.Linear(LOCATELLO_HIDDEN, latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dense(labelled_features(self.features, x, y))
        return self.mu(h), self.logvar(h)


class LocatelloDecoder(nn.Module):
    """The disentanglement literature's decoder; a label is appended to z."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], outputs: int,
                 classes: int = 0):
        super().__init__()
        count = min(check_shape(shape, "--arch locatello"), len(LOCATELLO_WIDTHS))
        widths = LOCATELLO_WIDTHS[:count]
        hidden = (widths[-1], shape[1] >> count, shape[2] >> count)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim + classes, LOCATELLO_HIDDEN), nn.ReLU(),
            nn.Linear(LOCATELLO_HIDDEN, hidden[0] * hidden[1] * hidden[2]), nn.ReLU(),
            nn.Unflatten(1, hidden)]
        for wide, narrow in zip(widths[::-1], (*widths[-2::-1], outputs)):
            layers += [nn.ConvTranspose2d(wide, narrow, 4, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])  # no ReLU on the likelihood's parameters

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z if y is None else torch.cat([z, y.to(z.dtype)], 1))
