"""A run directory and every file in it: config.json, metrics.csv, last.pt, best.pt,
eval.json, eval-train.json, report.html, figures/ and tensorboard/. This module alone names them.

`load_run(RUN_DIR)` rebuilds the model and its config from the directory alone.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .checkpoint import atomic_open, config_from_checkpoint, load_checkpoint, load_weights
from .config import Config, resolve_device
from .data import Split, validation_split
from .errors import CheckpointError, DamagedCheckpoint, VaelabError
from .generate import class_index
from .models import build_model, learns_prior
from .models.pixelcnn import prior_for
from .pretrained import is_export, read_export

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
LAST = "last.pt"
BEST = "best.pt"
REPORT = "report.html"
PRIOR = "prior.pt"  # a discrete autoencoder's prior over its codes (vaelab train-prior)
FIGURES = "figures"
TENSORBOARD = "tensorboard"  # --logger tensorboard's event files (board.py)
EVAL_FILES = {"test": "eval.json", "train": "eval-train.json"}  # by `vaelab evaluate --split`
RUN_FILES = (CONFIG_FILE, METRICS_FILE, LAST, BEST, REPORT, PRIOR, *EVAL_FILES.values())
LOCK = ".lock"
TEMPORARY = ".*.tmp"  # atomic_open's files: left behind only by a process killed mid-write



def metric_columns(term_names: tuple[str, ...], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """metrics.csv's columns for a model reporting `term_names` (a single-level VAE's recon
    and kl; a hierarchy's per-group KLs too): nats per image, except *_batch_loss, the
    reference notebook's convention, each batch's summed loss averaged over batches (what its
    table shows)."""
    return ("epoch", "step", "train_loss", "val_loss", *(f"train_{t}" for t in term_names),
            *(f"val_{t}" for t in term_names), "train_batch_loss", "val_batch_loss", "beta",
            "lr", "train_seconds", "epoch_seconds", *extra)


def term_columns(row: dict[str, float]) -> list[str]:
    """The validation columns of a metrics row beyond the ELBO's (val_loss, val_recon, val_kl),
    in the model's order: a hierarchy's per-group KLs (val_kl_1, ...), a family's own terms
    (val_mi, val_tc, ...)."""
    shared = {"val_loss", "val_recon", "val_kl", "val_batch_loss"}
    return [key for key in row if key.startswith("val_") and key not in shared]


@dataclass
class Run:
    """A trained model with what made it: `model` is in eval mode on `device`."""

    path: Path
    config: Config
    model: torch.nn.Module  # a model family's (models/interface.py)
    epoch: int
    metrics: list[dict[str, float]]
    device: torch.device
    checkpoint: str = "best"  # which file the model came from, and its SHA-256:
    checkpoint_sha256: str = ""  # what an evaluation records, so it is never shown for another
    data: dict | None = None  # what it trained on: split sizes, shape, classes (None: older)

    @property
    def classes(self) -> tuple[str, ...]:
        """The names of the classes it trained on (empty for unlabelled data)."""
        return tuple(self.data["classes"]) if self.data else ()

    def label(self, name: str | int | None) -> int | None:
        """A class asked for by name or index -> its index, for a conditional run; None
        stays None. An unconditional run refuses any label."""
        if name is None:
            return None
        if not self.model.conditional:
            raise VaelabError(f"{self.path} is not conditional, so it cannot be asked for a "
                              "class; drop --label, or train with --conditional")
        return class_index(self.classes, name)


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best",
             device: str | None = "cpu") -> Run:
    """Rebuild a run's model from RUN_DIR/best.pt (or last.pt); device None = the run's own.
    A folder written by `vaelab export` is read as the run it came from (export.py)."""
    path = Path(run_dir)
    if is_export(path):
        run = load_exported(path, device)
        if checkpoint != run.checkpoint:  # it holds one checkpoint's weights
            raise CheckpointError(f"{path} holds the weights of the run's {run.checkpoint}.pt "
                                  f"only; drop --checkpoint {checkpoint}")
        return run
    if not path.is_dir():
        raise CheckpointError(f"no run directory at {path}; train one with "
                              f"`vaelab train --out {path}`")
    try:
        payload = load_checkpoint(checkpoint_path(path, checkpoint))
    except DamagedCheckpoint as err:
        raise with_advice(err, path, checkpoint, resuming=False) from None
    config = config_from_checkpoint(payload, path)
    target = resolve_device(device or config.device)
    model = build_model(config)
    load_weights(model, payload, path)
    model.to(target, memory_format=config.torch_memory_format).eval()
    run = Run(path, config, model, payload["epoch"], read_metrics(path), target, checkpoint,
              payload["sha256"], payload.get("data"))
    attach_prior(run)
    return run


def attach_prior(run: Run) -> None:
    """RUN/prior.pt onto a discrete autoencoder, if it models this checkpoint's codes (another
    checkpoint's codes mean other things: then sampling says to train it again)."""
    path = run.path / PRIOR
    if not learns_prior(run.model) or not path.is_file():
        return
    payload = load_checkpoint(path)
    if payload["autoencoder_sha256"] != run.checkpoint_sha256:
        log.warning("%s models the codes of another checkpoint than %s.pt: not used (train it "
                    "again with `vaelab train-prior %s --force`)", path, run.checkpoint,
                    run.path)
        return
    prior = prior_for(run.model, payload["config"])
    prior.load_state_dict(payload["model"])
    run.model.prior = prior.to(run.device).eval()


