"""The reference's table on the full data set (minutes, so `make test-slow`, not `make test`)."""

from __future__ import annotations

import pytest

from vaelab import Config, train
from vaelab.config import from_recipe
from vaelab.runs import read_metrics

SEED_FINAL_VAL_BATCH = 6563.28  # the reference's epoch-10 validation loss, its per-batch convention
SEED_FINAL_VAL_NATS = 103.04  # the same figure in nats per image


@pytest.mark.slow
def test_the_seed_defaults_reach_the_seeds_final_validation_loss(data_dir, tmp_path):
    run = train(Config(data_dir=str(data_dir), device="cpu"), tmp_path / "run", progress=False)
    metrics = read_metrics(run)
    assert len(metrics) == 10
    assert metrics[-1]["val_batch_loss"] <= SEED_FINAL_VAL_BATCH
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 5


@pytest.mark.slow
def test_the_fast_recipe_reaches_it_in_two_epochs(data_dir, tmp_path):
    config = from_recipe("fast", data_dir=str(data_dir), device="cpu")
    metrics = read_metrics(train(config, tmp_path / "run", progress=False))
    assert len(metrics) == 2 and metrics[-1]["val_loss"] <= SEED_FINAL_VAL_NATS
