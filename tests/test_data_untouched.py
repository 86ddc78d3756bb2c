"""Nothing is ever written into the data: a copied IDX folder and a copied folder of images keep
every file's size, modification time and SHA-256, and gain nothing, through train, resume,
evaluate, every figure command, report and the explorer's set-up."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from helpers import cli
from test_images import write_mnist_folder

from vaelab import load_run
from vaelab.runs import validation_of

FIGURES = [["reconstruct"], ["reconstruct", "--sample"], ["sample", "--n", "4"],
           ["interpolate", "--from", "3", "--to", "5"], ["latent"], ["curves"]]


def snapshot(folder: Path) -> dict:
    """Every entry under `folder`: its size, mtime_ns and SHA-256 (folders: their mtime)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        status = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        entries[str(path.relative_to(folder))] = (status.st_size if path.is_file() else None,
                                                   status.st_mtime_ns, digest)
    return entries


@pytest.fixture(scope="module")
def copied_idx(data_dir, tmp_path_factory):
    """The four MNIST files, copied (with their times) into a folder of this test's own."""
    raw = tmp_path_factory.mktemp("idx") / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (Path(data_dir) / "MNIST" / "raw").glob("*-ubyte.gz"):
        shutil.copy2(path, raw / path.name)
    return raw.parents[1]


@pytest.fixture(scope="module")
def copied_images(data_dir, tmp_path_factory):
    return write_mnist_folder(data_dir, tmp_path_factory.mktemp("images") / "pngs",
                              "--limit-train", 160, "--limit-val", 40)


def every_command(capsys, run, out, data_flags):
    """train, resume, evaluate, every figure, report and the explorer's set-up, on `run`."""
    quick = ["--epochs", "1", "--latent-dim", "2", "--device", "cpu", "--quiet"]
    commands = [["train", "--out", run, *data_flags, *quick],
                ["train", "--resume", run, "--epochs", "2", "--quiet"],
                ["evaluate", run, "--iw-samples", "2", "--limit", "8", "--quiet"],
                *[[name, run, *args, "--out", out] for name, *args in FIGURES],
                ["report", run]]
    for command in commands:
        code, _, err = cli(capsys, *command)
        assert code == 0, (command, err)
    from vaelab.explore import Explorer

    loaded = load_run(run)
    Explorer(loaded, validation_of(loaded))


@pytest.mark.parametrize("source", ["idx", "images"])
def test_no_command_writes_into_the_data(capsys, tmp_path, monkeypatch, copied_idx,
                                         copied_images, source):
    folder = copied_idx if source == "idx" else copied_images
    monkeypatch.setenv("VAELAB_DATA_DIR", str(copied_idx))
    flags = ["--data-dir", copied_idx, "--limit-train", "160", "--limit-val", "40"] \
        if source == "idx" else ["--data", copied_images]
    before = snapshot(folder)
    assert len(before) > 4 and os.access(folder, os.W_OK)  # writable: a write would land
    every_command(capsys, tmp_path / "run", tmp_path / "figures", flags)
    assert snapshot(folder) == before
