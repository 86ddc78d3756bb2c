"""The training loop: Adam on the per-image negative ELBO, a checkpoint per epoch, resumable.

Every random stream has its own generator (shuffling, reparameterization noise), and all
of them go into the checkpoint, so on a CPU a resumed run equals an uninterrupted one bit
for bit. The loop prints nothing but its tqdm bar; each epoch's row goes to `on_epoch_end`.
"""

from __future__ import annotations

import math
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import load_checkpoint, require_checkpoint, save_checkpoint
from .config import Config, resolve_device
from .data import TEST_BINARIZATION_SEED, Split, binarize, load_split, to_float
from .errors import NonFiniteLoss, TrainingInterrupted, VaelabError
from .evaluate import Totals, evaluate_elbo
from .losses import ELBOTerms, elbo_terms, iwae_terms
from .model import VAE
from .runs import (BEST, FIGURES, LAST, RUN_FILES, check_writable, config_from_checkpoint,
                   holds_run, load_weights, run_lock, write_config, write_metrics)

EpochCallback = Callable[[dict[str, float]], None]

# Fields that only say where data lives or what runs the maths: a resume may change them.
RESUMABLE_CHANGES = ("epochs", "data_dir", "device")


@dataclass
class TrainingState:
    """Everything a run changes as it trains; `checkpoint()` captures all of it."""

    config: Config
    model: VAE
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator   # orders the batches of each epoch (CPU)
    noise: torch.Generator     # eps of the reparameterization (on the run's device)
    binarizer: torch.Generator  # dynamic binarization's draws (on the run's device)
    epoch: int = 0            # completed epochs
    step: int = 0             # optimizer steps taken
    best_val_loss: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)
    partial: EpochProgress | None = None  # an epoch stopped part-way

    @classmethod
    def fresh(cls, config: Config, device: torch.device) -> TrainingState:
        set_seed(config.seed)
        model = VAE(config.latent_dim).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        shuffle = torch.Generator().manual_seed(config.seed)
        noise = torch.Generator(device=device).manual_seed(config.seed + 1)
        binarizer = torch.Generator(device=device).manual_seed(config.seed + 2)
        return cls(config, model, optimizer, shuffle, noise, binarizer)

    def checkpoint(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "step": self.step,
            "best_val_loss": self.best_val_loss, "history": self.history,
            "partial": self.partial.to_dict() if self.partial else None,
            "rng": {"python": random.getstate(), "numpy": _numpy_state(),
                    "torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                    "noise": self.noise.get_state(), "binarizer": self.binarizer.get_state()},
        }

    def restore(self, payload: dict[str, Any], path: Path) -> None:
        load_weights(self.model, payload, path)
        self.optimizer.load_state_dict(payload["optimizer"])
        rng = payload["rng"]
        random.setstate(rng["python"])
        _set_numpy_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.shuffle.set_state(rng["shuffle"])
        self.noise.set_state(rng["noise"])
        self.binarizer.set_state(rng["binarizer"])
        self.epoch, self.step = payload["epoch"], payload["step"]
        self.best_val_loss = payload["best_val_loss"]
        self.history = list(payload["history"])
        partial = payload.get("partial")
        device = next(self.model.parameters()).device
        self.partial = EpochProgress.from_dict(partial, device) if partial else None


def train(config: Config, out: str | Path | None = None, *, force: bool = False,
          progress: bool | None = None, on_epoch_end: EpochCallback | None = None) -> Path:
    """Train a new run into `out` (default runs/<timestamp>); returns the run directory.

    A directory that already holds a run is refused unless `force` (then it is replaced).
    """
    run_dir = Path(out) if out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if holds_run(run_dir) and not force:
        raise VaelabError(f"{run_dir} already holds a run; continue it with `vaelab train "
                          f"--resume {run_dir}`, pick another --out, or pass --force to replace it")
    device = resolve_device(config.device)
    train_split, val_split = load_data(config)
    _make_run_dir(run_dir)
    with run_lock(run_dir):
        if force:
            _clear_run(run_dir)
        elif holds_run(run_dir):  # another process started a run here since the check
            raise VaelabError(f"{run_dir} already holds a run; pass --force to replace it")
        state = TrainingState.fresh(config, device)
        _fit(state, train_split, val_split, run_dir, progress, on_epoch_end)
    return run_dir


def resume(run_dir: str | Path, *, progress: bool | None = None,
           on_epoch_end: EpochCallback | None = None, **changes: Any) -> Path:
    """Continue RUN_DIR from last.pt with its saved config; `changes` may set epochs (to
    train further), data_dir or device."""
    run_dir = Path(run_dir)
    require_checkpoint(run_dir / LAST)
    with run_lock(run_dir):
        payload = load_checkpoint(run_dir / LAST)
        refused = sorted(set(changes) - set(RESUMABLE_CHANGES))
        if refused:
            raise VaelabError(f"a resumed run keeps its settings; cannot change "
                              f"{', '.join(refused)} (only {', '.join(RESUMABLE_CHANGES)}); "
                              "start a new run instead")
        config = config_from_checkpoint(payload, run_dir).replace(**changes)
        if config.epochs < payload["epoch"]:
            raise VaelabError(f"{run_dir} has already trained {payload['epoch']} epochs; "
                              f"--epochs must be at least that, got {config.epochs}")
        device = resolve_device(config.device)
        train_split, val_split = load_data(config)
        state = TrainingState.fresh(config, device)
        state.restore(payload, run_dir / LAST)
        _fit(state, train_split, val_split, run_dir, progress, on_epoch_end)
    return run_dir


def load_data(config: Config) -> tuple[Split, Split]:
    """The seed's split: the 60,000 training images, the 10,000 test images as validation."""
    return (load_split(config.dataset, "train", config.data_dir, config.limit_train),
            load_split(config.dataset, "val", config.data_dir, config.limit_val))


def training_images(config: Config, split: Split) -> torch.Tensor:
    """What the model learns from: grayscale (the seed's), or binarized once (static)."""
    return binarize(split.images, config.seed + 1) if config.binarize == "static" else split.images


def validation_images(config: Config, split: Split) -> torch.Tensor:
    """Grayscale runs are measured on grayscale images; binarized runs on the one fixed
    binarization every binarized run shares (TEST_BINARIZATION_SEED)."""
    if config.binarize == "none":
        return split.images
    return binarize(split.images, TEST_BINARIZATION_SEED)


def kl_weight(beta: float, warmup_epochs: int, step: int, steps_per_epoch: int) -> float:
    """The KL term's weight at optimizer step `step` (0-based): rises linearly from 0 to
    beta over the first `warmup_epochs` epochs, then stays at beta (Sønderby et al. 2016)."""
    if warmup_epochs == 0:
        return beta
    return beta * min(1.0, step / (warmup_epochs * steps_per_epoch))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaelabError(f"cannot create the run directory {run_dir} ({err.strerror}); "
                          "choose a writable --out") from None


def _clear_run(run_dir: Path) -> None:
    """--force: remove the previous run's files (only ever called holding the run's lock)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / FIGURES, ignore_errors=True)


class _StopSignals:
    """The first SIGINT or SIGTERM becomes a request to stop after the current batch (so the
    checkpoint is consistent); a second one acts as it normally would."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._request_stop)
        return self

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


@dataclass
class EpochProgress:
    """How far the current epoch got: saved in last.pt when training stops mid-epoch."""

    order: torch.Tensor  # this epoch's permutation of the training images
    totals: Totals
    next_batch: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order.cpu(), "sums": self.totals.sums.cpu(),
                "images": self.totals.images, "next_batch": self.next_batch,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, saved: dict[str, Any], device: torch.device) -> EpochProgress:
        totals = Totals(device)
        totals.sums.copy_(saved["sums"])
        totals.images = saved["images"]
        return cls(saved["order"].to(device), totals, saved["next_batch"], saved["seconds"])


