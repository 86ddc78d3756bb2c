"""The five disentanglement scores on representations whose answer is known (the issue's
list): the true factors themselves, the factors under a random rotation, one factor copied
into two units, and noise. The data are a small factorial set (every combination of four
factors once, as dSprites holds its five), so "fix a factor, draw the rest" is exact.

Bounds come from the quantities' own errors: MI estimated from N draws of two independent
discrete variables with a and b values is biased upwards by about (a-1)(b-1)/(2N) nats
(Miller 1955); an accuracy over n test points has standard error sqrt(p(1-p)/n).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaelab.disentanglement import (
    GroundTruth,
    Protocol,
    entropy,
    mutual_information,
    scores,
)
from vaelab.errors import VaelabError

SIZES = (3, 6, 10, 8)  # every factor fits MIG's 20 bins, so binning keeps it whole
F = len(SIZES)
PROTOCOL = Protocol(batch=32, train_points=2000, test_points=600, variance_images=1000,
                    repeats=1)


def factorial() -> GroundTruth:
    grids = np.meshgrid(*[np.arange(size) for size in SIZES], indexing="ij")
    return GroundTruth(np.stack([grid.ravel() for grid in grids], axis=1),
                       tuple(f"f{k}" for k in range(F)))


TRUTH = factorial()
STANDARD = (TRUTH.factors - TRUTH.factors.mean(0)) / TRUTH.factors.std(0)


def true_factors(index: np.ndarray) -> np.ndarray:
    return STANDARD[index]


def rotated(index: np.ndarray) -> np.ndarray:
    rotation, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(F, F)))
    return STANDARD[index] @ rotation


def copied(index: np.ndarray) -> np.ndarray:
    return np.concatenate([STANDARD[index], STANDARD[index][:, :1]], 1)


def noise(index: np.ndarray) -> np.ndarray:
    return np.random.default_rng(index.sum() % 2 ** 32).normal(size=(len(index), F))


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {name: {metric: {key: value["mean"] for key, value in found.items()}
                   for metric, found in scores(TRUTH, represent, PROTOCOL, seed=1).items()}
            for name, represent in (("true", true_factors), ("rotated", rotated),
                                    ("copied", copied), ("noise", noise))}


def mi_bias(n: int) -> float:
    """Five times the largest upward bias of an MI estimate between a factor and a unit that
    shares nothing with it (a unit binned into at most 20 values), over the factor's entropy:
    how far from its exact value a MIG may land."""
    worst = max((size - 1) * (20 - 1) / (2 * n) / math.log(size) for size in SIZES)
    return 5 * worst


def accuracy_error(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)


def test_the_true_factors_score_the_maximum(results):
    true = results["true"]
    # a fixed factor's unit is exactly constant in a batch: both classifiers are always right
    assert true["beta_vae"]["eval_accuracy"] == 1.0
    assert true["factor_vae"]["eval_accuracy"] == 1.0
    # each unit is its factor (binned without loss): I = H, and nothing about the others
    assert true["mig"]["score"] >= 1 - mi_bias(PROTOCOL.train_points)
    # the trees split each factor on its own unit alone: importances one-hot
    assert true["dci"]["disentanglement"] > 0.99 and true["dci"]["completeness"] > 0.99
    assert true["dci"]["informativeness_test"] == 1.0
    assert true["sap"]["score"] > results["noise"]["sap"]["score"] + 0.1


def test_a_rotation_keeps_the_information_and_loses_the_axes(results):
    rotated, true = results["rotated"], results["true"]
    assert rotated["mig"]["score"] < true["mig"]["score"] - 0.3
    assert rotated["dci"]["disentanglement"] < true["dci"]["disentanglement"] - 0.3
    assert rotated["dci"]["completeness"] < true["dci"]["completeness"] - 0.3
    assert rotated["dci"]["informativeness_train"] > 0.9  # an invertible map: nothing lost


def test_a_factor_copied_into_two_units_loses_its_gap(results):
    copied, true = results["copied"], results["true"]
    # the copied factor's two units share the same information: its gap is exactly 0, the
    # others' as with the true factors
    expected = (F - 1) / F
    assert abs(copied["mig"]["score"] - expected) <= mi_bias(PROTOCOL.train_points)
    assert copied["sap"]["score"] < true["sap"]["score"]
    # each unit still names one factor, but one factor now spreads over two units
    assert copied["dci"]["disentanglement"] > 0.99
    assert copied["dci"]["completeness"] < true["dci"]["completeness"] - 0.02


def test_noise_scores_near_zero(results):
    found = results["noise"]
    chance = 1 / F
    for metric in ("beta_vae", "factor_vae"):
        assert abs(found[metric]["eval_accuracy"] - chance) <= accuracy_error(
            chance, PROTOCOL.test_points), metric
    assert found["mig"]["score"] <= mi_bias(PROTOCOL.train_points)
    assert found["sap"]["score"] <= accuracy_error(0.5, PROTOCOL.test_points)
    assert found["dci"]["disentanglement"] < 0.1 and found["dci"]["completeness"] < 0.1
    assert found["dci"]["informativeness_test"] <= max(1 / s for s in SIZES) + \
        accuracy_error(0.5, PROTOCOL.test_points)


def test_fixing_a_factor_draws_only_images_with_its_value_and_every_other_combination():
    rng = np.random.default_rng(0)
    k = np.full(20_000, 2)
    value = np.full(20_000, 7)
    drawn = TRUTH.fixed(k, value, rng)
    assert (TRUTH.factors[drawn, 2] == 7).all()
    others = {tuple(row) for row in TRUTH.factors[drawn][:, [0, 1, 3]]}
    assert len(others) == 3 * 6 * 8  # with 20,000 draws of 144 combinations, all appear


def test_mutual_information_is_the_entropy_on_the_diagonal_for_the_factors_themselves():
    index = TRUTH.random(3000, np.random.default_rng(0))
    factors = TRUTH.factors[index]
    information = mutual_information(factors.astype(float), factors, bins=20)
    assert np.allclose(information.diagonal(), entropy(factors), rtol=0, atol=1e-12)
    assert np.allclose(entropy(factors), [math.log(s) for s in SIZES], atol=0.05)


def test_the_spread_is_over_repeated_draws():
    found = scores(TRUTH, noise, Protocol(batch=8, train_points=200, test_points=100,
                                          variance_images=200, repeats=3), metrics=("mig",))
    runs = found["mig"]["score"]["runs"]
    assert len(runs) == 3 and len(set(runs)) == 3
    assert found["mig"]["score"]["sd"] == pytest.approx(np.std(runs, ddof=1), rel=1e-12)


def test_scaled_protocols_keep_at_least_two_points():
    small = Protocol().scaled(1e-9)
    assert small.train_points == small.test_points == small.variance_images == 2
    assert Protocol().scaled(0.5).train_points == 5000


def test_a_factor_that_never_changes_is_refused_by_name():
    factors = np.stack([np.arange(10) % 3, np.zeros(10, dtype=int)], axis=1)
    with pytest.raises(VaelabError, match="colour"):
        GroundTruth(factors, ("shape", "colour"))
