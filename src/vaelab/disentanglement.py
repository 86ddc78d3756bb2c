"""How well a representation's units follow the data's factors of variation: the five scores of
disentanglement_lib (Locatello et al. 2019), with its protocols, so that numbers compare.

    beta_vae   Higgins et al. 2017: accuracy of a linear classifier that names the factor held
               fixed across a batch of pairs from the mean |r(x1) - r(x2)| of the pairs
    factor_vae Kim & Mnih 2018: accuracy of a majority vote that names the factor held fixed
               from the unit whose variance (over the global one) is smallest in the batch
    mig        Chen et al. 2018: per factor, the gap between the two units that share the
               most information with it, over its entropy (units binned in 20 bins)
    sap        Kumar et al. 2018: per factor, the gap between the two units that predict it
               best alone (a linear SVM's test accuracy)
    dci        Eastwood & Williams 2018: gradient-boosted trees predict each factor from all
               units; their importances give disentanglement (each unit one factor) and
               completeness (each factor one unit); their accuracy, informativeness

A representation is a function from image indices to codes (the posterior means, as
disentanglement_lib uses), so that a metric draws what it needs (pairs with a factor in common,
batches with one factor fixed) from the data and encodes only those images. "Fix factor k,
draw the rest" draws among the images whose factor k has that value: for data holding every
combination (dSprites) that is the ground-truth process itself; for other factor-labelled data
it is the data's own distribution of the other factors. Every score is computed `repeats`
times on fresh draws, and reported as its mean and standard deviation over them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import VaelabError

Represent = Callable[[np.ndarray], np.ndarray]  # image indices (n,) -> codes (n, units)


@dataclass(frozen=True)
class Protocol:
    """Sample sizes: disentanglement_lib's defaults (its gin configs for the 2019 study)."""

    batch: int = 64                  # beta_vae and factor_vae: pairs or images per point
    train_points: int = 10_000       # classifier training points (mig and dci: images)
    test_points: int = 5_000
    variance_images: int = 10_000    # factor_vae's global variance estimate
    min_scale: float = 0.05          # factor_vae: units whose sd is below this are inactive
    bins: int = 20                   # mig: each unit's histogram
    repeats: int = 3                 # fresh draws of everything, for the spread

    def scaled(self, share: float) -> Protocol:
        """Every sample size times `share` (at least 2 points each), for quick looks."""
        return Protocol(self.batch, *(max(2, round(n * share)) for n in
                                      (self.train_points, self.test_points,
                                       self.variance_images)),
                        self.min_scale, self.bins, self.repeats)


