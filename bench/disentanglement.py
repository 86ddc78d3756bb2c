"""Disentangling VAEs on dSprites: VAE, beta-VAE, beta-TCVAE, FactorVAE and controlled
capacity, three training seeds each, scored with the five metrics of disentanglement_lib.

Every model is the literature's network (`--arch locatello`: four 4x4 stride-2 convolutions,
two dense layers, latent size 10), the Bernoulli likelihood, batch 64, and the same budget of
--steps optimizer steps (the first steps x 64 training images, drawn with the run's seed, one
epoch). Each (model, seed) trains and is scored in a process of its own (the full dSprites is
3 GB in memory), then `vaelab disentanglement` scores it with every sample size times --share
and --repeats fresh draws. The table gives each score's mean and sd over the three seeds, and
the validation reconstruction loss, beside the published ranges; the traversals of each
model's best and worst seed (by MIG) go to --figures.

The anchors trained 300,000 steps at learning rate 1e-4; this bench's budget is what two CPU
cores allow in about an hour and a half for all fifteen runs (training and scoring), so it
trains at 1e-3 (vaelab's default) and its scores say where a short run stands, not where these
models end. The published run:

    python scripts/make_dsprites.py data/dsprites-raw.npz --uncompressed
    python bench/disentanglement.py --data data/dsprites-raw.npz --steps 2000 --share 0.1 \\
        --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vaelab import Config, figures, load_run, plots, train
from vaelab.disentanglement import Protocol
from vaelab.runs import validation_of
from vaelab.units import read_scores, write_scores

from record import Record

MODELS = {"vae": dict(model="vae"),
          "beta-vae": dict(model="vae", beta=4.0),  # Higgins et al.'s beta on dSprites
          "beta-tcvae": dict(model="beta-tcvae"),
          "factorvae": dict(model="factorvae"),
          "capacity": dict(model="capacity")}
SHOWN = [("beta_vae", "eval_accuracy", "BetaVAE"), ("factor_vae", "eval_accuracy", "FactorVAE"),
         ("mig", "score", "MIG"), ("sap", "score", "SAP"),
         ("dci", "disentanglement", "DCI D"), ("dci", "completeness", "DCI C"),
         ("dci", "informativeness_test", "DCI I")]
# Approximate ranges over models, hyperparameters and seeds, read off the papers' figures for
# dSprites (Locatello et al. 2019, figs. 2 and 13; Kim & Mnih 2018, fig. 4; Chen et al. 2018,
# fig. 3): a rough guide to where trained models land, not a line to meet.
PUBLISHED = {"BetaVAE": "0.6-0.9", "FactorVAE": "0.5-0.85", "MIG": "0.0-0.4",
             "SAP": "0.0-0.1", "DCI D": "0.0-0.6"}


def one_run(run: Path, model: str, seed: int, args: argparse.Namespace) -> None:
    """Train (unless done) and score one (model, seed), in this process."""
    steps = args.steps
    extra = dict(capacity_steps=steps * 3 // 4) if model == "capacity" else {}
    if not (run / "last.pt").is_file():
        config = Config(data=args.data, arch="locatello", latent_dim=10, seed=seed, epochs=1,
                        limit_train=steps * 64, limit_val=2000, threads=args.threads,
                        **MODELS[model], **extra)
        train(config, run, force=True, progress=False)
    if read_scores(run) is None:
        protocol = dataclasses.replace(Protocol().scaled(args.share), repeats=args.repeats)
        write_scores(run, protocol)


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" \
        if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/dsprites-raw.npz")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", default="runs/disentanglement")
    parser.add_argument("--figures", default="docs/figures/disentanglement")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, seed = args.one
        one_run(Path(args.runs) / f"{model}-seed{seed}", model, int(seed), args)
        return
    record = Record("disentanglement", __doc__)
    rows, found = [], {}
    for model in args.models.split(","):
        for seed in range(args.seeds):
            run = Path(args.runs) / f"{model}-seed{seed}"
            started = time.perf_counter()
            if read_scores(run) is None:  # a process of its own: its memory is its own
                subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", model,
                                str(seed)], check=True)
            record.say(f"{model} seed {seed}: {time.perf_counter() - started:.0f} s")
            found[(model, seed)] = read_scores(run)
            found[(model, seed)]["recon"] = load_run(run).metrics[-1]["val_recon"]
        results = [found[(model, seed)] for seed in range(args.seeds)]
        cells = [spread([r["scores"][m][k]["mean"] for r in results]) for m, k, _ in SHOWN]
        rows.append([model, *cells, spread([r["recon"] for r in results])])
        record.number(model, {name: [r["scores"][m][k]["mean"] for r in results]
                              for m, k, name in SHOWN})
        traverse(record, model, args, results)
    record.table(["model", *(name for _, _, name in SHOWN), "val recon (nats)"], rows,
                 f"dSprites, {args.steps} steps of batch 64 per run, mean ± sd over "
                 f"{args.seeds} training seeds (each score itself the mean of {args.repeats} "
                 f"draws at {args.share:g} x disentanglement_lib's sample sizes).")
    record.table(["score", "published range (dSprites)"], list(PUBLISHED.items()),
                 "Where trained models land in the papers (300,000 steps; read off their "
                 "figures, approximately).")
    record.save(args.json)


def traverse(record: Record, model: str, args: argparse.Namespace, results: list[dict]) -> None:
    """The traversals of the model's best and worst seed by MIG."""
    by_mig = sorted(range(len(results)), key=lambda s: results[s]["scores"]["mig"]["score"]
                    ["mean"])
    for which, seed in (("best", by_mig[-1]), ("worst", by_mig[0])):
        run = load_run(Path(args.runs) / f"{model}-seed{seed}")
        picture = figures.figure_traversals(run, validation_of(run), n=2)[0]
        record.figure(plots.save(picture, Path(args.figures) / f"{model}-{which}.png"))


if __name__ == "__main__":
    main()
