"""Shared fixtures: the real MNIST files and a tiny real-data config that runs in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vaelab import Config
from vaelab.data import find_files

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$VAELAB_DATA_DIR, else ../shared/data beside the checkout. Tests never write into it."""
    path = Path(os.environ.get("VAELAB_DATA_DIR") or REPO.parent / "shared" / "data")
    if None in find_files("mnist", path).values():
        pytest.exit(f"MNIST files not found under {path}; set VAELAB_DATA_DIR to a folder "
                    "holding MNIST/raw/*.gz", returncode=4)
    return path


@pytest.fixture()
def tiny_config(data_dir: Path) -> Config:
    """The real code path at a tiny size: 512 training and 256 validation images, CPU."""
    return Config(data_dir=str(data_dir), limit_train=512, limit_val=256, epochs=1,
                  device="cpu")