def load_exported(folder: Path, device: str | None = "cpu") -> Run:
    """A folder written by `vaelab export` (read by pretrained.py) as a Run."""
    exported = read_export(folder)
    target = resolve_device(device or exported.config.device)
    model = exported.model.to(target, memory_format=exported.config.torch_memory_format)
    return Run(folder, exported.config, model, exported.epoch, read_metrics(folder), target,
               exported.checkpoint, exported.weights_sha256, exported.data)


def validation_of(run: Run, data_dir: str | os.PathLike | None = None,
                  data: str | os.PathLike | None = None) -> Split:
    """The run's whole validation set. A folder that changed since training moves the held-out
    split, so its figures may show training images: that gets a warning."""
    val = validation_split(run.config, data_dir, data)
    then = run.data
    if run.config.data and then and run.config.limit_val is None and \
            (then["val"], tuple(then["classes"])) != (len(val), val.classes):
        log.warning("the run's data changed since training (%d validation images then, %d now):"
                    " its held-out split may now include training images", then["val"], len(val))
    return val


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    return run_dir / (BEST if checkpoint == "best" else LAST)


def with_advice(err: DamagedCheckpoint, run_dir: Path, checkpoint: str,
                resuming: bool) -> CheckpointError:
    """A damaged checkpoint's one line, completed with what to do: use the run's other
    checkpoint if it is intact (read now, to say so only if it is), else start again."""
    other = "best" if checkpoint == "last" else "last"
    again = f"start again with `vaelab train --out {run_dir} --force`"
    try:
        epoch = load_checkpoint(checkpoint_path(run_dir, other))["epoch"]
    except CheckpointError:
        return CheckpointError(f"{err}; {checkpoint_path(run_dir, other).name} cannot stand in "
                               f"for it: {again}")
    intact = f"{checkpoint_path(run_dir, other)} (epoch {epoch}) is intact"
    if resuming:
        return CheckpointError(f"{err}; {intact}: copy it over {checkpoint_path(run_dir, LAST)} "
                               f"to resume from epoch {epoch}, or {again}")
    return CheckpointError(f"{err}; {intact}: pass --checkpoint {other}, or {again}")


def eval_path(run_dir: Path, split: str) -> Path:
    return run_dir / EVAL_FILES[split]


def clear_run(run_dir: Path) -> None:
    """--force: remove every file the previous run wrote (call it holding the run's lock)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for folder in (FIGURES, TENSORBOARD):
        shutil.rmtree(run_dir / folder, ignore_errors=True)
    remove_temporaries(run_dir)


def remove_temporaries(run_dir: Path) -> None:
    """Half-written files of a process killed mid-save; the files they were replacing are
    intact. Only called under the run's lock, so no live writer owns them."""
    for stale in run_dir.glob(TEMPORARY):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN/.lock while training writes into RUN. The lock is an flock, which the OS
    drops when its process dies however it dies, so a dead run's lock is simply taken over."""
    try:
        import fcntl
    except ImportError:  # not POSIX: run unlocked rather than not at all
        yield
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _take(fcntl, fd, run_dir)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def check_unlocked(run_dir: Path) -> None:
    """Refuse a run another process holds, before anything else about it is read: a live run
    may not have written its first checkpoint yet. The lock is only tested, never created."""
    try:
        import fcntl
        fd = os.open(run_dir / LOCK, os.O_RDWR)
    except (ImportError, OSError):  # not POSIX, or no lock file: nobody holds it
        return
    try:
        _take(fcntl, fd, run_dir)
    finally:
        os.close(fd)  # closing drops the test's own lock


def _take(fcntl, fd: int, run_dir: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        raise VaelabError(f"{run_dir} is in use by another vaelab process (pid {holder}); "
                          "wait for it to finish or stop it, or choose another --out") from None


def check_writable(run_dir: Path, nbytes: int) -> None:
    """Write and delete `nbytes` in RUN before training, so an unwritable or full folder is
    reported now, not after the first epoch."""
    probe = run_dir / ".write-probe"
    try:
        with probe.open("wb") as file:
            file.write(bytes(nbytes))
            file.flush()
            os.fsync(file.fileno())
    except OSError as err:
        problem = "the disk is full" if err.errno == errno.ENOSPC else err.strerror
        raise VaelabError(f"cannot write {nbytes / 1e6:.1f} MB of checkpoints into {run_dir} "
                          f"({problem}); free space or choose another --out") from None
    finally:
        probe.unlink(missing_ok=True)


def holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def write_config(run_dir: Path, config: Config) -> None:
    with atomic_open(run_dir / CONFIG_FILE) as file:
        json.dump(config.to_dict(), file, indent=2)
        file.write("\n")


def write_metrics(run_dir: Path, rows: list[dict[str, float]], columns: tuple[str, ...]
                  ) -> None:
    """Rewrite metrics.csv whole (it is small), so it always matches the checkpoint's history."""
    with atomic_open(run_dir / METRICS_FILE, "w") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [{key: _number(key, value) for key, value in row.items()}
                for row in csv.DictReader(file)]


def _number(column: str, text: str) -> float:
    if column in ("epoch", "step", "skipped_updates"):
        return int(text)
    return float(text) if text else math.nan
