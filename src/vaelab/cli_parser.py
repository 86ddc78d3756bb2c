"""The `vaelab` command line's parser: its commands and flags, every flag of `train` from a
Config field. Each command names its handler (cli.HANDLERS), which runs it.

Building the parser imports neither torch nor matplotlib: `--help` and argument errors
answer at once, and each command imports what it uses when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses

from .config import RECIPES, RENAMED_RECIPES, Config, field_kind, flag_name
from .version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field. Defaults are SUPPRESSed so that only the flags a user
    typed reach the namespace: a new run fills the rest from Config, a resume keeps its own."""
    for f in dataclasses.fields(Config):
        if not f.metadata["flag"]:
            continue
        kind, choices, _ = field_kind(f.name)
        why = _literal(f"{f.metadata['help']} (default: {f.default})")
        if kind is bool:  # a switch: off unless given
            parser.add_argument(flag_name(f.name), dest=f.name, action="store_true",
                                default=argparse.SUPPRESS, help=why)
            continue
        parser.add_argument(flag_name(f.name), dest=f.name, type=kind, choices=choices,
                            default=argparse.SUPPRESS, metavar=None if choices else f.name.upper(),
                            help=why)


def _literal(text: str) -> str:
    """argparse %-formats help strings: a reason that says "30%" must reach it as "30%%"."""
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaelab", description="Train, evaluate and explore variational "
                     "autoencoders on MNIST-like images or your own.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_train_command(commands)
    add_figure_commands(commands)
    _add_measuring_commands(commands)
    _add_prior_and_sharing_commands(commands)
    return parser


def _add_train_command(commands) -> None:
    train = commands.add_parser("train", help="train a VAE (the reference's defaults) or resume "
                                "one", description="Train a VAE; defaults are the reference "
                                "notebook's.")
    where = train.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<timestamp>)")
    where.add_argument("--resume", metavar="RUN_DIR",
                       help="continue RUN_DIR from last.pt with its saved config")
    train.add_argument("--force", action="store_true",
                       help="replace a run already in --out (never done silently)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--no-report", action="store_true",
                       help="end without writing report.html and its figures, which encode the "
                            "whole validation set (sweeps, scripted runs); `vaelab report RUN` "
                            "writes them later")
    train.add_argument("--recipe", choices=(*RECIPES, *RENAMED_RECIPES),
                       help=_literal("a named preset; flags you give override it. reference: "
                                     "the reference notebook's settings; fast: " + ", ".join(
                                         f"{k} {v}" for k, v in RECIPES["fast"].items())))
    add_config_flags(train)
    train.set_defaults(handler="train")


def _add_measuring_commands(commands) -> None:
    """evaluate, explore, disentanglement and report: what a trained run measures and shows."""
    evaluate = commands.add_parser(
        "evaluate", help="ELBO, importance-weighted log-likelihood, active units",
        description="Negative ELBO and the importance-weighted NLL (nats per image, bits per "
                    "dimension) with standard errors; writes RUN/eval.json (eval-train.json).")
    _add_run_arguments(evaluate, out_help=argparse.SUPPRESS)
    evaluate.add_argument("--iw-samples", type=int, default=5000, metavar="K",
                          help="importance samples per image (default: 5000, as papers)")
    evaluate.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    evaluate.add_argument("--split", choices=("test", "train"), default="test",
                          help="the 10,000 test images (the validation set) or the training set")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the samples (default: 0)")
    evaluate.add_argument("--exact", action="store_true",
                          help="also integrate log p(x) over z on a grid (latent sizes 1 and 2) "
                               "and report how far the estimate is from it")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler="evaluate")
    explore = commands.add_parser(
        "explore", help="a web app to explore the latent space (needs vaelab[app])",
        description="Serve a Gradio app: latent sliders, interpolation, encode your own "
                    "digit, the latent map. Needs: pip install 'vaelab[app]'.")
    _add_run_arguments(explore, out_help=argparse.SUPPRESS)
    explore.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    explore.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    explore.set_defaults(handler="explore")
    scores = commands.add_parser(
        "disentanglement", help="score a run's units against its data's factors (dSprites): "
        "BetaVAE, FactorVAE, MIG, SAP, DCI -> RUN/disentanglement.json",
        description="The five scores of disentanglement_lib with its protocols (sample sizes "
                    "below), each repeated on fresh draws; needs data with `factors` and "
                    "scikit-learn (vaelab[disentanglement]).")
    _add_run_arguments(scores, out_help="folder for the mutual-information PNG (default "
                                        "RUN/figures)")
    scores.add_argument("--share", type=float, default=1.0,
                        help="every sample size times this (default: 1, disentanglement_lib's; "
                             "0.1 for a quick look)")
    scores.add_argument("--repeats", type=int, default=3,
                        help="fresh draws of each score, for its spread (default: 3)")
    scores.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    scores.set_defaults(handler="disentanglement")
    report = commands.add_parser("report", help="write RUN/report.html with every figure")
    _add_run_arguments(report, out_help="folder for the figures (default RUN/figures)")
    report.set_defaults(handler="report")