def _fit(state: TrainingState, train_split: Split, val_split: Split, run_dir: Path,
         progress: bool | None, on_epoch_end: EpochCallback | None) -> None:
    config = state.config
    device = next(state.model.parameters()).device
    train_images = training_images(config, train_split).to(device)
    val_images = validation_images(config, val_split).to(device)
    show = sys.stderr.isatty() if progress is None else progress
    check_writable(run_dir, 2 * _checkpoint_bytes(state, len(train_images)))
    write_config(run_dir, config)
    write_metrics(run_dir, state.history)  # matches last.pt even after a SIGKILL
    with _StopSignals() as stop:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            result = _train_epoch(state, train_images, epoch, show, stop)
            if result is None:  # stopped mid-epoch: state.partial says where
                save_checkpoint(run_dir / LAST, state.checkpoint(), __version__)
                raise _interrupted(stop.signum, run_dir, epoch, state.partial.next_batch)
            train_totals, started = result
            val_totals = evaluate_elbo(state.model, val_images, seed=config.seed)
            row = {"epoch": epoch, "step": state.step,
                   **train_totals.means("train", config.batch_size),
                   **val_totals.means("val", config.batch_size),
                   "beta": _kl_weight_now(state, len(train_images)),
                   "lr": state.optimizer.param_groups[0]["lr"],
                   "epoch_seconds": time.perf_counter() - started}
            _end_epoch(state, row, run_dir)
            if on_epoch_end:
                on_epoch_end(row)
            if stop.signum is not None and epoch < config.epochs:
                raise _interrupted(stop.signum, run_dir, epoch + 1, 0)


