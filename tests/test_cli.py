"""The command line: output of a real run, and one-line errors for each bad input."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import cli


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(code, err, *words):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture()
def quick(data_dir):
    return ["--data-dir", str(data_dir), "--limit-train", "256", "--limit-val", "128",
            "--device", "cpu", "--quiet"]


def test_train_prints_a_row_per_epoch_and_resumes(capsys, quick, tmp_path):
    code, out, _ = cli(capsys, "train", "--out", str(tmp_path / "run"), "--epochs", "2", *quick)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["epoch", "train_loss", "val_loss"]
    assert [line.split()[0] for line in lines[1:3]] == ["1", "2"]
    assert lines[-2] == f"run saved in {tmp_path / 'run'}"
    code, out, _ = cli(capsys, "train", "--resume", str(tmp_path / "run"), "--epochs", "3",
                       "--quiet")
    assert code == 0  # the earlier epochs are shown again for context, then the new one
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["1", "2", "3"]


@pytest.mark.parametrize("flag, value, words", [
    ("--batch-size", "0", ["batch_size", "at least 1"]),
    ("--lr", "-1", ["lr", "> 0"]),
    ("--lr", "nan", ["lr", "finite"]),
    ("--latent-dim", "0", ["latent_dim", "at least 1"]),
    ("--dataset", "cifar10", ["--dataset", "invalid choice", "cifar10"]),
    ("--batch-size", "many", ["--batch-size", "invalid int value"]),
])
def test_impossible_hyperparameters(capsys, tmp_path, flag, value, words):
    code, _, err = cli(capsys, "train", "--out", str(tmp_path / "run"), flag, value)
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "run").exists()


def test_missing_data_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_MIRRORS", "http://127.0.0.1:9/")
    code, _, err = cli(capsys, "train", "--out", str(tmp_path / "run"),
                       "--data-dir", str(tmp_path / "empty"))
    assert_one_line_error(code, err, "mnist: train-images-idx3-ubyte[.gz]", "not found",
                          "--data-dir")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "empty").exists()  # the failed download created nothing there


def test_corrupt_data_file(capsys, data_dir, tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz"):
        os.symlink(data_dir / "MNIST" / "raw" / name, tmp_path / "data" / name)
    (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    code, _, err = cli(capsys, "train", "--out", str(tmp_path / "run"),
                       "--data-dir", str(tmp_path / "data"))
    assert_one_line_error(code, err, "t10k-labels-idx1-ubyte.gz", "unreadable")


def test_existing_run_is_never_silently_overwritten(capsys, quick, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, "train", "--out", str(run), *quick)[0] == 0
    before = snapshot(run)
    code, _, err = cli(capsys, "train", "--out", str(run), *quick)
    assert_one_line_error(code, err, "already holds a run", "--resume", "--force")
    assert snapshot(run) == before
    assert cli(capsys, "train", "--out", str(run), "--force", "--seed", "3", *quick)[0] == 0
    assert (run / "last.pt").read_bytes() != before[run / "last.pt"]


def test_resume_needs_a_checkpoint(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "train", "--resume", str(tmp_path / "empty"))
    assert_one_line_error(code, err, "no checkpoint at", "last.pt")


@pytest.mark.parametrize("content, words", [
    (lambda good: good[: len(good) // 2], ["not a loadable vaelab checkpoint"]),
    (lambda good: b"garbage" * 100, ["not a loadable vaelab checkpoint"]),
    ("foreign", ["not a vaelab checkpoint"]),
])
def test_resume_refuses_damaged_or_foreign_checkpoints(capsys, quick, tmp_path, content, words):
    run = tmp_path / "run"
    assert cli(capsys, "train", "--out", str(run), *quick)[0] == 0
    if content == "foreign":
        torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, run / "last.pt")
    else:
        (run / "last.pt").write_bytes(content((run / "last.pt").read_bytes()))
    before = snapshot(run)
    code, _, err = cli(capsys, "train", "--resume", str(run), "--epochs", "2")
    assert_one_line_error(code, err, str(run / "last.pt"), *words)
    assert snapshot(run) == before


def test_resume_refuses_changed_hyperparameters(capsys, quick, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, "train", "--out", str(run), *quick)[0] == 0
    code, _, err = cli(capsys, "train", "--resume", str(run), "--lr", "0.1")
    assert_one_line_error(code, err, "cannot change lr")
    code, _, err = cli(capsys, "train", "--resume", str(run), "--epochs", "0")
    assert_one_line_error(code, err, "epochs", "at least 1")


def test_real_process_exits_nonzero_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vaelab", "train", "--out", str(tmp_path),
                             "--lr", "nan"], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("vaelab: error: lr = nan")