def _add_prior_and_sharing_commands(commands) -> None:
    """train-prior (a discrete autoencoder's second model), export and compare."""
    prior = commands.add_parser(
        "train-prior", help="vqvae, fsq: train the PixelCNN prior over RUN's code maps (or "
        "continue it) into RUN/prior.pt, which sampling needs",
        description="Train a PixelCNN over the code maps of RUN's best.pt (its training "
                    "images, encoded once); one checkpoint per epoch, continued by running "
                    "the command again with a larger --epochs.")
    prior.add_argument("run", metavar="RUN", help="a vqvae or fsq run directory")
    prior.add_argument("--epochs", type=int, default=20, help="epochs in all (default: 20)")
    prior.add_argument("--lr", type=float, default=1e-3, help="Adam's rate (default: 1e-3)")
    prior.add_argument("--batch-size", type=int, default=64, help="code maps per step "
                       "(default: 64)")
    prior.add_argument("--channels", type=int, default=64, help="the PixelCNN's width "
                       "(default: 64)")
    prior.add_argument("--layers", type=int, default=6, help="its masked layers after the "
                       "first (default: 6)")
    prior.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    prior.add_argument("--force", action="store_true",
                       help="replace a prior RUN already has, rather than continue it")
    prior.add_argument("--data-dir", help="where the run's IDX files lie, if they moved")
    prior.add_argument("--device", help="where to compute (default: the run's own device)")
    prior.set_defaults(handler="train_prior")
    export = commands.add_parser(
        "export", help="write RUN's model as a Hugging Face-style folder: model.safetensors, "
        "config.json, a model card (and the decoder as ONNX)",
        description="Export a run's weights (safetensors), config and a model card into DIR; "
                    "vaelab.from_pretrained(DIR) and every command that takes a run read it.")
    export.add_argument("run", metavar="RUN", help="a run directory made by `vaelab train`")
    export.add_argument("folder", metavar="DIR", help="the folder to write (new or empty)")
    export.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint of the run to export (default: best)")
    export.add_argument("--onnx", action="store_true",
                        help="also write decoder.onnx: a code in, the picture E[x|z] out "
                             "(needs vaelab[onnx])")
    export.add_argument("--force", action="store_true",
                        help="replace an export already in DIR")
    export.add_argument("--device", help="where to draw the card's samples (default: cpu)")
    export.set_defaults(handler="export")
    compare = commands.add_parser(
        "compare", help="runs side by side in one HTML page: settings, metrics, curves, "
        "reconstructions and samples", description="Write one self-contained HTML page "
        "comparing two or more runs (or exported folders), of any families and data.")
    compare.add_argument("runs", metavar="RUN", nargs="+", help="two or more run directories")
    compare.add_argument("--out", metavar="FILE", default="compare.html",
                         help="the page to write (default: compare.html here)")
    compare.add_argument("--checkpoint", choices=("best", "last"), default="best",
                         help="which checkpoint of each run (default: best)")
    compare.add_argument("--data-dir", help="where the runs' IDX files lie, if they moved")
    compare.add_argument("--device", help="where to compute (default: cpu)")
    compare.set_defaults(handler="compare")


def _add_run_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory made by `vaelab train`")
    parser.add_argument("--out", metavar="DIR", help=out_help)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint of the run to load (default: best)")
    parser.add_argument("--device", help="where to compute (default: the run's own device)")
    parser.add_argument("--data-dir", help="where the run's IDX files lie, if they moved")
    parser.add_argument("--data", metavar="PATH",
                        help="where the run's own images (--data) lie, if they moved")


