"""What several benches do alike: evaluate a run (or reuse the eval.json that already measured
it), and the small CNN that judges drawn digits."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vaelab.checkpoint import load_checkpoint
from vaelab.data import Split, to_float
from vaelab.evaluate import write_evaluation


def evaluate_or_reuse(run: Path, samples: int, limit: int | None, data: str | None = None
                      ) -> dict:
    """The run's eval.json if it measured this best checkpoint with these settings, else a new
    evaluation (K = `samples` on the first `limit` test images)."""
    cached = run / "eval.json"
    epoch = load_checkpoint(run / "best.pt")["epoch"]
    if cached.is_file():
        result = json.loads(cached.read_text())
        if (result["iw_samples"], result["epoch"]) == (samples, epoch) and \
                result["images"] == min(limit or 10_000, 10_000):
            return result
    return write_evaluation(str(run), samples, limit=limit, data=data, progress=False)[0]


def classifier(channels: int = 1) -> nn.Module:
    """Two conv blocks and a linear layer, for 28x28 digits in grey or colour."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 10))


def train_classifier(train: Split, test: Split, epochs: int = 3, seed: int = 0
                     ) -> tuple[nn.Module, float]:
    """Fit on `train` with Adam (batches of 128); returns the model and its test accuracy."""
    torch.manual_seed(seed)
    model = classifier(train.images.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train)).split(128):
            loss = nn.functional.cross_entropy(model(to_float(train.images[batch])),
                                               train.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    predicted = confidences(model, to_float(test.images)).argmax(1)
    return model, (predicted == test.labels).double().mean().item()


@torch.inference_mode()
def confidences(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, 10), a thousand images at a time."""
    return torch.cat([model(part).softmax(1) for part in images.split(1000)])
