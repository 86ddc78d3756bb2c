"""What each latent unit of a run holds: its KL, its traversal, the information it shares with
the data's factors of variation, and the disentanglement scores (disentanglement.py) of the
run's codes, written to RUN/disentanglement.json.

These read one Gaussian latent z whose units are its coordinates (the single-level families);
a hierarchy's units are spread over its groups and resolutions: `vaelab levels` shows those.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import generate
from .checkpoint import atomic_open
from .data import to_float
from .disentanglement import GroundTruth, Protocol, entropy, mutual_information, scores
from .errors import VaelabError
from .runs import Run, load_run

log = logging.getLogger(__name__)

SCORES_FILE = "disentanglement.json"
MATRIX_IMAGES = 10_000


def check_single_latent(run: Run, what: str) -> None:
    if not run.model.supports_exact:  # one Gaussian z under N(0, I), encode -> (mu, logvar)
        raise VaelabError(f"{what} move the units of one Gaussian latent, and {run.path} is "
                          f"{run.model.summary}; use `vaelab levels` for a hierarchy")


def unit_kl(run: Run, images: torch.Tensor, labels: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Each unit's KL(q(z_d|x) || N(0, 1)) averaged over the images: (D,) nats. A unit near 0
    is inactive: q(z_d|x) is the prior whatever the image."""
    return unit_kl_of(*posteriors(run, images, labels))


@torch.inference_mode()
def posteriors(run: Run, images: torch.Tensor, labels: torch.Tensor | None = None,
               batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z|x)'s mean and log-variance for every image, (N, D) each on the CPU: one pass of the
    encoder that the latent map (the means are the codes) and the units' KL can share."""
    check_single_latent(run, "unit KLs")
    device = next(run.model.parameters()).device
    pairs = [run.model.encode(to_float(images[start:start + batch_size].to(device)),
                              labels[start:start + batch_size].to(device)
                              if labels is not None else None)
             for start in range(0, len(images), batch_size)]
    return (torch.cat([mu.cpu() for mu, _ in pairs]),
            torch.cat([logvar.cpu() for _, logvar in pairs]))


