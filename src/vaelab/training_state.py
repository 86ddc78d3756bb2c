"""What a training run changes as it goes, and how it is captured in and restored from a
checkpoint: weights, Adam, every random generator, the epoch, and a part-done epoch."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_weights
from .config import Config
from .distributed import launch_id
from .losses import Totals
from .models import Objective, build_model


@dataclass
class TrainingState:
    """Everything a run changes as it trains; `checkpoint()` captures all of it."""

    config: Config
    model: torch.nn.Module  # a model family's (models/interface.py)
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator   # orders the batches of each epoch (CPU)
    # eps of the reparameterization, and dynamic binarization's draws (on the run's device).
    # Under torchrun every rank holds the same two streams and draws for the whole global
    # batch, keeping its slice: so the checkpoint's one state is every rank's (distributed).
    noise: torch.Generator
    binarizer: torch.Generator
    epoch: int = 0            # completed epochs
    step: int = 0             # optimizer steps taken (skipped ones included)
    skipped: int = 0          # updates skipped for an outlying gradient norm
    best_val_loss: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)
    partial: EpochProgress | None = None  # an epoch stopped part-way
    steps_per_epoch: int = 0  # set once the training set is known
    network: torch.nn.Module | None = None  # what computes the objective (models.Objective),
    # or torch.compile of it, or DistributedDataParallel around either
    bf16: bool = False  # autocast the network's convolutions and matmuls to bfloat16
    data: dict[str, Any] | None = None  # what the run trains on (training.data_summary)

    @classmethod
    def fresh(cls, config: Config, device: torch.device) -> TrainingState:
        set_seed(config.seed)
        model = build_model(config).to(device, memory_format=config.torch_memory_format)
        # The fused kernel does the whole update in one pass, not a loop over the parameters.
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                     fused=device.type in ("cpu", "cuda"))
        shuffle = torch.Generator().manual_seed(config.seed)
        noise = torch.Generator(device=device).manual_seed(config.seed + 1)
        binarizer = torch.Generator(device=device).manual_seed(config.seed + 2)
        compiled = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
        objective = Objective(model)
        return cls(config, model, optimizer, shuffle, noise, binarizer,
                   network=torch.compile(objective) if compiled else objective,
                   bf16=uses_bf16(config.precision, device))

    @property
    def gradient_limits(self) -> tuple[float | None, float | None]:
        """The gradient-norm clip and skip thresholds: the config's, else the family's own."""
        return (self.config.grad_clip or self.model.default_grad_clip,
                self.config.grad_skip or self.model.default_grad_skip)

    def checkpoint(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "step": self.step,
            "skipped": self.skipped,
            "best_val_loss": self.best_val_loss, "history": self.history,
            "partial": self.partial.to_dict() if self.partial else None, "data": self.data,
            "launch": launch_id(),
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
        self.skipped = payload.get("skipped", 0)  # written by vaelab since model families
        self.best_val_loss = payload["best_val_loss"]
        self.history = list(payload["history"])
        partial = payload.get("partial")
        device = next(self.model.parameters()).device
        self.partial = EpochProgress.from_dict(partial, device, self.model.term_names) \
            if partial else None


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
    def from_dict(cls, saved: dict[str, Any], device: torch.device,
                  names: tuple[str, ...]) -> EpochProgress:
        totals = Totals(device, names)
        totals.sums.copy_(saved["sums"])
        totals.images = saved["images"]
        return cls(saved["order"].to(device), totals, saved["next_batch"], saved["seconds"])


def uses_bf16(precision: str, device: torch.device) -> bool:
    """'bf16' always; 'auto' only on a CPU with AVX512-BF16 or AMX, which compute it natively
    (emulated bf16 is slower than fp32). Not on CUDA: this small model is launch-bound there,
    and bf16 did not pay (bench/gpu_check.sh measures it)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cpu" and _cpu_has_native_bf16()


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:  # not Linux: do not guess
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss


def _set_numpy_state(saved: tuple) -> None:
    name, keys, pos, has_gauss, gauss = saved
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
