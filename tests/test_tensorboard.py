"""`--logger tensorboard`: the event files, read back with TensorBoard's own reader, hold every
term a model names, the learning rate, the gradient norm and each epoch's pictures, with one
event per step across a resume (a replayed stretch included), and logging changes nothing
about the run itself. Under torchrun: tests/test_distributed.py."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli

from vaelab import Config, train
from vaelab.runs import LAST, TENSORBOARD, read_metrics
from vaelab.training import resume

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

STEPS_PER_EPOCH = 4  # 256 training images in batches of 64
TIMINGS = ("train_seconds", "epoch_seconds")


def events(run: Path) -> EventAccumulator:
    """Every event under RUN/tensorboard, as TensorBoard shows them (0: keep all)."""
    reader = EventAccumulator(str(run / TENSORBOARD), size_guidance={"scalars": 0, "images": 0})
    reader.Reload()
    return reader


def scalars(reader: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in reader.Scalars(tag)]


def config(data_dir: Path, **changes) -> Config:
    return Config(**{"data_dir": str(data_dir), "limit_train": 256, "limit_val": 128,
                     "epochs": 2, "device": "cpu", **changes})


def float32_close(logged: float, exact: float) -> bool:
    """An event stores a float64 metric as float32: within half an ulp of float32."""
    return math.isclose(logged, exact, rel_tol=2.0 ** -24, abs_tol=0.0)


@pytest.fixture(scope="module")
def logged(data_dir, tmp_path_factory) -> Path:
    """beta-TCVAE (it names terms beyond the ELBO's: mi, tc, dwkl), 2 epochs, logged."""
    return train(config(data_dir, model="beta-tcvae", logger="tensorboard"),
                 tmp_path_factory.mktemp("tb") / "run", progress=False)


def test_every_term_the_model_names_each_step_and_epoch(logged):
    reader = events(logged)
    model_terms = ("loss", "objective", "recon", "kl", "mi", "tc", "dwkl")
    steps = list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for name in (*model_terms, "lr", "grad_norm"):
        assert [step for step, _ in scalars(reader, f"step/{name}")] == steps, name
    assert all(float32_close(value, 1e-3) for _, value in scalars(reader, "step/lr"))
    assert all(math.isfinite(value) and value > 0 for _, value in scalars(reader,
                                                                         "step/grad_norm"))
    rows = read_metrics(logged)
    for column in rows[0]:
        if column in ("epoch", "step"):
            continue
        split, _, term = column.partition("_")
        tag = f"{split}/{term}" if split in ("train", "val") and term != "seconds" else \
            f"epoch/{column}"
        logged_values = scalars(reader, tag)
        assert [step for step, _ in logged_values] == [row["step"] for row in rows], tag
        for (_, value), row in zip(logged_values, rows):
            assert float32_close(value, row[column]), (tag, value, row[column])


def test_each_epoch_logs_reconstructions_and_samples(logged):
    reader = events(logged)
    side = 28 + 2  # make_grid pads each image by 2
    for tag, rows in (("reconstructions", 2), ("samples", 1)):
        pictures = reader.Images(tag)
        assert [picture.step for picture in pictures] == [STEPS_PER_EPOCH,
                                                          2 * STEPS_PER_EPOCH]
        assert (pictures[0].width, pictures[0].height) == (16 * side + 2, rows * side + 2)
        assert pictures[0].encoded_image_string != pictures[1].encoded_image_string  # it learns


def test_logging_changes_nothing_about_the_run(logged, data_dir, tmp_path):
    quiet = train(config(data_dir, model="beta-tcvae"), tmp_path / "run", progress=False)
    assert not (quiet / TENSORBOARD).exists()
    for with_log, without in zip(read_metrics(logged), read_metrics(quiet)):
        assert {k: v for k, v in with_log.items() if k not in TIMINGS} == \
               {k: v for k, v in without.items() if k not in TIMINGS}


def test_a_resume_leaves_one_event_per_step_even_over_a_replayed_stretch(data_dir, tmp_path):
    """Epoch 1, then epoch 2, then last.pt put back to epoch 1 (as if the process had been
    killed after logging epoch 2 but before its checkpoint) and epoch 2 trained again: the
    replayed steps are shown once, and every step equals the uninterrupted run's."""
    whole = train(config(data_dir, logger="tensorboard"), tmp_path / "whole", progress=False)
    run = train(config(data_dir, logger="tensorboard", epochs=1), tmp_path / "run",
                progress=False)
    shutil.copy(run / LAST, tmp_path / "epoch1.pt")
    resume(run, epochs=2, progress=False)
    shutil.copy(tmp_path / "epoch1.pt", run / LAST)
    resume(run, epochs=2, progress=False)
    assert len(list((run / TENSORBOARD).glob("events.out.tfevents.*"))) == 3
    ours, theirs = events(run), events(whole)
    for tag in ("step/loss", "step/grad_norm", "val/loss"):
        assert scalars(ours, tag) == scalars(theirs, tag), tag
    assert [picture.step for picture in ours.Images("samples")] == [4, 8]


def test_tensorboard_can_be_turned_on_when_resuming(data_dir, tmp_path):
    run = train(config(data_dir, epochs=1), tmp_path / "run", progress=False)
    resume(run, epochs=2, logger="tensorboard", progress=False)
    assert [step for step, _ in scalars(events(run), "step/loss")] == [5, 6, 7, 8]


def test_without_tensorboard_the_flag_is_one_line_and_nothing_is_written(
        capsys, data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    code, out, err = cli(capsys, "train", "--out", tmp_path / "run", "--logger", "tensorboard",
                         "--limit-train", 64, "--limit-val", 64, "--quiet")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "pip install 'vaelab[tensorboard]'" in err
    assert not (tmp_path / "run").exists()


def test_step_means_are_of_the_whole_batch(logged):
    """step/loss is the batch's mean negative ELBO: the epoch's training loss is the
    image-weighted mean of its steps' (4 full batches of 64 here)."""
    reader, rows = events(logged), read_metrics(logged)
    losses = [value for _, value in scalars(reader, "step/loss")]
    for epoch, row in enumerate(rows):
        mean = sum(losses[epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]) / \
            STEPS_PER_EPOCH
        # four float32 roundings of values of this size, and the CSV's float64 sum
        assert mean == pytest.approx(row["train_loss"],
                                     rel=4 * torch.finfo(torch.float32).eps)
