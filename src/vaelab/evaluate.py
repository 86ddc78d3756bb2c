"""Measuring a model: the ELBO over a split (more estimators join here)."""

from __future__ import annotations

import math

import torch

from .data import to_float
from .losses import ELBOTerms, elbo_terms
from .model import VAE

EVAL_BATCH = 1000  # larger than training batches: evaluation has no gradients to hold


class Totals:
    """Running sums of the per-image ELBO terms, kept on the device (no sync per batch)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.images = 0

    def add(self, terms: ELBOTerms) -> None:
        parts = torch.stack([terms.loss.sum(), terms.recon.sum(), terms.kl.sum()])
        self.sums += parts.detach().double()
        self.images += len(terms.loss)

    def means(self, prefix: str, batch_size: int) -> dict[str, float]:
        """Nats per image, plus the seed's per-batch convention: the mean over batches of
        each batch's summed loss = total loss / number of batches of `batch_size`."""
        loss, recon, kl = self.sums.tolist()
        n = max(self.images, 1)
        batches = max(math.ceil(self.images / batch_size), 1)
        return {f"{prefix}_loss": loss / n, f"{prefix}_recon": recon / n,
                f"{prefix}_kl": kl / n, f"{prefix}_batch_loss": loss / batches}


@torch.inference_mode()
def evaluate_elbo(model: VAE, images: torch.Tensor, seed: int,
                  batch_size: int = EVAL_BATCH) -> Totals:
    """Sum of -ELBO terms over uint8 `images` (N, 1, 28, 28), one z per image.

    The noise comes from a generator seeded with `seed`, so the same model always gets the
    same number and evaluation never disturbs the training run's random streams.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    totals = Totals(device)
    for start in range(0, len(images), batch_size):
        x = to_float(images[start:start + batch_size].to(device))
        logits, mu, logvar = model(x, generator)
        totals.add(elbo_terms(logits, x, mu, logvar))
    model.train(was_training)
    return totals
