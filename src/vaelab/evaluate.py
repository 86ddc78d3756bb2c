"""Measuring a model: the ELBO, the importance-weighted log-likelihood, active units."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import atomic_open
from .data import limited, run_split, to_float, training_images, validation_images
from .errors import VaelabError
from .likelihoods import EIGHT_BIT
from .losses import Totals
from .quadrature import check_exact_possible, compare_with_estimate
from .runs import eval_path, load_run

log = logging.getLogger(__name__)

EVAL_BATCH = 256  # enough images to keep the cores busy, few enough to stay in the CPU's cache
DECODES_PER_PASS = 1024  # images x samples decoded at once: bounds memory at any K (and, like
# EVAL_BATCH, stays in cache)
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: unit i is active if Cov_x(E_q[z_i]) > 0.01


@torch.inference_mode()
def evaluate_elbo(model: nn.Module, images: torch.Tensor, seed: int,
                  batch_size: int = EVAL_BATCH, labels: torch.Tensor | None = None) -> Totals:
    """Sum of -ELBO terms over uint8 `images` (N, C, H, W), one z per image (given its label
    `labels`, for a conditional model).

    The noise comes from a generator seeded with `seed`, so the same model always gets the
    same number and evaluation never disturbs the training run's random streams. Under
    torchrun each rank takes its share of every batch (and of its noise), and the sums are
    added over the ranks: the same number at any world size.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    totals = Totals(device, model.term_names)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        noise = model.draw_noise(len(batch), generator)
        first, last = distributed.share(len(batch))
        x = to_float(batch[first:last].to(device))
        y = _part(labels, start + first, last - first, device)
        totals.add(model.terms(x, noise[first:last], y))
    model.train(was_training)
    return distributed.summed(totals)


def _part(labels: torch.Tensor | None, start: int, size: int, device: torch.device
          ) -> torch.Tensor | None:
    return labels[start:start + size].to(device) if labels is not None else None


@torch.inference_mode()
def log_likelihood_iw(model: nn.Module, images: torch.Tensor, samples: int, seed: int = 0,
                      progress: bool = False, labels: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
    """Per-image estimates over uint8 `images` (N, C, H, W), float64 on the CPU (for a
    conditional model, of log p(x|y), given each image's label in `labels`):

    log_px    L_K = logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K, z_k ~ q(z|x),
              a lower bound on log p(x) that tightens as K grows (Burda et al. 2016);
    recon     E_q[-log p(x|z)], averaged over the same K samples;
    kl        KL(q(z|x) || p(z)), analytic (a hierarchy's summed over its groups, each
              averaged over the samples of the groups above, as are its kl_1, kl_2, ...);
              -ELBO = recon + kl;
    ess       the effective sample size (sum w)^2 / sum w^2 of the K weights: near K when
              q(z|x) matches the posterior; near 1 when a few samples dominate and the
              estimate has not converged;
    mu        the posterior means (for active units), every latent group's side by side.
    Images go in batches and samples in chunks of at most DECODES_PER_PASS decodes. Under
    torchrun the batches are dealt round-robin to the ranks; every rank draws every batch's
    noise (cheap beside decoding it), so an image's samples do not depend on the world size.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    per_batch = max(1, DECODES_PER_PASS // samples)
    chunk = min(samples, DECODES_PER_PASS)
    model.eval()
    mine: list[tuple[int, dict[str, torch.Tensor]]] = []
    with tqdm(total=len(images), unit="image", disable=not progress, leave=False) as bar:
        for index, start in enumerate(range(0, len(images), per_batch)):
            x = images[start:start + per_batch]
            noise = [model.draw_noise(len(x), generator, min(chunk, samples - done))
                     for done in range(0, samples, chunk)]
            if distributed.owns(index):
                y = _part(labels, start, per_batch, device)
                mine.append((index, _estimates(model, to_float(x.to(device)), noise, y)))
            bar.update(len(x))
    parts = distributed.gathered(mine)
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _estimates(model: nn.Module, x: torch.Tensor, noise: list[torch.Tensor],
               y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """log_likelihood_iw's per-image figures for one batch x (labels y, for a conditional
    model), its samples' noise in chunks."""
    samples = sum(len(eps) for eps in noise)
    log_sum = torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
    log_sum_sq = log_sum.clone()
    sums: dict[str, torch.Tensor] = {}
    for eps in noise:
        found = model.importance_terms(x, eps, y)
        log_w = found.pop("log_w")
        log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w, 0))
        log_sum_sq = torch.logaddexp(log_sum_sq, torch.logsumexp(2 * log_w, 0))
        for name, values in found.items():
            sums[name] = sums.get(name, 0) + values.double().sum(0)
    means = torch.cat([mean.flatten(1) for mean in model.group_means(x, y)], 1)
    return {"log_px": (log_sum - math.log(samples)).cpu(),
            **{name: (total / samples).cpu() for name, total in sums.items()},
            "ess": torch.exp(2 * log_sum - log_sum_sq).cpu(), "mu": means.float().cpu()}


