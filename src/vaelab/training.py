"""The training loop: Adam on the per-image negative ELBO, a checkpoint per epoch, resumable.

Every random stream has its own generator (shuffling, reparameterization noise), and all
of them go into the checkpoint, so on a CPU a resumed run equals an uninterrupted one bit
for bit. The loop prints nothing but its tqdm bar; each epoch's row goes to `on_epoch_end`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import distributed, threads
from .board import Board, NoBoard, global_means, open_board, require_tensorboard
from .checkpoint import (
    config_from_checkpoint,
    load_checkpoint,
    require_checkpoint,
    save_checkpoint,
)
from .config import Config, check_shape, resolve_device
from .data import (
    Split,
    load_data,
    to_float,
    training_images,
    validation_images,
    with_data_shape,
)
from .errors import DamagedCheckpoint, NonFiniteLoss, TrainingInterrupted, VaelabError
from .evaluate import evaluate_elbo
from .losses import Totals
from .runs import (
    BEST,
    LAST,
    check_unlocked,
    check_writable,
    clear_run,
    holds_run,
    metric_columns,
    remove_temporaries,
    run_lock,
    with_advice,
    write_config,
    write_metrics,
)
from .stop_signals import StopSignals
from .training_state import EpochProgress, TrainingState
from .version import __version__

EpochCallback = Callable[[dict[str, float]], None]

# Fields that only say where data lives or what runs the maths: a resume may change them.
RESUMABLE_CHANGES = ("epochs", "data_dir", "data", "device", "threads", "ddp_backend",
                     "ddp_timeout", "logger")


def train(config: Config, out: str | Path | None = None, *, force: bool = False,
          progress: bool | None = None, on_epoch_end: EpochCallback | None = None) -> Path:
    """Train a new run into `out` (default runs/<timestamp>); returns the run directory.

    A directory that already holds a run is refused unless `force` (then it is replaced).
    Under torchrun, rank 0 alone checks, creates and locks the directory (see distributed).
    """
    run_dir = Path(out) if out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    device = resolve_device(config.device)
    distributed.check_batch(config.batch_size)
    _check_logger(config)
    with distributed.process_group(device, config.ddp_backend, config.ddp_timeout) as device:
        distributed.from_writer(lambda: _refuse_existing(run_dir, force))
        config = _absolute_data(config)
        train_split, val_split = distributed.writer_first(lambda: load_data(config))
        config = with_data_shape(config, train_split)
        check_shape(config.image_shape, config.arch)  # an array's size is known only now
        distributed.from_writer(lambda: _make_run_dir(run_dir))
        with distributed.writer_holds(lambda: run_lock(run_dir)):
            distributed.from_writer(lambda: _clear_or_refuse(run_dir, force))
            state = TrainingState.fresh(config, device)
            with threads.restored():
                _fit(state, train_split, val_split, run_dir, progress, on_epoch_end)
    return run_dir


def _check_logger(config: Config) -> None:
    if config.logger == "tensorboard":
        require_tensorboard()


def _refuse_existing(run_dir: Path, force: bool) -> None:
    if holds_run(run_dir) and not force:
        if not (run_dir / LAST).is_file():
            raise VaelabError(f"{run_dir} holds a run stopped before its first checkpoint; "
                              "pass --force to start it again, or pick another --out")
        raise VaelabError(f"{run_dir} already holds a run; continue it with `vaelab train "
                          f"--resume {run_dir}`, pick another --out, or pass --force to replace it")


def _clear_or_refuse(run_dir: Path, force: bool) -> None:
    if force:
        clear_run(run_dir)
    elif holds_run(run_dir):  # another process started a run here since the check
        raise VaelabError(f"{run_dir} already holds a run; pass --force to replace it")


def resume(run_dir: str | Path, *, progress: bool | None = None,
           on_epoch_end: EpochCallback | None = None,
           on_resumed: Callable[[list[dict[str, float]]], None] | None = None,
           **changes: Any) -> Path:
    """Continue RUN_DIR from last.pt with its saved config; `changes` may set epochs (to
    train further), data_dir, device, threads or the ddp settings. `on_resumed` gets the
    epochs done so far once the run is locked and its checkpoint restored.

    Under torchrun every rank reads last.pt (on several nodes RUN must be on a shared
    filesystem), at any world size; rank 0 alone locks and writes RUN."""
    run_dir = Path(run_dir)
    try:  # a live run is named by its lock, whatever it has written yet; every rank sees it
        check_unlocked(run_dir)
    except VaelabError as err:
        raise distributed.agreed(err) from None
    require_checkpoint(run_dir / LAST)
    check_resume_changes(changes)
    payload = _load_last(run_dir)  # atomic renames: never a half-written file
    config = _resumed_config(payload, run_dir, changes)
    device = resolve_device(config.device)
    distributed.check_batch(config.batch_size)
    _check_logger(config)
    with distributed.process_group(device, config.ddp_backend, config.ddp_timeout) as device, \
            distributed.writer_holds(lambda: run_lock(run_dir)):
        if distributed.is_writer():
            remove_temporaries(run_dir)
        train_split, val_split = distributed.writer_first(lambda: load_data(config))
        _check_same_data(payload, train_split, val_split)
        state = TrainingState.fresh(config, device)
        state.restore(payload, run_dir / LAST)
        if on_resumed:
            on_resumed(state.history)
        if state.partial:
            distributed.keep_writer_share(state.partial.totals)
        with threads.restored():
            _fit(state, train_split, val_split, run_dir, progress, on_epoch_end)
    return run_dir


def _load_last(run_dir: Path) -> dict[str, Any]:
    """last.pt, or a one-line error that says whether best.pt can take its place."""
    try:
        return load_checkpoint(run_dir / LAST)
    except DamagedCheckpoint as err:
        raise with_advice(err, run_dir, "last", resuming=True) from None


def restarted(out: str | Path) -> str | None:
    """What a group that `torchrun --max-restarts` restarted does with its --out: "resume"
    the run this launch checkpointed there (last.pt records torchrun's launch id), or
    "start" it again if it died before its first checkpoint (nothing is lost); None when
    not restarted, or when last.pt is another launch's (then the usual refusal applies)."""
    if distributed.restart_count() == 0:
        return None
    last = Path(out) / LAST
    if not last.is_file():
        return "start"
    return "resume" if load_checkpoint(last).get("launch") == distributed.launch_id() else None


def check_resume_changes(changes: dict[str, Any]) -> None:
    """Refuse, before anything is read or printed, a change a resumed run cannot take."""
    refused = sorted(set(changes) - set(RESUMABLE_CHANGES))
    if refused:
        raise VaelabError(f"a resumed run keeps its settings; cannot change {', '.join(refused)} "
                          f"(only {', '.join(RESUMABLE_CHANGES)}); start a new run instead")


def _absolute_data(config: Config) -> Config:
    """--data is recorded absolute: later commands may run from another folder."""
    if config.data is None:
        return config
    return config.replace(data=str(Path(config.data).expanduser().absolute()))


def _resumed_config(payload: dict[str, Any], run_dir: Path, changes: dict[str, Any]) -> Config:
    saved = config_from_checkpoint(payload, run_dir)
    config = _absolute_data(saved.replace(**changes))
    if config.epochs < payload["epoch"]:
        raise VaelabError(f"{run_dir} has already trained {payload['epoch']} epochs; "
                          f"--epochs must be at least that, got {config.epochs}")
    if config.schedule == "onecycle" and config.epochs != saved.epochs:
        raise VaelabError(f"{run_dir} follows a one-cycle schedule fitted to its "
                          f"{saved.epochs} epochs; to train longer, start a new run")
    return config


def data_summary(train: Split, val: Split) -> dict[str, Any]:
    """What a checkpoint records of its data, so that a resume on changed data is refused,
    and the data's factors of variation, if it has any (what the disentanglement metrics
    need)."""
    summary = {"train": len(train), "val": len(val), "shape": list(train.images.shape[1:]),
               "classes": list(train.classes)}
    if train.factor_names:  # only then: older runs' summaries stay equal to new ones
        summary["factors"] = list(train.factor_names)
    return summary


def _check_same_data(payload: dict[str, Any], train: Split, val: Split) -> None:
    saved, now = payload.get("data"), data_summary(train, val)
    if saved is not None and saved != now:
        changed = ", ".join(f"{key} {saved[key]} -> {now[key]}" for key in now
                            if saved.get(key) != now[key])
        raise VaelabError(f"the run's data changed since it was trained ({changed}); resume "
                          "needs the same images: restore them, or start a new run")


def kl_weight(beta: float, warmup_epochs: int, step: int, steps_per_epoch: int) -> float:
    """The KL term's weight at optimizer step `step` (0-based): rises linearly from 0 to
    beta over the first `warmup_epochs` epochs, then stays at beta (Sønderby et al. 2016)."""
    if warmup_epochs == 0:
        return beta
    return beta * min(1.0, step / (warmup_epochs * steps_per_epoch))


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VaelabError(f"cannot create the run directory {run_dir} ({err.strerror}); "
                          "choose a writable --out") from None


def _fit(state: TrainingState, train_split: Split, val_split: Split, run_dir: Path,
         progress: bool | None, on_epoch_end: EpochCallback | None) -> None:
    config = state.config
    device = next(state.model.parameters()).device
    train_images = training_images(config, train_split).to(device)
    val_images = validation_images(config, val_split).to(device)
    train_labels, val_labels = (split.labels.to(device) if config.conditional else None
                                for split in (train_split, val_split))
    show = (sys.stderr.isatty() if progress is None else progress) and distributed.is_writer()
    state.steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    state.data = data_summary(train_split, val_split)
    state.network = distributed.wrap(state.network, device)
    torch.set_num_threads(threads.choose(config.threads, device, lambda: threads.probe_step(
        state, train_images, train_labels)).threads)
    distributed.from_writer(lambda: _start_files(state, run_dir, len(train_images)))
    board = open_board(config.logger, run_dir, state.step + 1, val_images, val_labels,
                       config.seed, state.model)
    with StopSignals() as stop, contextlib.closing(board):
        for epoch in range(state.epoch + 1, config.epochs + 1):
            steps_before, skipped_before = state.step, state.skipped
            result = _train_epoch(state, train_images, train_labels, epoch, show, stop, board)
            if result is None:  # stopped mid-epoch: state.partial says where
                distributed.summed(state.partial.totals)
                board.flush()  # every step the checkpoint holds is on disk
                if distributed.is_writer():
                    save_checkpoint(run_dir / LAST, state.checkpoint(), __version__)
                distributed.barrier()  # no rank exits (and gets its group killed) before the save
                raise _interrupted(stop.signum, run_dir, epoch, state.partial.next_batch)
            _refuse_an_epoch_of_skips(state, epoch, state.step - steps_before,
                                      state.skipped - skipped_before)
            train_totals, started = result
            distributed.summed(train_totals)
            train_seconds = time.perf_counter() - started
            val_totals = evaluate_elbo(state.model, val_images, seed=config.seed,
                                       labels=val_labels)
            row = {"epoch": epoch, "step": state.step,
                   **train_totals.means("train", config.batch_size),
                   **val_totals.means("val", config.batch_size),
                   "beta": _kl_weight_now(state),
                   "lr": state.optimizer.param_groups[0]["lr"], "train_seconds": train_seconds,
                   "epoch_seconds": time.perf_counter() - started,
                   # the checkpoint's history keeps the thread count; metrics.csv does not
                   "threads": torch.get_num_threads()}
            if state.gradient_limits[1] is not None:  # a run that may skip says how often
                row["skipped_updates"] = state.skipped
            board.epoch(row, state.model)  # before the checkpoint: see board.py
            _end_epoch(state, row, run_dir)
            if on_epoch_end:
                on_epoch_end(row)
            if stop.requested() is not None and epoch < config.epochs:
                raise _interrupted(stop.signum, run_dir, epoch + 1, 0)


def _refuse_an_epoch_of_skips(state: TrainingState, epoch: int, steps: int,
                              skipped: int) -> None:
    """A skip threshold below the gradient norms of every step of a finished epoch would leave
    the model as it started while the run looked busy: stop, keeping the last good checkpoint
    (an epoch stopped by a signal is saved and resumed as usual)."""
    if steps and skipped == steps:
        kept = f"last.pt and best.pt keep epoch {state.epoch}" if state.epoch else \
            "nothing was saved"
        raise VaelabError(
            f"every update of epoch {epoch} was skipped: their gradient norms were above "
            f"--grad-skip {state.gradient_limits[1]:g}; {kept}. Raise --grad-skip, or leave "
            "it unset")


def _train_epoch(state: TrainingState, images: torch.Tensor, labels: torch.Tensor | None,
                 epoch: int, show: bool, stop: StopSignals, board: Board | NoBoard
                 ) -> tuple[Totals, float] | None:
    """Train one epoch (or the rest of a saved one); None if a stop was requested first.
    `labels` go with the images to a conditional model (None otherwise)."""
    size = state.config.batch_size
    batches = math.ceil(len(images) / size)
    progress = state.partial or EpochProgress(
        torch.randperm(len(images), generator=state.shuffle).to(images.device),
        Totals(images.device, state.model.term_names))
    state.partial = None
    started = time.perf_counter() - progress.seconds
    state.model.train()
    bar = tqdm(total=batches, initial=progress.next_batch, desc=f"epoch {epoch}/"
               f"{state.config.epochs}", unit="batch", disable=not show, leave=False,
               dynamic_ncols=True)
    with bar:
        for batch in range(progress.next_batch, batches):
            chosen = progress.order[batch * size:(batch + 1) * size]
            x = to_float(images[chosen])
            if state.config.binarize == "dynamic":
                x = torch.bernoulli(x, generator=state.binarizer)
            y = labels[chosen] if labels is not None else None
            terms = _step(state, x, y, epoch, batch, _kl_weight_now(state), board)
            progress.totals.add(terms)
            bar.update()
            if show and state.step % 50 == 0:
                bar.set_postfix(loss=f"{terms['loss'].mean().item():.2f}")
            if stop.requested() is not None and batch + 1 < batches:
                progress.next_batch, progress.seconds = batch + 1, time.perf_counter() - started
                state.partial = progress
                return None
    return progress.totals, started


def _kl_weight_now(state: TrainingState) -> float:
    config = state.config
    return kl_weight(config.beta, config.kl_warmup, state.step, state.steps_per_epoch)


def learning_rate(config: Config, step: int, total_steps: int) -> float:
    """The constant lr, or one-cycle: a cosine rise from lr/25 to lr over the first 30% of
    the steps, then a cosine decay towards lr/10^4, reached at step `total_steps` (one past the
    last step taken, so the last step's lr is a little above it) (Smith & Topin 2019)."""
    if config.schedule == "constant":
        return config.lr
    warmup = 0.3 * total_steps
    if step < warmup:
        low, high, t = config.lr / 25, config.lr, step / warmup
    else:
        low, high, t = config.lr, config.lr / 1e4, (step - warmup) / max(total_steps - warmup, 1)
    return high + (low - high) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def _step(state: TrainingState, x: torch.Tensor, y: torch.Tensor | None, epoch: int,
          batch: int, kl_weight: float, board: Board | NoBoard) -> dict[str, torch.Tensor]:
    """One Adam step on the batch's mean objective; refuses to apply a non-finite update, and
    skips one whose gradient norm is above the run's skip threshold (VDVAE's outliers)."""
    config, network, optimizer = state.config, state.network, state.optimizer
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, state.step, config.epochs * state.steps_per_epoch)
    samples = config.iw_train if config.iw_train > 1 else None
    # The noise of the whole global batch, then this rank's slice (see distributed).
    count, (start, stop) = len(x), distributed.share(len(x))
    noise = state.model.draw_noise(count, state.noise, samples)[..., start:stop, :]
    x = x[start:stop]
    y = y[start:stop] if y is not None else None
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=state.bf16):
        terms = network(x, noise, y, kl_weight, samples)
    objective = distributed.rank_mean(terms["objective"], count)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    clip, skip = state.gradient_limits
    grad_norm = torch.nn.utils.clip_grad_norm_(network.parameters(), clip or math.inf)
    verdict = distributed.all_sum(objective.detach() + grad_norm)  # non-finite on one: on all
    if not torch.isfinite(verdict):
        what = "loss" if not torch.isfinite(objective) else "gradient"
        raise distributed.agreed(NonFiniteLoss(
            f"the {what} became {verdict.item()} in epoch {epoch}, "
            f"batch {batch + 1}; last.pt and best.pt keep epoch {state.epoch}. Start a new "
            f"run with a lower --lr (now {config.lr:g}) or with --grad-clip (e.g. 100)"))
    if skip is not None and grad_norm > skip:  # the norm of the summed gradients: all agree
        state.skipped += 1
    else:
        optimizer.step()
    state.step += 1
    if config.logger != "none":  # every rank: the means are of the global batch
        board.step(state.step, global_means(terms, count), optimizer.param_groups[0]["lr"],
                   grad_norm.item())
    return terms


