"""A prior over code maps: a PixelCNN (van den Oord et al. 2016) with gated activations and
masked convolutions over the grid of a discrete autoencoder's code indices, position by
position in raster order, p(codes) = prod_i p(c_i | c_<i [, y]).

The first convolution's mask hides the position itself (type A), the later ones only what
follows it (type B), so each position's logits see the positions before it and nothing else
(tests/test_prior.py checks it by changing one code and watching which logits move). A label y
adds a learned bias to every layer's gates. This is the plain masked stack, not the two-stack
"blind-spot" fix of the gated PixelCNN paper: on grids of 7x7 to 16x16 codes the stack's
receptive field covers the rows above in a few layers, and it keeps the model one small file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .interface import one_hot


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees the rows above and, in its own row, the columns to the left
    (and the centre itself, for type "B")."""

    def __init__(self, inputs: int, outputs: int, size: int, kind: str):
        super().__init__(inputs, outputs, size, padding=size // 2)
        mask = torch.ones_like(self.weight)
        centre = size // 2
        mask[:, :, centre, centre + (kind == "B"):] = 0
        mask[:, :, centre + 1:] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, self.weight * self.mask, self.bias, padding=self.padding)


def prior_for(model: nn.Module, settings: dict) -> PixelCNNPrior:
    """The prior a discrete autoencoder's code maps take, at `settings` (channels, layers)."""
    return PixelCNNPrior(model.codebook_size, model.grid, settings["channels"],
                         settings["layers"], model.classes)


def _gate(h: torch.Tensor) -> torch.Tensor:
    value, gate = h.chunk(2, 1)
    return torch.tanh(value) * torch.sigmoid(gate)


class PixelCNNPrior(nn.Module):
    """p(code map [| y]) over `codes` indices on a `grid` (h, w)."""

    def __init__(self, codes: int, grid: tuple[int, int], channels: int = 64, layers: int = 6,
                 classes: int = 0):
        super().__init__()
        self.codes, self.grid, self.classes = codes, tuple(grid), classes
        self.settings = {"channels": channels, "layers": layers}  # what rebuilds it
        self.embed = nn.Embedding(codes, channels)
        self.first = MaskedConv2d(channels, 2 * channels, 7, "A")
        self.layers = nn.ModuleList(MaskedConv2d(channels, 2 * channels, 3, "B")
                                    for _ in range(layers))
        self.labels = nn.ModuleList(nn.Linear(classes, 2 * channels) for _ in range(layers + 1)) \
            if classes else None
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, codes, 1))

    def logits(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Indices (B, h, w) -> each position's logits over the codes (B, codes, h, w), each
        from the positions before it (in raster order) only."""
        y = one_hot(labels, self.classes)
        h = _gate(self._biased(self.first(self.embed(indices).permute(0, 3, 1, 2)), y, 0))
        for number, layer in enumerate(self.layers, 1):
            h = h + _gate(self._biased(layer(h), y, number))
        return self.out(h)

    def _biased(self, h: torch.Tensor, y: torch.Tensor | None, layer: int) -> torch.Tensor:
        if y is None:
            return h
        return h + self.labels[layer](y.to(h.dtype))[:, :, None, None]

    def forward(self, indices: torch.Tensor, labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        """log p(code map) per map: what DistributedDataParallel wraps (train-prior)."""
        return self.log_prob(indices, labels)

    def log_prob(self, indices: torch.Tensor, labels: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """log p(code map) per map (B,), nats."""
        nll = F.cross_entropy(self.logits(indices, labels).float(), indices, reduction="none")
        return -nll.flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, temperature: float = 1.0,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Code maps (n, h, w) from uniform noise (n, h w), position by position: each code
        drawn by inverse CDF from the logits divided by `temperature` (below 1: likelier
        codes, less variety)."""
        n, (height, width) = len(noise), self.grid
        indices = torch.zeros(n, height, width, dtype=torch.long, device=noise.device)
        for position in range(height * width):
            row, column = divmod(position, width)
            logits = self.logits(indices, labels)[:, :, row, column].float() / temperature
            cdf = torch.softmax(logits, 1).cumsum(1)
            chosen = torch.searchsorted(cdf, noise[:, position:position + 1] * cdf[:, -1:])
            indices[:, row, column] = chosen.clamp_max(self.codes - 1).flatten()
        return indices
