"""TensorBoard logs of a training run (`--logger tensorboard`), in RUN/tensorboard/.

Each optimizer step: the objective and every term the model names, as means over the whole
global batch (under torchrun the ranks add them up), the learning rate and the gradient norm,
tagged `step/...`. Each epoch: the metrics row (`train/...`, `val/...`, `epoch/...`, the same
numbers as metrics.csv) and two image grids, the same validation images reconstructed and the
same prior noise decoded, so that the pictures of successive epochs compare. Steps count
optimizer updates, as metrics.csv's `step` column does.

A resumed run opens its writer with `purge_step`, the first step last.pt does not hold: events
that a killed process wrote beyond its last checkpoint are then dropped by TensorBoard's
readers, and the steps replayed after the resume take their place, so no step is shown twice
or lost. Events are flushed before every checkpoint, so each step a checkpoint holds is on
disk. Rank 0 alone writes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid

from . import distributed, generate
from .errors import VaelabError
from .runs import TENSORBOARD

PICTURES = 16  # images in each epoch's grids

INSTALL = ("--logger tensorboard needs TensorBoard, which is not installed: pip install "
           "'vaelab[tensorboard]' (or pip install tensorboard)")


def require_tensorboard() -> None:
    """The one-line refusal, before a run folder is touched, when TensorBoard is missing."""
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs the package)
    except ImportError:
        raise VaelabError(INSTALL) from None


class Board:
    """RUN/tensorboard's writer, for the writing rank of a run that logs there."""

    def __init__(self, run_dir: Path, first_step: int, images: torch.Tensor,
                 labels: torch.Tensor | None, seed: int, model: torch.nn.Module):
        from torch.utils.tensorboard import SummaryWriter

        # a fresh run's purge (from step 1) drops nothing: no events are there yet
        self.writer = SummaryWriter(run_dir / TENSORBOARD, purge_step=first_step)
        self.images, self.labels = images[:PICTURES], _first(labels)
        self.noise = generate.prior_noise(model, PICTURES, seed)
        self.sample_labels = torch.arange(PICTURES) % model.classes if model.classes else None

    def step(self, step: int, means: dict[str, float], lr: float, grad_norm: float) -> None:
        for name, value in means.items():
            self.writer.add_scalar(f"step/{name}", value, step)
        self.writer.add_scalar("step/lr", lr, step)
        self.writer.add_scalar("step/grad_norm", grad_norm, step)

    def epoch(self, row: dict[str, float], model: torch.nn.Module) -> None:
        """The epoch's metrics row and pictures, then a flush: called before the checkpoint."""
        step = row["step"]
        for key, value in row.items():
            if key not in ("epoch", "step", "threads"):
                self.writer.add_scalar(_tag(key), value, step)
        was_training = model.training
        model.eval()
        decoded = generate.reconstruct(model, self.images, labels=self.labels)
        originals = self.images.float() / 255
        self.writer.add_image("reconstructions", _grid(torch.cat([originals, decoded])), step)
        if generate.can_sample(model):  # a discrete autoencoder's prior comes after training
            samples = generate.from_noise(model, self.noise, labels=self.sample_labels)
            self.writer.add_image("samples", _grid(samples), step)
        model.train(was_training)
        self.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class NoBoard:
    """What a run that does not log (or a rank that does not write) logs to: nothing."""

    def step(self, *args) -> None:
        pass

    def epoch(self, *args) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_board(logger: str, run_dir: Path, first_step: int, images: torch.Tensor,
               labels: torch.Tensor | None, seed: int, model: torch.nn.Module
               ) -> Board | NoBoard:
    if logger != "tensorboard" or not distributed.is_writer():
        return NoBoard()
    return Board(run_dir, first_step, images[:PICTURES].cpu(), labels, seed, model)


def global_means(terms: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    """Each per-image term's mean over the global batch of `count` images (every rank must
    call it: under torchrun it adds the ranks' sums)."""
    names = list(terms)
    sums = distributed.all_sum(torch.stack([terms[name].detach().float().sum()
                                            for name in names]))
    return dict(zip(names, (sums / count).tolist()))


def _tag(column: str) -> str:
    """metrics.csv's column -> a TensorBoard tag: val_kl -> val/kl; lr, beta, the timings ->
    epoch/lr, ..."""
    split, _, term = column.partition("_")
    if split in ("train", "val") and term != "seconds":
        return f"{split}/{term}"
    return f"epoch/{column}"


def _first(labels: torch.Tensor | None) -> torch.Tensor | None:
    return labels[:PICTURES].cpu() if labels is not None else None


def _grid(images: torch.Tensor) -> torch.Tensor:
    return make_grid(images.clamp(0, 1), nrow=PICTURES, pad_value=0.5)