def _interrupted(signum: int, run_dir: Path, epoch: int, batch: int) -> TrainingInterrupted:
    where = f"before epoch {epoch}" if batch == 0 else f"in epoch {epoch} after batch {batch}"
    return distributed.agreed(TrainingInterrupted(
        f"stopped by {signal.Signals(signum).name} {where}; {run_dir / LAST} holds the run so "
        f"far. Resume with: vaelab train --resume {run_dir}", signum))


def _checkpoint_bytes(state: TrainingState, train_images: int) -> int:
    """Roughly what one checkpoint takes: weights and Adam's two moments, the epoch order."""
    return 3 * 4 * sum(p.numel() for p in state.model.parameters()) + 8 * train_images + 65536


def _start_files(state: TrainingState, run_dir: Path, train_images: int) -> None:
    check_writable(run_dir, 2 * _checkpoint_bytes(state, train_images))
    write_config(run_dir, state.config)
    write_metrics(run_dir, state.history, _columns(state))  # matches last.pt after a SIGKILL


def _end_epoch(state: TrainingState, row: dict[str, float], run_dir: Path) -> None:
    """Checkpoint, then metrics.csv from the checkpoint's own history, so the CSV never holds
    an epoch the checkpoint lacks. best.pt is written first: if the process dies between
    the two saves, resuming from the previous last.pt repeats this epoch identically."""
    state.epoch = row["epoch"]
    state.history.append(row)
    improved = row["val_loss"] < state.best_val_loss  # a global figure: every rank agrees
    state.best_val_loss = min(state.best_val_loss, row["val_loss"])
    if not distributed.is_writer():
        return
    payload = state.checkpoint()
    if improved:
        save_checkpoint(run_dir / BEST, payload, __version__)
    save_checkpoint(run_dir / LAST, payload, __version__)
    write_metrics(run_dir, state.history, _columns(state))


def _columns(state: TrainingState) -> tuple[str, ...]:
    skipping = state.gradient_limits[1] is not None
    return metric_columns(state.model.term_names, ("skipped_updates",) if skipping else ())
