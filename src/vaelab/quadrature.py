"""log p(x) without sampling, for latent spaces of one or two dimensions (`evaluate --exact`).

    p(x) = integral of p(x|z) p(z) dz

is summed on a grid over z that adapts to the integrand: a coarse grid over the prior finds
every region holding mass (the posterior's modes, wherever they are), a box around them and
around q(z|x) is integrated on a fine grid, and the grid is refined until the answer stops
changing. The importance-weighted estimator samples only where q(z|x) puts mass, so it can
miss a mode of the posterior without its effective sample size showing it; this integral
cannot, which makes it the reference the estimator is measured against.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import VaelabError
from .losses import gaussian_log_density

RADIUS = 8.0  # the prior puts under 1e-14 of its mass beyond 8 standard deviations
COARSE_POINTS = {1: 1601, 2: 121}  # per axis over [-RADIUS, RADIUS]: spacing 0.01 and 0.13
FINE_POINTS = {1: (201, 12801), 2: (41, 641)}  # per axis: the first grid and the most tried
MASS_WINDOW = 30.0  # nats below the peak still counted as mass (e^-30 of it is negligible)
TOLERANCE = 1e-4  # nats: refinement stops once doubling the grid moves log p(x) less
DECODES = 4096  # latent points decoded at once


@torch.inference_mode()
def log_joint(model: nn.Module, x: torch.Tensor, z: torch.Tensor,
              y: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x|z) + log p(z) for one image x (1, C, H, W) at each row of z (M, D) -> (M,),
    float64 on the CPU (the decoder itself runs in float32 on the model's device). For a
    conditional model, y (1,) is the image's label and this is log p(x|z, y) + log p(z)."""
    device = next(model.parameters()).device
    x = x.to(device)
    parts = []
    for chunk in z.split(DECODES):
        labels = y.to(device).expand(len(chunk)) if y is not None else None
        params = model.decode(chunk.float().to(device), labels)
        x_each = x.expand(len(params), *x.shape[1:])
        parts.append(-model.likelihood.nll(params, x_each).double().cpu())
    return torch.cat(parts) + gaussian_log_density(z.double())


def grid(lows: torch.Tensor, highs: torch.Tensor, points: int
         ) -> tuple[torch.Tensor, float]:
    """A regular grid over the box [lows, highs] (D,): its points (points^D, D), float64,
    and the volume of one cell."""
    axes = [torch.linspace(lo, hi, points, dtype=torch.float64)
            for lo, hi in zip(lows.tolist(), highs.tolist())]
    cells = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    volume = math.prod((hi - lo) / (points - 1) for lo, hi in zip(lows.tolist(),
                                                                   highs.tolist()))
    return cells, volume


def integration_box(model: nn.Module, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                    y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The box holding all of the integrand's mass: every coarse point within MASS_WINDOW
    nats of the peak, padded by two coarse cells, and q(z|x)'s mean +- 6 sd."""
    dim = len(mu)
    points = COARSE_POINTS[dim]
    coarse, _ = grid(torch.full((dim,), -RADIUS), torch.full((dim,), RADIUS), points)
    values = log_joint(model, x, coarse, y)
    mass = coarse[values > values.max() - MASS_WINDOW]
    pad = 2 * (2 * RADIUS / (points - 1))
    sd = torch.exp(0.5 * logvar.double())
    lows = torch.minimum(mass.min(0).values - pad, mu.double() - 6 * sd).clamp(min=-RADIUS)
    highs = torch.maximum(mass.max(0).values + pad, mu.double() + 6 * sd).clamp(max=RADIUS)
    return lows, highs


def log_marginal(model: nn.Module, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                 y: torch.Tensor | None = None) -> float:
    """log p(x) (log p(x|y) given a label y (1,)) for one image x (1, C, H, W) in [0, 1], given
    its q(z|x) = N(mu, e^logvar) (D,) with D = 1 or 2. Refines the grid (doubling its
    resolution) until two successive sums agree within TOLERANCE nats."""
    dim = len(mu)
    lows, highs = integration_box(model, x, mu, logvar, y)
    points, most = FINE_POINTS[dim]
    previous = math.nan
    while True:
        cells, volume = grid(lows, highs, points)
        estimate = (torch.logsumexp(log_joint(model, x, cells, y), 0)
                    + math.log(volume)).item()
        if abs(estimate - previous) < TOLERANCE:
            return estimate
        if points >= most:
            raise VaelabError(f"the quadrature did not settle within {TOLERANCE} nats at "
                              f"{points} points per axis; the posterior is too narrow for "
                              "--exact")
        previous, points = estimate, 2 * points - 1


def check_exact_possible(model: nn.Module) -> None:
    """A grid over z needs one Gaussian latent of 1 or 2 dimensions under an N(0, I) prior."""
    if not model.supports_exact:
        raise VaelabError(f"--exact integrates over z on a grid, which needs a single latent "
                          f"of size 1 or 2; this {model.summary} has {len(model.group_sizes)} "
                          f"latent groups of {model.noise_size} units in all. Drop --exact "
                          "(the importance-weighted estimate is the measure here)")
    latent_dim = model.code_dim
    if latent_dim not in COARSE_POINTS:
        raise VaelabError(f"--exact integrates over z on a grid, which is possible for latent "
                          f"sizes 1 and 2; this run has {latent_dim}. Drop --exact (the "
                          "importance-weighted estimate is the measure for larger sizes)")


OFF_BY = 0.05  # nats: an image whose estimate misses log p(x) by more counts as off


def compare_with_estimate(model: nn.Module, images: torch.Tensor, log_px: torch.Tensor,
                          progress: bool = False, labels: torch.Tensor | None = None
                          ) -> dict[str, float]:
    """Exact log p(x) of each uint8 image (N, C, H, W) beside its IW estimate `log_px` (N,):
    the exact NLL, and the gap exact - estimate (positive where the estimate falls short):
    its mean, the share of images off by more than OFF_BY nats, and the worst image."""
    from tqdm.auto import tqdm

    from .data import to_float

    check_exact_possible(model)
    device = next(model.parameters()).device
    exact = torch.empty(len(images), dtype=torch.float64)
    with torch.inference_mode():
        for i in tqdm(range(len(images)), unit="image", disable=not progress, leave=False):
            x = to_float(images[i:i + 1])
            y = labels[i:i + 1] if labels is not None else None
            mu, logvar = model.encode(x.to(device), y.to(device) if y is not None else None)
            exact[i] = log_marginal(model, x, mu[0].cpu(), logvar[0].cpu(), y)
    gap = exact - log_px.double()
    worst = int(gap.abs().argmax())
    n = len(images)
    return {"exact_nll": -exact.mean().item(),
            "exact_nll_stderr": exact.std().item() / math.sqrt(n) if n > 1 else math.nan,
            "exact_gap_mean": gap.mean().item(), "exact_gap_median": gap.median().item(),
            "exact_share_off": (gap.abs() > OFF_BY).double().mean().item(),
            "exact_gap_worst": gap[worst].item(), "exact_gap_worst_image": worst}
