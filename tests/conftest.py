"""Shared fixtures: the real MNIST files and a tiny real-data config that runs in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vaelab import Config
from vaelab.idx import find_files

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$VAELAB_DATA_DIR, else ../shared/data beside the checkout. Tests never write into it."""
    path = Path(os.environ.get("VAELAB_DATA_DIR") or REPO.parent / "shared" / "data")
    if None in find_files("mnist", path).values():
        pytest.exit(f"MNIST files not found under {path}; set VAELAB_DATA_DIR to a folder "
                    "holding MNIST/raw/*.gz", returncode=4)
    os.environ["VAELAB_DATA_DIR"] = str(path)  # the `vaelab` processes tests start read it too
    return path


@pytest.fixture(scope="session", autouse=True)
def image_cache(tmp_path_factory):
    """Decoded-image caches go to a folder of the session's own, never to ~/.cache (a test
    that counts decodes points VAELAB_CACHE_DIR at a folder of its own)."""
    previous = os.environ.get("VAELAB_CACHE_DIR")
    os.environ["VAELAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if previous is None:
        os.environ.pop("VAELAB_CACHE_DIR", None)
    else:
        os.environ["VAELAB_CACHE_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def one_thread_count():
    """Every run of the suite computes with one thread count (as OMP_NUM_THREADS, which
    subprocesses inherit too), not with what vaelab's thread probe measures: tests compare runs
    number for number, which needs one count, and on a shared machine two probes may choose
    differently. test_threads.py lifts this where it tests the probe. Under pytest-xdist
    (`make test` runs a worker per core) each worker takes its share of torch's threads, so
    that the workers do not fight over the cores."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // workers))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture()
def tiny_config(data_dir: Path) -> Config:
    """The real code path at a tiny size: 512 training and 256 validation images, CPU."""
    return Config(data_dir=str(data_dir), limit_train=512, limit_val=256, epochs=1,
                  device="cpu")


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory) -> Path:
    """A run trained for 300 steps (3 epochs of 6,400 real MNIST images): digits show."""
    from vaelab import train

    config = Config(data_dir=str(data_dir), limit_train=6400, limit_val=1000, epochs=3,
                    device="cpu")
    return train(config, tmp_path_factory.mktemp("runs") / "trained", progress=False)


@pytest.fixture(scope="session")
def conditional_run(data_dir, tmp_path_factory) -> Path:
    """A conditional run trained as trained_run is: 3 epochs of 6,400 real MNIST images."""
    from vaelab import train

    config = Config(data_dir=str(data_dir), limit_train=6400, limit_val=1000, epochs=3,
                    device="cpu", conditional=True)
    return train(config, tmp_path_factory.mktemp("runs") / "conditional", progress=False)


@pytest.fixture(scope="session")
def small_hvae_run(data_dir, tmp_path_factory) -> Path:
    """A small hierarchical VAE, one epoch of 128 images: a second family, quickly."""
    from vaelab import train

    config = Config(data_dir=str(data_dir), model="hvae", hvae_channels=16, limit_train=128,
                    limit_val=64, epochs=1, device="cpu")
    return train(config, tmp_path_factory.mktemp("runs") / "hvae", progress=False)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by Playwright: $VAELAB_CHROMIUM, else Debian's `chromium`,
    else Playwright's own download (`make test` sets one of them up: scripts/ensure-chromium)."""
    import shutil

    from playwright.sync_api import Error, sync_playwright

    executable = os.environ.get("VAELAB_CHROMIUM") or shutil.which("chromium")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        except Error as err:
            pytest.fail(f"no Chromium to test pages in ({str(err).splitlines()[0]}); run "
                        "`make test`, which sets one up, or set VAELAB_CHROMIUM", pytrace=False)
        yield chromium
        chromium.close()
