"""`vaelab train-prior RUN`: a PixelCNN prior (models/pixelcnn.py) over a discrete
autoencoder's code maps, trained after the autoencoder, into RUN/prior.pt.

The code maps are those of the run's best.pt: its training and validation images encoded once,
at the start. Adam on the mean negative log-likelihood of a map (nats); one checkpoint per
epoch, holding the weights, Adam, the shuffling generator and the history, so that
`vaelab train-prior RUN --epochs N` continues a prior (from its last finished epoch) exactly as
an uninterrupted one would. The prior records the SHA-256 of the checkpoint whose codes it
models: `load_run` attaches it to that checkpoint's model only (another checkpoint's codes mean
other things), and a run whose best.pt changed must train its prior again (--force).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_data, training_images, validation_images
from .errors import CheckpointError, VaelabError
from .generate import code_maps
from .models import learns_prior
from .models.pixelcnn import PixelCNNPrior, prior_for
from .runs import PRIOR, Run, load_run, run_lock
from .training_state import set_seed
from .version import __version__

SETTINGS = ("channels", "layers", "lr", "batch_size", "seed")  # a resume keeps these
EVAL_BATCH = 500  # code maps per validation batch


def train_prior(run_dir: str | os.PathLike, epochs: int = 20, lr: float = 1e-3,
                batch_size: int = 64, channels: int = 64, layers: int = 6, seed: int = 0,
                force: bool = False, data_dir: str | None = None, device: str | None = None,
                on_epoch_end: Callable[[dict[str, float]], None] | None = None) -> Path:
    """Train (or continue) RUN's prior up to `epochs`; returns RUN/prior.pt."""
    settings = {"channels": channels, "layers": layers, "lr": lr, "batch_size": batch_size,
                "seed": seed, "epochs": epochs}
    _check_settings(settings)
    run = load_run(run_dir, "best", device)
    if not learns_prior(run.model):
        raise VaelabError(f"{run.path} is a --model {run.config.model} run: only discrete "
                          "autoencoders (vqvae, fsq) have a prior over codes to train")
    path = run.path / PRIOR
    with distributed.process_group(run.device, run.config.ddp_backend,
                                   run.config.ddp_timeout) as device, \
            distributed.writer_holds(lambda: run_lock(run.path)):
        saved = _previous(path, run, settings, force)
        train_codes, val_codes = _code_maps(run, data_dir)
        set_seed(seed)  # the prior's first weights: the same on every rank
        prior = prior_for(run.model, settings).to(device)
        network = distributed.wrap(prior, device)
        optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
        shuffle = torch.Generator().manual_seed(seed)
        history: list[dict[str, float]] = []
        if saved is not None:
            prior.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            shuffle.set_state(saved["rng"]["shuffle"])
            history = saved["history"]
            for row in history:
                if on_epoch_end:
                    on_epoch_end(row)
        for epoch in range(len(history) + 1, epochs + 1):
            started = time.perf_counter()
            train_nll = _epoch(network, optimizer, train_codes, batch_size, shuffle)
            row = {"epoch": epoch, "train_nll": train_nll,
                   "val_nll": _mean_nll(prior, val_codes),
                   "seconds": time.perf_counter() - started}
            row["val_bits_per_code"] = row["val_nll"] / math.log(2) / run.model.positions
            history.append(row)
            if not distributed.is_writer():  # under torchrun, rank 0 alone writes and prints
                continue
            save_checkpoint(path, {"config": settings, "model": prior.state_dict(),
                                   "optimizer": optimizer.state_dict(), "epoch": epoch,
                                   "step": epoch * math.ceil(len(train_codes[0]) / batch_size),
                                   "history": history, "rng": {"shuffle": shuffle.get_state()},
                                   "autoencoder_sha256": run.checkpoint_sha256}, __version__)
            if on_epoch_end:
                on_epoch_end(row)
    return path


def _check_settings(settings: dict[str, Any]) -> None:
    for name in ("epochs", "batch_size", "channels", "layers"):
        if settings[name] < 1:
            raise VaelabError(f"--{name.replace('_', '-')} {settings[name]} is not allowed: it "
                              "must be at least 1")
    if not (math.isfinite(settings["lr"]) and settings["lr"] > 0):
        raise VaelabError(f"--lr {settings['lr']} is not allowed: it must be a finite number "
                          "> 0, e.g. 1e-3")


def _previous(path: Path, run: Run, settings: dict[str, Any], force: bool
              ) -> dict[str, Any] | None:
    """The prior trained so far, to continue; None to start one. Refused: a prior of another
    checkpoint's codes, or of other settings (unless --force replaces it)."""
    if not path.is_file() or force:
        return None
    saved = load_checkpoint(path)
    if saved["autoencoder_sha256"] != run.checkpoint_sha256:
        raise CheckpointError(f"{path} models the codes of an earlier best.pt of this run; "
                              f"train a new prior with `vaelab train-prior {run.path} --force`")
    changed = [name for name in SETTINGS if saved["config"][name] != settings[name]]
    if changed:
        raise VaelabError(f"{path} was trained with other settings ({', '.join(changed)}); "
                          "a prior continues with its own: drop them, or pass --force to "
                          "train a new one")
    if saved["epoch"] > settings["epochs"]:
        raise VaelabError(f"{path} has already trained {saved['epoch']} epochs; --epochs must "
                          f"be at least that, got {settings['epochs']}")
    return saved


def _code_maps(run: Run, data_dir: str | None) -> tuple[tuple, tuple]:
    """(indices, labels) of the training and the validation images, encoded once; labels
    only for a conditional model (its prior is conditional too)."""
    config = run.config if data_dir is None else run.config.replace(data_dir=data_dir)
    train_split, val_split = load_data(config)

    def encoded(images: torch.Tensor, labels: torch.Tensor | None) -> tuple:
        labels = labels if run.model.conditional else None
        return code_maps(run.model, images, labels), labels

    return (encoded(training_images(config, train_split), train_split.labels),
            encoded(validation_images(config, val_split), val_split.labels))


def _epoch(network: torch.nn.Module, optimizer: torch.optim.Optimizer, codes: tuple,
           batch_size: int, shuffle: torch.Generator) -> float:
    """One epoch; under torchrun each rank takes its share of every batch (the shuffle is the
    same on all) and DistributedDataParallel averages the gradients: one process's steps."""
    indices, labels = codes
    device = next(network.parameters()).device
    order = torch.randperm(len(indices), generator=shuffle)
    network.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(indices), batch_size):
        chosen = order[start:start + batch_size]
        first, last = distributed.share(len(chosen))
        mine = chosen[first:last]
        y = labels[mine].to(device) if labels is not None else None
        nll = -network(indices[mine].to(device), y)
        optimizer.zero_grad(set_to_none=True)
        distributed.rank_mean(nll, len(chosen)).backward()
        optimizer.step()
        total += nll.detach().double().sum()
    return distributed.all_sum(total).item() / len(indices)


@torch.inference_mode()
def _mean_nll(prior: PixelCNNPrior, codes: tuple) -> float:
    indices, labels = codes
    device = next(prior.parameters()).device
    prior.eval()
    total = 0.0
    for start in range(0, len(indices), EVAL_BATCH):
        y = labels[start:start + EVAL_BATCH].to(device) if labels is not None else None
        total -= prior.log_prob(indices[start:start + EVAL_BATCH].to(device), y).sum().item()
    return total / len(indices)
