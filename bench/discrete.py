"""VQ-VAE and FSQ at three codebook sizes on MNIST as 8-bit images and on a colour MNIST, beside
the Gaussian VAE and the hierarchical VAE on the same data (bench/hierarchical.py's quick runs,
read from bench/results/hierarchical.json: the same data, epochs, images and likelihood).

Each run: `vaelab train` (3 epochs of 20,000 training images, a 3-component discretized
logistic mixture, bench/hierarchical.py's protocol), then `vaelab train-prior` (a PixelCNN over
the code maps, --prior-epochs), then `vaelab evaluate` on the first --limit test images: the
VQ-VAE paper's bound, bits/dim = (-log p(codes) - log p(x | codes)) / dims (a point-mass
posterior: one sample gives it exactly). Beside it: the validation PSNR of the reconstructions
(E[x|z]), the share of codes used on the validation images and their perplexity (the last
epoch's, over batches of 1,000 images), seconds per epoch of the autoencoder and of the prior,
and the prior's samples (docs/figures/discrete/). VQ-VAE runs with the cure for dead codes
(re-seeding) at every size, and without it at 512 codes, for contrast. --models picks some of
MODELS (all by default); the published result, on the 2-core development machine (on the
colour set the largest codebooks only, for time), the two commands' results merged into one
file:

    python scripts/mnist_to_images.py data/mnist-png
    python scripts/mnist_to_images.py data/colour-png --colour
    python bench/discrete.py --datasets mnist8 --models vqvae-64 vqvae-512 vqvae-512-no-cure \
        fsq-64 fsq-1000
    python bench/discrete.py --datasets colour --models vqvae-512 fsq-1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import vaelab
from vaelab import figures, plots

from record import REPO, Record

DATASETS = {
    "mnist8": ["--data", "data/mnist-png", "--likelihood", "logistic-mixture",
               "--mixture-components", "3"],
    "colour": ["--data", "data/colour-png", "--channels", "3", "--likelihood",
               "logistic-mixture", "--mixture-components", "3"],
}
MODELS = {
    "vqvae-64": ["--model", "vqvae", "--codebook-size", "64"],
    "vqvae-256": ["--model", "vqvae", "--codebook-size", "256"],
    "vqvae-512": ["--model", "vqvae", "--codebook-size", "512"],
    "vqvae-512-no-cure": ["--model", "vqvae", "--codebook-size", "512",
                          "--vqvae-dead-codes", "keep"],
    "fsq-64": ["--model", "fsq", "--levels", "4,4,4"],
    "fsq-240": ["--model", "fsq", "--levels", "8,6,5"],
    "fsq-1000": ["--model", "fsq", "--levels", "8,5,5,5"],
}
FIGURES = REPO / "docs" / "figures" / "discrete"


def vaelab_command(*args) -> None:
    subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], check=True)


def run_one(record: Record, dataset: str, name: str, args) -> list:
    run = Path(args.runs) / f"{dataset}-{name}"
    if not (run / "last.pt").is_file():
        vaelab_command("train", "--out", run, "--epochs", args.epochs, "--limit-train",
                       args.limit_train, "--quiet", *DATASETS[dataset], *MODELS[name])
    vaelab_command("train-prior", run, "--epochs", args.prior_epochs)
    vaelab_command("evaluate", run, "--iw-samples", 1, "--limit", args.limit, "--quiet")
    result = json.loads((run / "eval.json").read_text())
    loaded = vaelab.load_run(run)
    last = loaded.metrics[-1]
    prior = torch_load_history(run)
    seconds = sum(row["epoch_seconds"] for row in loaded.metrics) / len(loaded.metrics)
    prior_seconds = sum(row["seconds"] for row in prior) / len(prior)
    picture = FIGURES / f"{dataset}-{name}-samples.png"
    plots.save(figures.figure_samples(loaded, 36, seed=0), picture)
    record.figure(picture)
    record.number(f"{dataset} {name}", {
        "bits_per_dim": result["nll_bits_per_dim"], "stderr": result["nll_bits_per_dim_stderr"],
        "recon_nats": result["recon"], "prior_nats": result["kl"], "psnr": last["val_psnr"],
        "usage": last["val_usage"], "perplexity": last["val_perplexity"],
        "seconds_per_epoch": seconds, "prior_seconds_per_epoch": prior_seconds,
        "prior_val_nll": prior[-1]["val_nll"]})
    return [dataset, name, loaded.model.codebook_size, f"{result['nll_bits_per_dim']:.3f} ± "
            f"{result['nll_bits_per_dim_stderr']:.3f}", f"{last['val_psnr']:.2f}",
            f"{100 * last['val_usage']:.1f}%", f"{last['val_perplexity']:.1f}",
            f"{seconds:.0f}", f"{prior_seconds:.0f}"]


def torch_load_history(run: Path) -> list[dict]:
    from vaelab.checkpoint import load_checkpoint

    return load_checkpoint(run / "prior.pt")["history"]


def gaussian_rows(datasets: list[str]) -> list[list]:
    """bench/hierarchical.py's quick runs of the VAE and the hvae on the same data."""
    published = json.loads((REPO / "bench" / "results" / "hierarchical.json").read_text())
    rows = []
    for dataset in datasets:
        for model in ("vae", "hvae"):
            found = published["numbers"].get(f"{dataset} {model}")
            if found:
                rows.append([dataset, f"{model} (bench/hierarchical.py)", "—",
                             f"{found['nll_bits_per_dim']:.3f} ± "
                             f"{found['nll_bits_per_dim_stderr']:.3f}", "—", "—", "—", "—",
                             "—"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--prior-epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=1000, help="test images evaluated")
    parser.add_argument("--runs", default="runs/discrete")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    record = Record("discrete", __doc__)
    rows = []
    for dataset in args.datasets:
        for name in args.models:
            rows.append(run_one(record, dataset, name, args))
            record.say(" | ".join(map(str, rows[-1])))
    record.table(["data", "model", "codes", "bits/dim (bound) ± se", "PSNR, dB", "codes in use",
                  "perplexity", "s/epoch", "prior s/epoch"], rows + gaussian_rows(args.datasets),
                 f"Test bits/dim on the first {args.limit:,} test images ({args.epochs} epochs of "
                 f"{args.limit_train:,} training images; the prior {args.prior_epochs} epochs); "
                 "PSNR, use and perplexity on the validation images, last epoch.")
    record.save()


if __name__ == "__main__":
    main()