def add_figure_commands(commands) -> None:
    """Each figure command's `make(figures, run, val, args)` returns its figures; the figures
    module (and with it matplotlib) is imported only when a command runs."""

    def command(name: str, help: str, make, files):
        parser = commands.add_parser(name, help=help, description=help)
        _add_run_arguments(parser, out_help="folder for the PNG (default RUN/figures)")
        parser.set_defaults(handler="figures", make=make, files=files)
        return parser

    p = command("reconstruct", "validation images above their reconstructions",
                lambda f, run, val, a: [f.figure_reconstructions(run, val, a.n, a.sample, a.seed,
                                                                 a.sample_pixels)],
                ["reconstructions"])
    p.add_argument("--n", type=int, default=16,
                   help="how many images (default: 16; rows of up to 16, each above its "
                        "reconstructions; at most 256)")
    p.add_argument("--sample", action="store_true", help="decode z ~ q(z|x), not the mean")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for --sample and --sample-pixels (default: 0)")
    _add_sample_pixels(p)

    p = command("sample", "new digits: decoded z ~ N(0, T^2 I)",
                lambda f, run, val, a: [f.figure_samples(run, a.n, a.temperature, a.seed,
                                                         a.label, a.sample_pixels)],
                ["samples"])
    p.add_argument("--n", type=int, help="how many samples (default: 64; a conditional run's "
                                          "class grid: 10 per class); at most 256 "
                                          "outside the class grid")
    p.add_argument("--label", metavar="CLASS",
                   help="conditional runs: draw every sample as this class (name or index); "
                        "without it, one row per class")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="T, the spread of the latent draw z ~ N(0, T^2 I) (default: 1); it "
                        "tempers z only: --sample-pixels then draws x ~ p(x|z) as it is")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    _add_sample_pixels(p)

    p = command("interpolate", "decode points between two digits' posterior means",
                lambda f, run, val, a: [f.figure_interpolation(
                    run, val, a.source, a.target, a.steps, a.pairs, a.spherical, a.index)],
                ["interpolation"])
    p.add_argument("--from", dest="source", metavar="CLASS",
                   help="class name or index (default: 6, else the first class); for "
                        "unlabelled data, a validation image's index (default: 0)")
    p.add_argument("--to", dest="target", metavar="CLASS",
                   help="class name or index (default: 8, else the second class); for "
                        "unlabelled data, a validation image's index (default: 1)")
    p.add_argument("--index", type=int, nargs=2, metavar=("I", "J"),
                   help="interpolate between validation images I and J instead")
    p.add_argument("--steps", type=int, default=10, help="points per strip (default: 10)")
    p.add_argument("--pairs", type=int, default=4, help="strips, one pair each (default: 4)")
    p.add_argument("--spherical", action="store_true", help="slerp instead of a straight line")

    p = command("latent", "2-D map of the validation codes (and the manifold when D = 2)",
                lambda f, run, val, a: [f.figure_latent(run, val, "tsne" if a.tsne else "pca")]
                + ([f.figure_manifold(run)] if run.model.code_dim == 2 else []),
                ["latent", "manifold"])
    p.add_argument("--tsne", action="store_true",
                   help="t-SNE instead of PCA (needs scikit-learn: vaelab[tsne])")

    p = command("analogy", "conditional runs: validation images, each code decoded with every "
                "label", lambda f, run, val, a: [f.figure_analogies(run, val, a.n)],
                ["analogies"])
    p.add_argument("--n", type=int, default=8,
                   help="how many validation images, taking the classes in turn (default: 8)")

    p = command("levels", "models with several latent groups: what each level holds (row k "
                "keeps the top k groups of one sample)",
                lambda f, run, val, a: [f.figure_levels(run, a.n, a.temperature, a.seed,
                                                        a.label)], ["levels"])
    p.add_argument("--n", type=int, default=8, help="columns (default: 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="T (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    p.add_argument("--label", metavar="CLASS", help="conditional runs: the class to draw")

    p = command("traverse", "latent traversals: each unit moved across the prior with the "
                "others held, units sorted by KL; and each unit's KL as bars",
                lambda f, run, val, a: list(f.figure_traversals(run, val, a.n, a.steps,
                                                                a.limit)),
                ["traversal", "unit_kl"])
    p.add_argument("--n", type=int, default=3, help="validation images (default: 3)")
    p.add_argument("--steps", type=int, default=9, help="values per unit (default: 9)")
    p.add_argument("--limit", type=float, default=3.0,
                   help="each unit goes from -L to L prior sds (default: 3)")

    p = command("codes", "vqvae, fsq: validation images above their code maps, and how often "
                "each code is used", lambda f, run, val, a: list(f.figure_codes(run, val, a.n)),
                ["code_map", "code_usage"])
    p.add_argument("--n", type=int, default=8, help="validation images (default: 8)")

    command("curves", "training curves from metrics.csv",
            lambda f, run, val, a: [f.figure_curves(run)], ["curves"])


def _add_sample_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-pixels", action="store_true",
                        help="show one draw x ~ p(x|z) of the pixels, not the mean E[x|z]")