def _train_epoch(state: TrainingState, images: torch.Tensor, epoch: int, show: bool,
                 stop: _StopSignals) -> tuple[Totals, float] | None:
    """Train one epoch (or the rest of a saved one); None if a stop was requested first."""
    size = state.config.batch_size
    batches = math.ceil(len(images) / size)
    progress = state.partial or EpochProgress(
        torch.randperm(len(images), generator=state.shuffle).to(images.device),
        Totals(images.device))
    state.partial = None
    started = time.perf_counter() - progress.seconds
    state.model.train()
    bar = tqdm(total=batches, initial=progress.next_batch, desc=f"epoch {epoch}/"
               f"{state.config.epochs}", unit="batch", disable=not show, leave=False,
               dynamic_ncols=True)
    with bar:
        for batch in range(progress.next_batch, batches):
            x = to_float(images[progress.order[batch * size:(batch + 1) * size]])
            if state.config.binarize == "dynamic":
                x = torch.bernoulli(x, generator=state.binarizer)
            terms = _step(state, x, epoch, batch, _kl_weight_now(state, len(images)))
            progress.totals.add(terms)
            bar.update()
            if show and state.step % 50 == 0:
                bar.set_postfix(loss=f"{terms.loss.mean().item():.2f}")
            if stop.signum is not None and batch + 1 < batches:
                progress.next_batch, progress.seconds = batch + 1, time.perf_counter() - started
                state.partial = progress
                return None
    return progress.totals, started


def _kl_weight_now(state: TrainingState, train_images: int) -> float:
    steps_per_epoch = math.ceil(train_images / state.config.batch_size)
    return kl_weight(state.config.beta, state.config.kl_warmup, state.step, steps_per_epoch)


def _step(state: TrainingState, x: torch.Tensor, epoch: int, batch: int,
          beta: float) -> ELBOTerms:
    """One Adam step on the batch's mean objective; refuses to apply a non-finite update."""
    config, model, optimizer = state.config, state.model, state.optimizer
    if config.iw_train == 1:
        logits, mu, logvar = model(x, state.noise)
        terms = elbo_terms(logits, x, mu, logvar, beta)
    else:
        mu, logvar = model.encode(x)
        z = model.sample_latents(mu, logvar, config.iw_train, state.noise)
        terms = iwae_terms(model.decode_latents(z), x, z, mu, logvar, beta)
    objective = terms.objective.mean()
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
    if not torch.isfinite(objective.detach() + grad_norm):
        what = "loss" if not torch.isfinite(objective) else "gradient"
        raise NonFiniteLoss(
            f"the {what} became {(objective.detach() + grad_norm).item()} in epoch {epoch}, "
            f"batch {batch + 1}; last.pt and best.pt keep epoch {state.epoch}. Start a new "
            f"run with a lower --lr (now {config.lr:g}) or with --grad-clip (e.g. 100)")
    optimizer.step()
    state.step += 1
    return terms


def _interrupted(signum: int, run_dir: Path, epoch: int, batch: int) -> TrainingInterrupted:
    where = f"before epoch {epoch}" if batch == 0 else f"in epoch {epoch} after batch {batch}"
    return TrainingInterrupted(
        f"stopped by {signal.Signals(signum).name} {where}; {run_dir / LAST} holds the run so "
        f"far. Resume with: vaelab train --resume {run_dir}", signum)


def _checkpoint_bytes(state: TrainingState, train_images: int) -> int:
    """Roughly what one checkpoint takes: weights and Adam's two moments, the epoch order."""
    return 3 * 4 * sum(p.numel() for p in state.model.parameters()) + 8 * train_images + 65536


def _end_epoch(state: TrainingState, row: dict[str, float], run_dir: Path) -> None:
    """Checkpoint, then metrics.csv from the checkpoint's own history, so the CSV never holds
    an epoch the checkpoint lacks. best.pt is written first: if the process dies between
    the two saves, resuming from the previous last.pt repeats this epoch identically."""
    state.epoch = row["epoch"]
    state.history.append(row)
    improved = row["val_loss"] < state.best_val_loss
    state.best_val_loss = min(state.best_val_loss, row["val_loss"])
    payload = state.checkpoint()
    if improved:
        save_checkpoint(run_dir / BEST, payload, __version__)
    save_checkpoint(run_dir / LAST, payload, __version__)
    write_metrics(run_dir, state.history)


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss


def _set_numpy_state(saved: tuple) -> None:
    name, keys, pos, has_gauss, gauss = saved
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
