"""Does a conditional VAE draw the class it is asked for? Measured by a classifier.

Trains (or reuses) two runs at the reference settings on full MNIST, one with --conditional, and a
small convolutional classifier on the training images (its test accuracy is printed: it bounds
how far its verdicts can be trusted). Then, per class, the share of the conditional model's
samples (decoded means of z ~ N(0, I) with that label) the classifier assigns to that class;
beside it, the unconditional model's samples classified freely, as a class histogram (how
evenly it covers the digits). Also draws the manual's class grid, analogies and latent map.

    export VAELAB_DATA_DIR=../shared/data
    python bench/conditional.py                 # the published table (10 epochs each)
    python bench/conditional.py --epochs 1 --samples 100   # a quick look
    python bench/conditional.py --seed 1 --runs runs/cond-seed1 --figures runs/cond-seed1 \
        --json runs/cond-seed1/conditional.json     # another training seed
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from shared import confidences, train_classifier
from torch import nn

import vaelab
from vaelab import generate, plots
from vaelab.data import load_split
from vaelab.runs import load_run, validation_of

from record import Record


def train_or_reuse(run: Path, config: vaelab.Config) -> float:
    """Train the run (or finish it); returns the seconds spent."""
    started = time.perf_counter()
    if not (run / "last.pt").is_file():
        vaelab.train(config, run, force=True, progress=False)
    elif vaelab.load_run(run, "last").epoch < config.epochs:
        vaelab.resume(run, progress=False, epochs=config.epochs)
    return time.perf_counter() - started


def report_misses(record: Record, asked: torch.Tensor, drawn: torch.Tensor,
                  z: torch.Tensor) -> None:
    """The commonest confusions, and how the hits fall off with |z|: the quarters of the
    draws by their distance from the prior's centre."""
    pairs = torch.stack([asked, drawn], 1)[asked != drawn]
    kinds, counts = pairs.unique(dim=0, return_counts=True)
    top = counts.argsort(descending=True)[:6]
    record.table(["asked for", "classified as", "samples"],
                 [[int(kinds[i, 0]), int(kinds[i, 1]), int(counts[i])] for i in top],
                 "The commonest misses of the conditional model.")
    distance = z.norm(dim=1)
    quarters = torch.bucketize(distance, distance.quantile(torch.tensor([0.25, 0.5, 0.75])))
    hits = [(drawn == asked)[quarters == q].double().mean().item() for q in range(4)]
    record.number("classified as asked by quarter of |z|", hits)
    record.table(["quarter of the draws by |z|", "classified as asked"],
                 [[name, f"{100 * hit:.1f}%"] for name, hit in
                  zip(("nearest the origin", "second", "third", "farthest"), hits)],
                 "Where the misses lie: the draws z split into quarters by their distance from "
                 "the prior's centre.")


def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return confidences(model, images).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="VAE epochs (the reference 10)")
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000, help="samples per class")
    parser.add_argument("--seed", type=int, default=0,
                        help="the VAEs' training seed (the classifier's and the draws' stay)")
    parser.add_argument("--runs", default="runs/bench-conditional", help="where the runs go")
    parser.add_argument("--figures", default="docs/figures/conditional")
    parser.add_argument("--json", help="where the results go (default bench/results/"
                                       "conditional.json)")
    args = parser.parse_args()

    record = Record("conditional", __doc__)
    runs = Path(args.runs)
    seconds = {name: train_or_reuse(runs / name,
                                    vaelab.Config(epochs=args.epochs, seed=args.seed, **extra))
               for name, extra in (("conditional", {"conditional": True}), ("unconditional", {}))}
    judge, accuracy = train_classifier(load_split("mnist", "train"),
                                       load_split("mnist", "val"), args.classifier_epochs)
    conditional, unconditional = (load_run(runs / name) for name in seconds)

    asked = torch.arange(10).repeat_interleave(args.samples)
    z = generate.prior_draws(conditional.model, len(asked), seed=1)
    drawn = predict(judge, generate.decode_means(conditional.model, z, asked))
    free = predict(judge, generate.sample_prior(unconditional.model, len(asked), seed=1))

    record.number("classifier test accuracy", accuracy)
    record.number("training seconds", seconds)
    record.say(f"VAEs: {args.epochs} epochs at the reference settings, training seed "
               f"{args.seed}; classifier: {args.classifier_epochs} epochs, test accuracy "
               f"{100 * accuracy:.2f}%.")
    rows = []
    for label in range(10):
        hit = (drawn[asked == label] == label).double().mean().item()
        share = (free == label).double().mean().item()
        record.number(f"class {label}", {"classified as asked": hit,
                                         "share of unconditional samples": share})
        rows.append([label, f"{100 * hit:.1f}%", f"{100 * share:.1f}%"])
    overall = (drawn == asked).double().mean().item()
    record.number("classified as asked", overall)
    rows.append(["all", f"**{100 * overall:.1f}%** of {len(asked):,}",
                 f"{len(free):,} samples (an even cover is 10.0% each)"])
    record.table(["class", "conditional: classified as the class asked for",
                  "unconditional: share of samples classified as it"], rows,
                 f"Samples z ~ N(0, I) decoded with each class's label, {args.samples:,} per "
                 "class, classified by the CNN; beside them the unconditional model's samples, "
                 "classified freely.")
    report_misses(record, asked, drawn, z)

    figures = Path(args.figures)
    val = validation_of(conditional)
    for name, figure in (("samples", figures.figure_samples(conditional, seed=0)),
                         ("analogies", figures.figure_analogies(conditional, val)),
                         ("latent", figures.figure_latent(conditional, val))):
        record.figure(plots.save(figure, figures / f"{name}.png"))
    record.save(args.json)


if __name__ == "__main__":
    main()
