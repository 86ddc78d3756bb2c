"""The hierarchical VAE beside the single-level VAE on binarized MNIST, MNIST as 8-bit images
and a colour MNIST: likelihoods beside the literature, samples judged by a classifier, speed.

Each data set trains both models (or reuses, or extends, their runs in --runs), each in a
process of its own so that its peak memory is its own, then evaluates them with the
importance-weighted estimator:

  binarized  dynamic binarization, KL warm-up over 10 epochs, the Bernoulli likelihood (the
             protocol of bench/likelihood.py; the VAE at its latent size 32); test NLL in nats
             beside Burda et al. 2016, the Ladder VAE, NVAE and Efficient-VDVAE.
  mnist8     MNIST written out as PNGs, a 3-component logistic mixture (the protocol of
             bench/likelihood8.py); bits/dim beside Real NVP, Glow and FFJORD.
  colour     the seeded colour MNIST of scripts/mnist_to_images.py --colour, the same mixture;
             bits/dim, and the share of 1,000 prior samples that a classifier, trained here on
             the colour training images, recognizes with confidence 0.9 or more.

Beside the likelihoods: seconds per epoch, peak memory, and the validation -ELBO epoch by
epoch (how the bound moves with training). The samples of both models go to --figures. The
published result, one data set after the other on the 2-core development machine:

    python scripts/mnist_to_images.py data/mnist-png
    python scripts/mnist_to_images.py data/colour-png --colour
    python bench/hierarchical.py --epochs 10 --iw-samples 1000

--datasets and --models pick some; --limit N evaluates the first N test images only and
--limit-train N trains on N images (a quicker look).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

from shared import confidences, evaluate_or_reuse, train_classifier
from torch import nn

import vaelab
from vaelab import figures, generate, plots
from vaelab.checkpoint import load_checkpoint
from vaelab.models import count_parameters
from vaelab.runs import validation_of

from record import Record

DATASETS = {
    "binarized": dict(binarize="dynamic", kl_warmup=10),
    "mnist8": dict(data="data/mnist-png", likelihood="logistic-mixture", mixture_components=3),
    "colour": dict(data="data/colour-png", channels=3, likelihood="logistic-mixture",
                   mixture_components=3),
}
MODELS = {"vae": dict(model="vae"), "hvae": dict(model="hvae")}
BINARIZED_VAE = dict(latent_dim=32)  # bench/likelihood.py's VAE
# Published test NLL: binarized MNIST in nats, 8-bit MNIST in bits/dim.
LITERATURE = {
    "binarized": [("IWAE, 2 stochastic layers (Burda et al. 2016)", 82.90),
                  ("Ladder VAE (Sønderby et al. 2016)", 81.74),
                  ("Efficient-VDVAE (Hazami et al. 2022)", 79.09),
                  ("NVAE (Vahdat & Kautz 2020)", 78.01)],
    "mnist8": [("Real NVP (Dinh et al. 2017)", 1.06), ("Glow (Kingma & Dhariwal 2018)", 1.05),
               ("FFJORD (Grathwohl et al. 2019)", 0.99)],
}
CONFIDENT = 0.9


def settings(dataset: str, model: str, epochs: int) -> dict:
    extra = BINARIZED_VAE if dataset == "binarized" and model == "vae" else {}
    return {**DATASETS[dataset], **MODELS[model], **extra, "epochs": epochs}


def train_row(run: Path, changes: dict) -> None:
    """In a process of its own: train, resume or leave the run; print its peak memory."""
    config = vaelab.Config(**changes)
    if not (run / "last.pt").is_file():
        vaelab.train(config, run, force=True, progress=False)
    else:
        saved = load_checkpoint(run / "last.pt")
        given = config.to_dict()
        if config.data:  # as the checkpoint keeps it: an absolute path
            given["data"] = str(Path(config.data).expanduser().absolute())
        if any(saved["config"].get(key) != given[key] for key in changes if key != "epochs"):
            sys.exit(f"{run} was trained with other settings; move it or pick another --runs")
        if saved["epoch"] < config.epochs:
            vaelab.resume(run, epochs=config.epochs, progress=False)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def train_in_process(run: Path, changes: dict) -> float:
    done = subprocess.run([sys.executable, __file__, "--train-row", str(run), "--changes",
                           json.dumps(changes)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{run}: training failed:\n{done.stderr[-3000:]}")
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
    (run / "peak-memory.json").write_text(json.dumps({"peak_mb": peak}) + "\n")
    return peak


# ---- the colour classifier ---------------------------------------------------------------

def recognized(judge: nn.Module, run: vaelab.Run, count: int, temperature: float) -> float:
    """The share of `count` prior samples (the likelihood's means) the judge classifies
    with confidence CONFIDENT or more."""
    samples = generate.sample_prior(run.model, count, temperature, seed=1)
    return (confidences(judge, samples).max(1).values >= CONFIDENT).double().mean().item()


# ---- the report --------------------------------------------------------------------------

def result_row(dataset: str, name: str, run: vaelab.Run, result: dict) -> list[str]:
    metrics = run.metrics
    seconds = sum(row["epoch_seconds"] for row in metrics) / len(metrics)
    peak = json.loads((run.path / "peak-memory.json").read_text())["peak_mb"]
    if result["density_of_8bit"]:
        nll = f"{result['nll_bits_per_dim']:.3f} ± {result['nll_bits_per_dim_stderr']:.3f}"
        elbo = f"{result['neg_elbo_bits_per_dim']:.3f}"
    else:
        nll = f"{result['nll']:.2f} ± {result['nll_stderr']:.2f}"
        elbo = f"{result['neg_elbo']:.2f}"
    groups = result.get("active_units_per_group")
    active = f"{result['active_units']}/{result['latent_dim']}" + (
        f" ({', '.join(map(str, groups))} by group)" if groups else "")
    return [f"{dataset}", f"{name}: {run.model.summary}",
            f"{count_parameters(run.model):,}", f"{len(metrics)}",
            f"{result['images']:,}", nll, elbo, active, f"{seconds:.0f}", f"{peak:.0f}"]


def curve_rows(dataset: str, runs: dict[str, vaelab.Run], epochs: list[int]) -> list[list]:
    """Validation -ELBO at chosen epochs (bits/dim for the 8-bit data), per model."""
    rows = []
    for name, run in runs.items():
        pixels = math.prod(run.model.shape) * math.log(2)
        scale = pixels if run.config.likelihood != "bernoulli" else 1.0
        by_epoch = {int(row["epoch"]): row["val_loss"] / scale for row in run.metrics}
        rows.append([dataset, name, *(f"{by_epoch[e]:.3f}" if e in by_epoch else ""
                                      for e in epochs)])
    return rows


def save_figures(record: Record, dataset: str, runs: dict[str, vaelab.Run], folder: Path) -> None:
    for name, run in runs.items():
        stem = folder / f"{dataset}-{name}"
        record.figure(plots.save(figures.figure_samples(run, 36, seed=0),
                                 f"{stem}-samples.png"))
        record.figure(plots.save(figures.figure_reconstructions(run, validation_of(run), 12),
                                 f"{stem}-reconstructions.png"))
        if len(run.model.group_sizes) > 1:
            record.figure(plots.save(figures.figure_temperatures(run), f"{stem}-temperatures.png"))
            record.figure(plots.save(figures.figure_levels(run), f"{stem}-levels.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/hierarchical", help="folder for the runs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--datasets", nargs="*", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--limit", type=int, help="evaluate the first N test images only")
    parser.add_argument("--limit-train", type=int, help="train on N images (a quick look)")
    parser.add_argument("--figures", default="docs/figures/hierarchical")
    parser.add_argument("--json", help="where the results go (default bench/results/"
                                       "hierarchical.json)")
    parser.add_argument("--train-row", help=argparse.SUPPRESS)  # internal: one training
    parser.add_argument("--changes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_row:
        return train_row(Path(args.train_row), json.loads(args.changes))

    record = Record("hierarchical", __doc__)
    rows, curves, colour = [], [], []
    marks = sorted({e for e in (1, 2, 5) if e <= args.epochs} | {args.epochs,
                                                             *range(10, args.epochs + 1, 10)})
    for dataset in args.datasets:
        runs = {}
        for name in args.models:
            run_dir = Path(args.runs) / f"{dataset}-{name}"
            started = time.perf_counter()
            changes = settings(dataset, name, args.epochs)
            if args.limit_train:
                changes["limit_train"] = args.limit_train
            train_in_process(run_dir, changes)
            result = evaluate_or_reuse(run_dir, args.iw_samples, args.limit)
            runs[name] = vaelab.load_run(run_dir)
            rows.append(result_row(dataset, name, runs[name], result))
            record.number(f"{dataset} {name}", {key: result.get(key) for key in (
                "nll", "nll_stderr", "nll_bits_per_dim", "nll_bits_per_dim_stderr",
                "neg_elbo", "neg_elbo_bits_per_dim", "active_units", "active_units_per_group",
                "kl_per_group", "images", "iw_samples", "epoch")})
            record.say(f"{dataset} {name}: done in {time.perf_counter() - started:.0f} s")
        curves += curve_rows(dataset, runs, marks)
        if dataset == "colour":
            colour = judge_colour(record, runs)
        save_figures(record, dataset, runs, Path(args.figures))

    units = "nats (binarized) or bits/dim (8-bit)"
    rows += [[dataset, model, "", "", "10,000", f"{value:g}", "", "", "", ""]
             for dataset, published in LITERATURE.items() if dataset in args.datasets
             for model, value in published]
    record.table(["data", "model", "parameters", "epochs", "test images",
                  f"NLL, {units}", "-ELBO", "active units", "s/epoch", "peak MB"], rows,
                 f"Test -log p(x) by the IW estimator (K = {args.iw_samples}; ± one standard "
                 "error across images), the best checkpoint of each run; the literature's "
                 "rows as published.")
    record.table(["data", "model", *(f"epoch {e}" for e in marks)], curves,
                 "Validation -ELBO after each marked epoch (nats per image for binarized "
                 "MNIST, bits/dim for the 8-bit data): how the bound moves with training.")
    if colour:
        record.table(["model", "classifier test accuracy", "temperature",
                      f"samples recognized with confidence >= {CONFIDENT}"], colour,
                     "Colour MNIST: 1,000 prior samples per model and temperature, judged by "
                     "a CNN trained on the colour training images.")
    record.save(args.json)


def judge_colour(record: Record, runs: dict[str, vaelab.Run]) -> list[list[str]]:
    from vaelab.data import load_data

    any_run = next(iter(runs.values()))
    train, test = load_data(any_run.config.replace(limit_train=None, limit_val=None))
    judge, accuracy = train_classifier(train, test)
    record.number("colour classifier test accuracy", accuracy)
    rows = []
    for name, run in runs.items():
        for temperature in (1.0, 0.8, 0.6):
            share = recognized(judge, run, 1000, temperature)
            record.number(f"colour {name} recognized at T={temperature}", share)
            rows.append([name, f"{100 * accuracy:.2f}%", f"{temperature:g}",
                         f"{100 * share:.1f}%"])
    return rows


if __name__ == "__main__":
    main()