class GroundTruth:
    """The data's factor indices (N, F), and draws from them."""

    def __init__(self, factors: np.ndarray, names: tuple[str, ...]):
        constant = [name for name, column in zip(names, factors.T) if len(np.unique(column)) < 2]
        if constant:  # no score is defined for them (zero entropy, one class)
            raise VaelabError(f"factor(s) {', '.join(constant)} take a single value; drop them "
                              "from the data's factors")
        self.factors, self.names = factors, names
        self.orders = [np.argsort(column, kind="stable") for column in factors.T]
        self.counts = [np.bincount(column) for column in factors.T]
        self.starts = [np.concatenate([[0], np.cumsum(count)[:-1]]) for count in self.counts]

    @property
    def count(self) -> int:
        return len(self.factors)

    def random(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.count, size=n)

    def fixed(self, k: np.ndarray, value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each pair (k[i], value[i]), an image drawn among those whose factor k[i] has
        that value."""
        out = np.empty(len(k), dtype=np.int64)
        for factor in np.unique(k):
            rows = np.flatnonzero(k == factor)
            values = value[rows]
            offsets = (rng.random(len(rows)) * self.counts[factor][values]).astype(np.int64)
            out[rows] = self.orders[factor][self.starts[factor][values] + offsets]
        return out


def beta_vae_score(truth: GroundTruth, represent: Represent, rng: np.random.Generator,
                   protocol: Protocol) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        k = rng.integers(truth.factors.shape[1], size=n)
        first = truth.random(n * protocol.batch, rng)
        held = np.repeat(k, protocol.batch)
        second = truth.fixed(held, truth.factors[first, held], rng)
        difference = np.abs(represent(first) - represent(second))
        return difference.reshape(n, protocol.batch, -1).mean(1), k

    x_train, y_train = points(protocol.train_points)
    x_test, y_test = points(protocol.test_points)
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    return {"train_accuracy": model.score(x_train, y_train),
            "eval_accuracy": model.score(x_test, y_test)}


def factor_vae_score(truth: GroundTruth, represent: Represent, rng: np.random.Generator,
                     protocol: Protocol) -> dict[str, float]:
    scale = represent(truth.random(protocol.variance_images, rng)).std(0, ddof=1)
    active = np.flatnonzero(scale >= protocol.min_scale)
    if not len(active):
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "active_units": 0}
    factors = truth.factors.shape[1]

    def votes(n: int) -> np.ndarray:
        k = rng.integers(factors, size=n)
        value = truth.factors[truth.random(n, rng), k]
        batch = truth.fixed(np.repeat(k, protocol.batch), np.repeat(value, protocol.batch), rng)
        codes = represent(batch).reshape(n, protocol.batch, -1)[:, :, active]
        chosen = np.argmin(codes.var(1, ddof=1) / scale[active] ** 2, axis=1)
        table = np.zeros((len(active), factors), dtype=np.int64)
        np.add.at(table, (chosen, k), 1)
        return table

    train, test = votes(protocol.train_points), votes(protocol.test_points)
    named = train.argmax(1)  # each unit's factor: the one it was most often the argmin for
    rows = np.arange(len(active))
    return {"train_accuracy": train[rows, named].sum() / train.sum(),
            "eval_accuracy": test[rows, named].sum() / test.sum(),
            "active_units": len(active)}


def mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int) -> np.ndarray:
    """MI in nats between each unit, binned into `bins` equal-width bins, and each factor:
    (units, factors), the matrix MIG reads."""
    from sklearn.metrics import mutual_info_score

    binned = [np.digitize(unit, np.histogram(unit, bins)[1][:-1]) for unit in codes.T]
    return np.array([[mutual_info_score(factor, unit) for factor in factors.T]
                     for unit in binned])


def entropy(factors: np.ndarray) -> np.ndarray:
    """Each factor's entropy in nats over the drawn images (N, F) -> (F,)."""
    from sklearn.metrics import mutual_info_score

    return np.array([mutual_info_score(factor, factor) for factor in factors.T])


def mig(truth: GroundTruth, represent: Represent, rng: np.random.Generator,
        protocol: Protocol) -> dict[str, float]:
    index = truth.random(protocol.train_points, rng)
    factors = truth.factors[index]
    information = mutual_information(represent(index), factors, protocol.bins)
    return {"score": float(np.mean(_top_gap(information) / entropy(factors)))}


def _train_and_test(truth: GroundTruth, represent: Represent, rng: np.random.Generator,
                    protocol: Protocol) -> tuple[np.ndarray, ...]:
    """Random training and test images, and their codes."""
    train = truth.random(protocol.train_points, rng)
    test = truth.random(protocol.test_points, rng)
    return train, test, represent(train), represent(test)


def sap(truth: GroundTruth, represent: Represent, rng: np.random.Generator,
        protocol: Protocol) -> dict[str, float]:
    from sklearn.svm import LinearSVC

    train, test, codes_train, codes_test = _train_and_test(truth, represent, rng, protocol)
    accuracy = np.zeros((codes_train.shape[1], truth.factors.shape[1]))
    for i in range(codes_train.shape[1]):
        for j in range(truth.factors.shape[1]):
            svm = LinearSVC(C=0.01, class_weight="balanced")
            svm.fit(codes_train[:, i:i + 1], truth.factors[train, j])
            accuracy[i, j] = svm.score(codes_test[:, i:i + 1], truth.factors[test, j])
    return {"score": float(np.mean(_top_gap(accuracy)))}


def _top_gap(table: np.ndarray) -> np.ndarray:
    """Per column (factor) of a (units, factors) table, its largest value minus its second
    (a single unit's second is 0)."""
    top = np.sort(np.vstack([table, np.zeros_like(table[:1])]), axis=0)[::-1]
    return top[0] - top[1]


def dci(truth: GroundTruth, represent: Represent, rng: np.random.Generator,
        protocol: Protocol) -> dict[str, float]:
    from sklearn.ensemble import GradientBoostingClassifier

    train, test, codes_train, codes_test = _train_and_test(truth, represent, rng, protocol)
    importance = np.zeros((codes_train.shape[1], truth.factors.shape[1]))
    train_accuracy, test_accuracy = [], []
    for j in range(truth.factors.shape[1]):
        trees = GradientBoostingClassifier(random_state=int(rng.integers(2 ** 31)))
        trees.fit(codes_train, truth.factors[train, j])
        importance[:, j] = np.abs(trees.feature_importances_)
        train_accuracy.append(trees.score(codes_train, truth.factors[train, j]))
        test_accuracy.append(trees.score(codes_test, truth.factors[test, j]))
    return {"disentanglement": _weighted_certainty(importance),
            "completeness": _weighted_certainty(importance.T),
            "informativeness_train": float(np.mean(train_accuracy)),
            "informativeness_test": float(np.mean(test_accuracy))}


def _weighted_certainty(importance: np.ndarray) -> float:
    """Sum over rows of (1 - the entropy of the row's importances, in base the row's length),
    weighted by the row's share of all importance: DCI's disentanglement for (units, factors),
    its completeness for (factors, units)."""
    if importance.shape[1] == 1:  # one factor (or one unit): trivially certain
        return 1.0
    if importance.sum() == 0:
        importance = np.ones_like(importance)
    share = importance / np.maximum(importance.sum(1, keepdims=True), 1e-300)
    logs = np.log(np.where(share > 0, share, 1)) / np.log(importance.shape[1])
    certainty = 1 + (share * logs).sum(1)
    return float(np.sum(certainty * importance.sum(1) / importance.sum()))


METRICS = {"beta_vae": beta_vae_score, "factor_vae": factor_vae_score, "mig": mig, "sap": sap,
           "dci": dci}


def scores(truth: GroundTruth, represent: Represent, protocol: Protocol = Protocol(),
           seed: int = 0, metrics: tuple[str, ...] = tuple(METRICS)) -> dict[str, dict]:
    """Every metric `protocol.repeats` times on fresh draws: {metric: {value: {"mean",
    "sd", "runs"}}}."""
    if truth.factors.shape[1] < 1:
        raise VaelabError("the data have no factors of variation to score against")
    results: dict[str, dict] = {}
    for offset, name in enumerate(metrics):
        runs = [METRICS[name](truth, represent, np.random.default_rng([seed, offset, repeat]),
                              protocol) for repeat in range(protocol.repeats)]
        results[name] = {key: {"mean": float(np.mean([run[key] for run in runs])),
                               "sd": float(np.std([run[key] for run in runs], ddof=1))
                               if len(runs) > 1 else 0.0,
                               "runs": [float(run[key]) for run in runs]}
                         for key in runs[0]}
    return results