def unit_kl_of(mu: torch.Tensor, logvar: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """unit_kl from the posteriors' parameters: the KL of each image's unit, summed a batch at
    a time in float32 and across batches in float64."""
    total = torch.zeros(mu.shape[1], dtype=torch.float64)
    for start in range(0, len(mu), batch_size):
        m, lv = mu[start:start + batch_size], logvar[start:start + batch_size]
        total += (0.5 * (m.pow(2) + lv.exp() - lv - 1)).sum(0).double()
    return (total / len(mu)).float()


@torch.inference_mode()
def traversals(run: Run, images: torch.Tensor, units: list[int], values: torch.Tensor,
               labels: torch.Tensor | None = None) -> torch.Tensor:
    """For each image, its posterior mean with one unit at a time set to each of `values`,
    the others held: (images, units, values, C, H, W), E[x|z]."""
    check_single_latent(run, "traversals")
    codes = generate.encode_means(run.model, images, labels)
    z = codes[:, None, None, :].repeat(1, len(units), len(values), 1)
    for row, unit in enumerate(units):
        z[:, row, :, unit] = values
    labels = labels.repeat_interleave(len(units) * len(values)) if labels is not None else None
    pictures = generate.decode_means(run.model, z.flatten(0, 2), labels)
    return pictures.unflatten(0, z.shape[:3])


# ---- the data's factors ------------------------------------------------------------------------

def factor_data(run: Run, data: str | os.PathLike | None = None
                ) -> tuple[torch.Tensor, GroundTruth]:
    """Every image of the run's data file (both splits: the metrics draw from the whole
    ground truth) and its factors."""
    from .own_data import load_image_data, read_factors

    config = run.config.replace(data=str(data)) if data else run.config
    names = (run.data or {}).get("factors")
    if config.data is None or not names:
        source = config.data or f"--dataset {config.dataset}"
        raise VaelabError(f"{run.path} was trained on data without factors of variation "
                          f"({source}): the disentanglement metrics need an .npz with `factors` "
                          "(python scripts/make_dsprites.py OUT.npz writes dSprites)")
    images = load_image_data(config)[0]
    found = read_factors(config.data, len(images))
    if found is None:
        raise VaelabError(f"{config.data} holds no `factors`: the disentanglement metrics need "
                          "the data the run was trained on, with its factors")
    factors, names = found
    varying = [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1]
    if len(varying) < len(names):  # a constant factor (the original dSprites' colour)
        log.info("leaving out factor(s) that never change: %s", ", ".join(
            name for k, name in enumerate(names) if k not in varying))
    return images, GroundTruth(factors[:, varying], tuple(names[k] for k in varying))


class CachedCodes:
    """The run's codes (posterior means) of the data's images by index, each image encoded
    once however often the metrics draw it."""

    def __init__(self, run: Run, images: torch.Tensor, batch_size: int = 1000):
        self.run, self.images, self.batch_size = run, images, batch_size
        self.codes = np.zeros((len(images), run.model.code_dim), dtype=np.float32)
        self.known = np.zeros(len(images), dtype=bool)

    def __call__(self, index: np.ndarray) -> np.ndarray:
        missing = np.unique(index[~self.known[index]])
        for start in range(0, len(missing), self.batch_size):
            chunk = torch.from_numpy(missing[start:start + self.batch_size])
            self.codes[chunk.numpy()] = generate.encode_means(
                self.run.model, self.images[chunk]).numpy()
        self.known[missing] = True
        return self.codes[index]


def write_scores(run_dir: str | os.PathLike, protocol: Protocol = Protocol(), seed: int = 0,
                 checkpoint: str = "best", device: str | None = None,
                 data: str | os.PathLike | None = None) -> tuple[dict[str, Any], Path]:
    """Score a run against its data's factors; RUN/disentanglement.json gets the scores (mean,
    sd and each repeat), the sample sizes, the units' KL and the units x factors mutual
    information (nats; what MIG reads), with each factor's entropy."""
    try:
        import sklearn  # noqa: F401  (the scores' classifiers)
    except ImportError:
        raise VaelabError("the disentanglement metrics need scikit-learn: pip install "
                          "'vaelab[disentanglement]'") from None
    run = load_run(run_dir, checkpoint, device)
    check_single_latent(run, "the disentanglement metrics")
    if run.model.conditional:
        raise VaelabError("a conditional run's codes leave the label out; the disentanglement "
                          "metrics score unconditional runs")
    images, truth = factor_data(run, data)
    codes = CachedCodes(run, images)
    # The matrix at MIG's full sample size whatever the share: an MI estimate is biased up by
    # about (values - 1)(bins - 1) / 2n nats, 0.3 nats for a 32-valued factor at n = 1,000.
    index = truth.random(max(protocol.train_points, MATRIX_IMAGES),
                         np.random.default_rng([seed, 99]))
    information = mutual_information(codes(index), truth.factors[index], protocol.bins)
    result = {"checkpoint": run.checkpoint, "checkpoint_sha256": run.checkpoint_sha256,
              "epoch": run.epoch, "model": run.config.model,
              "summary": run.model.summary, "seed": seed,
              "protocol": dataclasses.asdict(protocol), "images": truth.count,
              "factors": list(truth.names),
              "unit_kl": unit_kl(run, images[np.sort(index)]).tolist(),
              "mutual_information": information.tolist(),
              "factor_entropy": entropy(truth.factors[index]).tolist(),
              "scores": scores(truth, codes, protocol, seed)}
    path = run.path / SCORES_FILE
    with atomic_open(path) as file:
        json.dump(result, file, indent=1)
    return result, path


def read_scores(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(run_dir) / SCORES_FILE
    return json.loads(path.read_text()) if path.is_file() else None
