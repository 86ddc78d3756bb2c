"""Reading a folder written by `vaelab export` (export.py writes it): its config.json and its
model.safetensors, checked, into a model. JSON and safetensors only: no pickle, so reading a
folder never runs code from it. runs.load_run turns what this reads into a Run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .checkpoint import file_sha256, load_weights
from .config import Config
from .errors import CheckpointError, VaelabError
from .models import build_model
from .models.pixelcnn import prior_for

FORMAT = "vaelab-export"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
DESCRIPTION = "config.json"  # the name a Hugging Face folder gives its config


class Exported(NamedTuple):
    """An exported folder's model (on the CPU, in eval mode) and what config.json says of it."""

    config: Config
    model: torch.nn.Module
    epoch: int
    checkpoint: str         # the run's checkpoint it came from: "best" or "last"
    weights_sha256: str
    data: dict | None


def is_export(path: Path) -> bool:
    return (path / WEIGHTS).is_file()


def read_export(path: Path) -> Exported:
    """The folder's model; any defect of the folder is a one-line CheckpointError."""
    description = _read_description(path)
    try:
        config = Config.from_dict(description["config"])
    except (VaelabError, TypeError) as err:
        raise CheckpointError(f"{path / DESCRIPTION}: its config is not valid for this vaelab "
                              f"({err})") from None
    model = build_model(config)
    if "prior" in description:  # a discrete autoencoder's prior: its weights are "prior.*"
        model.prior = prior_for(model, description["prior"])
    load_weights(model, {"model": _read_weights(path, description),
                         "vaelab_version": description.get("vaelab_version")}, path / WEIGHTS)
    return Exported(config, model.eval(), description["epoch"],
                    description["source"]["checkpoint"], description["weights_sha256"],
                    description["data"])


def _read_description(path: Path) -> dict[str, Any]:
    if not (path / DESCRIPTION).is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not an exported vaelab model (it needs {WEIGHTS} and "
                              f"{DESCRIPTION}); write one with `vaelab export RUN {path}`")
    try:
        description = json.loads((path / DESCRIPTION).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / DESCRIPTION} is damaged: not JSON ({err})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise CheckpointError(f"{path / DESCRIPTION} was not written by `vaelab export` (no "
                              f"'{FORMAT}' marker); vaelab loads only its own exports")
    if description.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: export format {description.get('format_version')} "
                              f"(vaelab {description.get('vaelab_version')}); this vaelab "
                              f"reads format {FORMAT_VERSION}")
    missing = [key for key in ("config", "data", "epoch", "weights_sha256", "source")
               if key not in description]
    if missing:
        raise CheckpointError(f"{path / DESCRIPTION} lacks {', '.join(missing)}; it is damaged: "
                              "export the run again")
    return description


def _read_weights(path: Path, description: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = path / WEIGHTS
    if file_sha256(file) != description["weights_sha256"]:
        raise CheckpointError(f"{file} is damaged: its SHA-256 is not the one {DESCRIPTION} "
                              "records; export the run again")
    try:
        return load_file(file)
    except Exception as err:  # noqa: BLE001 - safetensors' own error types vary by version
        raise CheckpointError(f"{file} is not a readable safetensors file ({err})") from None
