"""Test-set log-likelihood under the binarized-MNIST protocol, beside the literature.

Trains (or reuses, or extends) one run per recipe below, evaluates each with the
importance-weighted estimator, and prints a Markdown table, kept in
bench/results/likelihood.json. The published table: one recipe per core side by side, then the
table from both (reusing their runs and evaluations):

    export VAELAB_DATA_DIR=../shared/data OMP_NUM_THREADS=1
    taskset -c 0 python bench/likelihood.py --epochs 100 --iw-samples 1000 --recipes "VAE (ELBO)" &
    taskset -c 1 python bench/likelihood.py --epochs 100 --iw-samples 1000 --recipes "IWAE k=5"
    wait; python bench/likelihood.py --epochs 100 --iw-samples 1000

Re-running reuses finished runs and matching evaluations, so a longer --epochs only trains
the extra epochs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from shared import evaluate_or_reuse

import vaelab
from vaelab.checkpoint import load_checkpoint

from record import Record

# name -> Config changes. All: dynamic binarization (resampled every batch), KL warm-up.
RECIPES = {
    "VAE (ELBO)": dict(iw_train=1),
    "IWAE k=5": dict(iw_train=5),
}
COMMON = dict(binarize="dynamic", latent_dim=32, kl_warmup=10)

# Burda, Grosse & Salakhutdinov 2016, Table 1 (dynamically binarized MNIST, NLL with K=5000
# on the 10,000 test images, 3,280 epochs); pythae's benchmark (statically binarized).
REFERENCES = [
    ("Burda et al. 2016: VAE, 1 stochastic layer (MLP)", "ELBO", "3280", "10000", 86.76),
    ("Burda et al. 2016: IWAE k=5, 1 layer", "IWAE k=5", "3280", "10000", 85.54),
    ("Burda et al. 2016: IWAE k=50, 1 layer", "IWAE k=50", "3280", "10000", 84.78),
    ("Burda et al. 2016: IWAE k=50, 2 stochastic layers", "IWAE k=50", "3280", "10000", 82.90),
    ("pythae benchmark: VAE (static binarization)", "ELBO", "", "10000", 89.78),
]


def train_or_reuse(run: Path, config: vaelab.Config) -> None:
    """Train to config.epochs, continuing an existing run of the same recipe if there is one."""
    if not (run / "last.pt").is_file():
        vaelab.train(config, run, force=True)
        return
    saved = load_checkpoint(run / "last.pt")
    differs = {name for name, value in {**COMMON, "iw_train": config.iw_train}.items()
               if saved["config"][name] != value}
    if differs:
        raise SystemExit(f"{run} was trained with other {', '.join(sorted(differs))}; "
                         "move it away or pick another --runs folder")
    if saved["epoch"] < config.epochs:
        vaelab.resume(run, epochs=config.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/likelihood", help="folder for the runs")
    parser.add_argument("--epochs", type=int, nargs="+", default=[100],
                        help="epochs to train, one for all recipes or one per recipe")
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--limit", type=int, help="evaluate the first N test images only")
    parser.add_argument("--recipes", nargs="*", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--json", help="where the results go (default bench/results/"
                                       "likelihood.json)")
    args = parser.parse_args()
    if len(args.epochs) not in (1, len(args.recipes)):
        parser.error("give one --epochs for all recipes or one per recipe")
    epochs = dict(zip(args.recipes, args.epochs * len(args.recipes) if len(args.epochs) == 1
                      else args.epochs))

    record = Record("likelihood", __doc__)
    rows = []
    for name in args.recipes:
        run = Path(args.runs) / name.lower().replace(" ", "-").replace("(", "").replace(")", "")
        config = vaelab.Config(epochs=epochs[name], **COMMON, **RECIPES[name])
        started = time.perf_counter()
        train_or_reuse(run, config)
        result = evaluate_or_reuse(run, args.iw_samples, args.limit)
        metrics = vaelab.load_run(run).metrics
        train_minutes = sum(row["epoch_seconds"] for row in metrics) / 60
        record.number(name, {key: result[key] for key in (
            "nll", "nll_stderr", "neg_elbo", "neg_elbo_stderr", "active_units", "latent_dim",
            "images", "iw_samples", "epoch", "effective_samples_median")})
        rows.append([f"vaelab conv VAE, {name}", name.split(" (")[0] if "IWAE" in name else "ELBO",
                     f"{len(metrics)} (best {result['epoch']})", f"{result['images']:,}",
                     f"{result['nll']:.2f} ± {result['nll_stderr']:.2f}",
                     f"{result['neg_elbo']:.2f} ± {result['neg_elbo_stderr']:.2f}",
                     f"{result['active_units']}/{result['latent_dim']}",
                     f"{train_minutes:.0f} min train, {result['seconds'] / 60:.0f} min eval"])
        record.say(f"{name}: done in {time.perf_counter() - started:.0f} s")

    rows += [[model, objective, epochs, images, f"{nll:.2f}", "", "", ""]
             for model, objective, epochs, images, nll in REFERENCES]
    record.table(["model", "objective", "epochs", "test images", "NLL (nats)", "-ELBO",
                  "active units", "wall time"], rows,
                 f"Dynamically binarized MNIST, test NLL = -log p(x) in nats (K = "
                 f"{args.iw_samples} importance samples; ± one standard error across images); "
                 f"{torch.get_num_threads()} threads, torch {torch.__version__}.")
    record.save(args.json)


if __name__ == "__main__":
    main()
