"""What every model family is to the rest of vaelab: the training loop, the evaluator, the
figures, the report and the explorer call these methods and nothing else.

A model is an `nn.Module` with these attributes

    likelihood     p(x|z)'s object (likelihoods.py): nll, mean, sample
    shape          (C, H, W) of its images;  classes: 0, or the number of labels it takes
    term_names     the per-image terms it reports beside the loss, e.g. ("recon", "kl") or
                   ("recon", "kl", "kl_1", "kl_2"): metrics.csv, the table and the curves
                   show whatever a model names
    noise_size     standard normal numbers a training step draws per image: its latents' (all
                   groups together), and any more the objective needs (FactorVAE's
                   permutation keys); 0 for a point-mass posterior (discrete codes)
    group_sizes    how those numbers split into latent groups, top first: (D,) for one group
    code_dim       size of the code that interpolation, the latent map and the explorer move
                   in (a single-level VAE's z; a hierarchy's top group)
    default_grad_clip, default_grad_skip
                   the gradient-norm thresholds the family trains with when the config sets
                   none (--grad-clip, --grad-skip): None for no clipping or skipping
    supports_exact whether log p(x) can be integrated on a grid (`evaluate --exact`): one
                   Gaussian latent under an N(0, I) prior, whose encode(x, labels) gives
                   (mu, logvar) and decode(z, labels) the likelihood's parameters

and these methods (x: (B, C, H, W) in [0, 1]; labels: (B,) class indices or (B, classes)
weights, None for an unconditional model; params: the likelihood's (B, C * P, H, W)):

    draw_noise(count, generator, samples=None) -> (count, noise_size), or with `samples` K
        (K, count, noise_size): the noise of a whole global batch, drawn from `generator`.
        Under torchrun every rank draws it all and keeps its slice of the image axis, so an
        image's noise does not depend on the number of processes, and a resumed run draws
        what the uninterrupted one did.
    terms(x, noise, labels, kl_weight=1.0, samples=None) -> {name: (B,)}: "objective" (what
        training minimizes), "loss" (the negative ELBO, nats per image) and every name in
        term_names. An objective that compares the images of a batch (an aggregate posterior,
        a permutation) takes the whole global batch through distributed.global_batch, which
        every rank calls for every batch, in training and in evaluation alike: under torchrun,
        code that calls `terms` on one rank alone would wait forever.
    importance_terms(x, noise, labels) -> {"log_w": (K, B), "recon": (K, B), "kl": (K, B),
        and any other term}: log w_k = log p(x, z_k) - log q(z_k | x) for noise (K, B, N),
        and the terms of each sample, for the importance-weighted estimate.
    group_means(x, labels) -> [(B, units)] per latent group, top first: the posterior means
        along the mean path (active units).
    code(x, labels) -> (B, code_dim): the posterior mean of the code.
    decode(code, labels) -> params: a code decoded (a hierarchy's lower groups at their prior
        means).
    reconstruct(x, labels, generator=None) -> params: through the posterior, at its means, or
        sampled with `generator`.
    prior_noise(n, generator) -> (n, sum(group_sizes)) on the generator's device, and
    from_prior(noise, temperature, labels) -> params: ancestral samples, each group's
        standard deviation scaled by `temperature`. Noise rather than a sample, so that
        figures can share noise across rows (the same z down a class grid's columns, the top
        groups of a hierarchy held while the lower ones are drawn again).

A family whose samples need a prior learned after it (the discrete autoencoders: VQ-VAE, FSQ)
sets `learns_prior = True` and holds that prior in `model.prior` (None until `vaelab
train-prior`; runs.load_run attaches it); `from_prior` then refuses with one line while it is
None, and the figures, the report and TensorBoard leave samples out (generate.can_sample).

A new family is a module here with such a class, registered in models/__init__.py, with its
options as Config fields named in config.FAMILY_OPTIONS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VaelabError


class Objective(nn.Module):
    """The training objective as a module: DistributedDataParallel and torch.compile wrap this,
    so that the model's `terms` run through their forward (DDP's gradient exchange hooks into
    it) while the model itself keeps its own forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None,
                kl_weight: float = 1.0, samples: int | None = None) -> dict[str, torch.Tensor]:
        return self.model.terms(x, noise, labels, kl_weight, samples)


def one_hot(labels: torch.Tensor | None, classes: int) -> torch.Tensor | None:
    """A model's label input: labels (B,) as class indices, or (B, classes) as weights over
    the classes (a blend, for interpolation) -> (B, classes) float; None for an unconditional
    model (classes 0), which ignores labels."""
    if not classes:
        return None
    if labels is None:
        raise VaelabError("this run is conditional: it needs the images' labels (a class "
                          "for every sample)")
    if labels.is_floating_point():
        return labels.float()
    return F.one_hot(labels, classes).float()


def learns_prior(model: nn.Module | type) -> bool:
    """Whether a model (or family class) samples through a prior learned after it."""
    return getattr(model, "learns_prior", False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
