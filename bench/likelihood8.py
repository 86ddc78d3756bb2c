"""MNIST read as 8-bit images: bernoulli, logistic and logistic-mixture side by side, in bits
per dimension beside the published 8-bit MNIST figures.

Trains (or reuses) one run per likelihood on the PNG folder of scripts/mnist_to_images.py,
evaluates each with the importance-weighted estimator (K samples per test image) and prints
a Markdown table. The protocol is K = 1000 on all 10,000 test images:

    python scripts/mnist_to_images.py data/mnist-png
    python bench/likelihood8.py --epochs 10 --iw-samples 1000

The published table (bench/results/likelihood8.json) is that protocol with a 3-component
mixture, one likelihood after the other:

    python bench/likelihood8.py --epochs 10 --components 3 --iw-samples 1000 \
        --likelihoods logistic-mixture logistic bernoulli

--limit N (the first N test images; a folder's first ones are sorted by class) and --spread N
(N images evenly spaced through the test set) give a quicker look.

Re-running reuses finished runs and matching evaluations.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from shared import evaluate_or_reuse

import vaelab
from vaelab import figures, plots
from vaelab.checkpoint import load_checkpoint
from vaelab.evaluate import evaluate_run
from vaelab.likelihoods import EIGHT_BIT
from vaelab.runs import validation_of

from record import Record

LIKELIHOODS = ("bernoulli", "logistic", "logistic-mixture")

# Published test NLL on 8-bit MNIST, bits/dim (dequantized flows; Glow's from the FFJORD and
# Residual Flows tables).
REFERENCES = [("Real NVP (Dinh et al. 2017)", 1.06), ("Glow (Kingma & Dhariwal 2018)", 1.05),
              ("FFJORD (Grathwohl et al. 2019)", 0.99),
              ("Residual Flows (Chen et al. 2019)", 0.97)]


def train_or_reuse(run: Path, config: vaelab.Config) -> None:
    """Train to config.epochs, continuing a run of the same settings if there is one."""
    if not (run / "last.pt").is_file():
        vaelab.train(config, run, force=True, progress=False)
        return
    saved = load_checkpoint(run / "last.pt")
    keys = ("likelihood", "mixture_components", "arch", "latent_dim")
    if any(saved["config"][k] != getattr(config, k) for k in keys):
        raise SystemExit(f"{run} was trained with other settings ({', '.join(keys)}); move it "
                         "away or pick another --runs folder")
    if saved["epoch"] < config.epochs:
        vaelab.resume(run, epochs=config.epochs, progress=False)


def evaluate_spread(run: Path, samples: int, count: int, data: str) -> dict:
    """The IW evaluation on `count` test images evenly spaced through the test set: a folder's
    images are sorted by class, so its first N are one or two digits only. Cached in RUN."""
    cached = run / f"eval-spread{count}-k{samples}.json"
    loaded = vaelab.load_run(run)
    if cached.is_file() and json.loads(cached.read_text())["epoch"] == loaded.epoch:
        return json.loads(cached.read_text())
    images = validation_of(loaded, data=data).images
    chosen = images[torch.linspace(0, len(images) - 1, count).round().long()]
    result = {"epoch": loaded.epoch, "density_of_8bit": loaded.config.likelihood in EIGHT_BIT,
              **evaluate_run(loaded.model, chosen, samples)}
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def row(name: str, config: vaelab.Config, result: dict, metrics: list[dict]) -> list[str]:
    train_minutes = sum(m["epoch_seconds"] for m in metrics) / 60
    # best.pt's validation -ELBO, measured in training on every test image (one z each)
    best = min(m["val_loss"] for m in metrics) / (784 * math.log(2))
    if result["density_of_8bit"]:
        nll = f"{result['nll_bits_per_dim']:.3f} ± {result['nll_bits_per_dim_stderr']:.3f}"
        elbo = f"{result['neg_elbo_bits_per_dim']:.3f}"
        elbo_all = f"{best:.3f}"
    else:  # a cross-entropy on grey values: no probability of the 8-bit values to compare
        nll = elbo = elbo_all = "not a density of 8-bit data"
    components = f" ({config.mixture_components} components)" \
        if name == "logistic-mixture" else ""
    return [f"vaelab {config.arch} VAE, {name}{components}", f"{len(metrics)}",
            f"{result['images']:,}", nll, elbo, elbo_all,
            f"{result['nll']:.1f} ± {result['nll_stderr']:.1f}",
            f"{result['active_units']}/{result['latent_dim']}",
            f"{train_minutes:.1f} min train, {result['seconds'] / 60:.1f} min eval"]


def save_figures(run_dir: Path, name: str, args: argparse.Namespace) -> list[Path]:
    """The run's prior samples and reconstructions, as the mean E[x|z] and, for the discrete
    likelihoods, as a draw of the pixels: into --figures, named after the data and likelihood."""
    run = vaelab.load_run(run_dir)
    val = validation_of(run, data=args.data)
    stem = Path(args.figures) / f"{Path(args.data).name}-{name}"
    draws = (False, True) if name in EIGHT_BIT else (False,)
    saved = []
    for pixels in draws:
        shown = "pixels" if pixels else "mean"
        saved.append(plots.save(figures.figure_samples(run, 36, pixels=pixels),
                                f"{stem}-samples-{shown}.png"))
        saved.append(plots.save(figures.figure_reconstructions(run, val, 12, pixels=pixels),
                                f"{stem}-reconstructions-{shown}.png"))
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/mnist-png", help="the PNG folder of MNIST")
    parser.add_argument("--runs", default="runs/likelihood8", help="folder for the runs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", choices=("conv", "resnet"), default="conv")
    parser.add_argument("--components", type=int, default=5,
                        help="logistics per sub-pixel in the mixture (default 5: its IW "
                             "evaluation costs about components/2 times a logistic's)")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--limit", type=int, help="evaluate the first N test images only")
    parser.add_argument("--spread", type=int, metavar="N",
                        help="evaluate N test images evenly spaced through the test set "
                             "instead (every class; a folder's first N are sorted by class)")
    parser.add_argument("--likelihoods", nargs="*", choices=LIKELIHOODS, default=LIKELIHOODS)
    parser.add_argument("--figures", default="docs/figures/likelihood8",
                        help="folder for the samples and reconstructions")
    parser.add_argument("--json", help="where the results go (default bench/results/"
                                       "likelihood8.json)")
    args = parser.parse_args()

    record = Record("likelihood8", __doc__)
    rows = []
    for name in args.likelihoods:
        run = Path(args.runs) / name
        config = vaelab.Config(data=args.data, likelihood=name, epochs=args.epochs,
                               arch=args.arch, mixture_components=args.components)
        started = time.perf_counter()
        train_or_reuse(run, config)
        result = (evaluate_spread(run, args.iw_samples, args.spread, args.data) if args.spread
                  else evaluate_or_reuse(run, args.iw_samples, args.limit, args.data))
        rows.append(row(name, config, result, vaelab.load_run(run).metrics))
        for figure in save_figures(run, name, args):
            record.figure(figure)
        record.number(name, {key: result[key] for key in (
            "nll", "nll_stderr", "nll_bits_per_dim", "nll_bits_per_dim_stderr", "neg_elbo",
            "neg_elbo_bits_per_dim", "active_units", "latent_dim", "images", "iw_samples",
            "epoch", "effective_samples_median")})
        record.say(f"{name}: done in {time.perf_counter() - started:.0f} s")

    rows += [[model, "", "10,000", f"{bits:.2f}", "", "", "", "", ""]
             for model, bits in REFERENCES]
    record.table(["model", "epochs", "test images", "NLL bits/dim", "-ELBO bits/dim",
                  "-ELBO bits/dim, all 10,000", "NLL nats/image", "active units", "wall time"],
                 rows, f"{args.data} as 8-bit images, test -log p(x) (IW, K = "
                       f"{args.iw_samples}; ± one standard error across images); "
                       f"{torch.get_num_threads()} threads, torch {torch.__version__}.")
    record.save(args.json)


if __name__ == "__main__":
    main()