def summarize(estimates: dict[str, torch.Tensor], pixels: int,
              group_sizes: tuple[int, ...] | None = None) -> dict[str, float]:
    """Means with standard errors across images (nats per image, and bits per dimension:
    nats / (ln 2 x C x H x W) with `pixels` = C x H x W), and the number of active units; with
    several latent groups (their sizes in `group_sizes`, top first), each group's KL and
    active units too."""
    nll, neg_elbo = -estimates["log_px"], estimates["recon"] + estimates["kl"]
    n = len(nll)

    def stderr(values: torch.Tensor) -> float:
        return values.std().item() / math.sqrt(n) if n > 1 else math.nan

    variances = estimates["mu"].double().var(0, unbiased=False)
    active = variances > ACTIVE_UNIT_THRESHOLD
    bits = pixels * math.log(2)  # nats per image -> bits per dimension (sub-pixel)
    groups = {}
    if group_sizes is not None and len(group_sizes) > 1:
        groups = {"active_units_per_group": [int(part.sum()) for part in
                                             active.split(list(group_sizes))],
                  "kl_per_group": [estimates[f"kl_{g}"].mean().item()
                                   for g in range(1, len(group_sizes) + 1)]}
    return {
        "images": n,
        "nll": nll.mean().item(), "nll_stderr": stderr(nll),
        "nll_bits_per_dim": nll.mean().item() / bits,
        "nll_bits_per_dim_stderr": stderr(nll) / bits,
        "neg_elbo": neg_elbo.mean().item(), "neg_elbo_stderr": stderr(neg_elbo),
        "neg_elbo_bits_per_dim": neg_elbo.mean().item() / bits,
        "recon": estimates["recon"].mean().item(), "kl": estimates["kl"].mean().item(),
        "active_units": int(active.sum()),
        "effective_samples_median": estimates["ess"].median().item(),
        "latent_dim": estimates["mu"].shape[1], **groups,
    }


def evaluate_run(model: nn.Module, images: torch.Tensor, samples: int, seed: int = 0,
                 progress: bool = False, exact: bool = False,
                 labels: torch.Tensor | None = None) -> dict[str, float]:
    """The numbers of `vaelab evaluate`, timed; with `exact`, also log p(x) by quadrature
    beside the estimate (latent sizes 1 and 2). A conditional model gets the labels and its
    numbers are of log p(x|y)."""
    started = time.perf_counter()
    labels = labels if model.conditional else None
    estimates = log_likelihood_iw(model, images, samples, seed, progress, labels)
    result = {"iw_samples": samples, "conditional": model.conditional,
              **summarize(estimates, images[0].numel(), model.group_sizes)}
    if exact:
        log.info("integrating log p(x) of %d images on a grid (--exact)", len(images))
        result.update(compare_with_estimate(model, images, estimates["log_px"], progress,
                                            labels))
    return {**result, "seconds": time.perf_counter() - started}


def write_evaluation(run_dir: str, samples: int = 5000, split: str = "test",
                     limit: int | None = None, seed: int = 0, checkpoint: str = "best",
                     device: str | None = None, data_dir: str | None = None,
                     progress: bool | None = None, exact: bool = False, data: str | None = None
                     ) -> tuple[dict[str, Any], Path]:
    """Evaluate a run's checkpoint on its test (or training) images; write RUN/eval.json
    (eval-train.json) atomically and return the numbers with the file's path."""
    if samples < 1:
        raise VaelabError(f"--iw-samples {samples} is not allowed: it must be at least 1")
    if limit is not None and limit < 1:
        raise VaelabError(f"--limit {limit} is not allowed: it must be at least 1")
    run = load_run(run_dir, checkpoint, device)
    if exact:
        check_exact_possible(run.model)
    config = run.config
    chosen = limited(config, run_split(config, "val" if split == "test" else "train", data_dir,
                                       data), limit)
    if split == "train" and config.binarize == "static":
        images = training_images(config, chosen)  # the one binarization it trained on
    else:
        images = validation_images(config, chosen)
    show = (sys.stderr.isatty() if progress is None else progress) and distributed.is_writer()
    log.info("evaluating %d images with K=%d importance samples each", len(images), samples)
    with distributed.process_group(run.device, config.ddp_backend, config.ddp_timeout) as there:
        numbers = evaluate_run(run.model.to(there), images, samples, seed, show, exact,
                               chosen.labels)
    result = {"split": split, "checkpoint": run.checkpoint, "epoch": run.epoch,
              "checkpoint_sha256": run.checkpoint_sha256,
              "dataset": config.data or config.dataset, "binarize": config.binarize,
              "model": config.model, "likelihood": config.likelihood,
              # bits/dim are a density of the 8-bit values, comparable with the literature,
              # only under a discretized likelihood (a Bernoulli on grey values is not one)
              "density_of_8bit": config.likelihood in EIGHT_BIT, **numbers}
    path = eval_path(run.path, split)
    if not distributed.is_writer():  # under torchrun, rank 0 alone writes
        return result, path
    floor = run.model.likelihood.floor(to_float(images))
    if floor is not None:
        result["pixel_entropy"] = floor
    try:
        with atomic_open(path) as file:
            json.dump(result, file, indent=2)
            file.write("\n")
    except OSError as err:
        raise VaelabError(f"cannot write {path} ({err.strerror}); is the run folder writable?")
    return result, path
