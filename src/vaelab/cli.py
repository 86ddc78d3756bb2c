"""`vaelab` command line: a thin front end; every flag of `train` comes from a Config field.

Building the parser imports neither torch nor matplotlib: `--help` and argument errors
answer at once, and each command imports what it uses when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from .config import RECIPES, RENAMED_RECIPES, Config, field_kind, flag_name
from .errors import TrainingInterrupted, VaelabError
from .version import __version__

log = logging.getLogger("vaelab")

TABLE = (  # column, header, width
    ("epoch", "epoch", 5), ("train_loss", "train_loss", 10), ("val_loss", "val_loss", 9),
    ("val_recon", "val_recon", 9), ("val_kl", "val_kl", 7),
    ("train_batch_loss", "train_batch", 11), ("val_batch_loss", "val_batch", 9),
    ("epoch_seconds", "seconds", 7),
)


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


def config_changes(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(Config)}
    return {name: value for name, value in vars(args).items() if name in names}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaelab", description="Train, evaluate and explore variational "
                     "autoencoders on MNIST-like images or your own.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    train.add_argument("--recipe", choices=(*RECIPES, *RENAMED_RECIPES),
                       help=_literal("a named preset; flags you give override it. reference: "
                                     "the reference notebook's settings; fast: " + ", ".join(
                                         f"{k} {v}" for k, v in RECIPES["fast"].items())))
    add_config_flags(train)
    train.set_defaults(handler=run_train)
    add_figure_commands(commands)
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
    evaluate.set_defaults(handler=run_evaluate)
    explore = commands.add_parser(
        "explore", help="a web app to explore the latent space (needs vaelab[app])",
        description="Serve a Gradio app: latent sliders, interpolation, encode your own "
                    "digit, the latent map. Needs: pip install 'vaelab[app]'.")
    _add_run_arguments(explore, out_help=argparse.SUPPRESS)
    explore.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    explore.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    explore.set_defaults(handler=run_explore)
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
    scores.set_defaults(handler=run_disentanglement)
    report = commands.add_parser("report", help="write RUN/report.html with every figure")
    _add_run_arguments(report, out_help="folder for the figures (default RUN/figures)")
    report.set_defaults(handler=run_report)
    return parser


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
        parser.set_defaults(handler=run_figures, make=make, files=files)
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

    command("curves", "training curves from metrics.csv",
            lambda f, run, val, a: [f.figure_curves(run)], ["curves"])


def _add_sample_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-pixels", action="store_true",
                        help="show one draw x ~ p(x|z) of the pixels, not the mean E[x|z]")


def run_figures(args: argparse.Namespace) -> int:
    from . import figures, plots
    from .runs import FIGURES, load_run, validation_of

    run = load_run(args.run, args.checkpoint, args.device)
    needs_data = args.command not in ("sample", "curves", "levels")
    val = validation_of(run, args.data_dir, args.data) if needs_data else None
    folder = Path(args.out) if args.out else run.path / FIGURES
    for figure, name in zip(args.make(figures, run, val, args), args.files):
        print(plots.save(figure, folder / f"{name}.png"))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import write_evaluation
    from .figures import targets

    result, path = write_evaluation(args.run, args.iw_samples, args.split, args.limit,
                                    args.seed, args.checkpoint, args.device, args.data_dir,
                                    progress=False if args.quiet else None, exact=args.exact,
                                    data=args.data)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone reports
        return 0
    k, stderr = result["iw_samples"], result["nll_stderr"]
    px = "p(x|y)" if result.get("conditional") else "p(x)"
    rows = [(f"-log {px}, IW K={k}", result["nll"], stderr),
            ("-ELBO", result["neg_elbo"], result["neg_elbo_stderr"]),
            ("  reconstruction", result["recon"], None), ("  KL", result["kl"], None)]
    print(f"{result['images']} {args.split} images, {targets(result['binarize'])}, "
          f"{result['likelihood']} likelihood, {result['checkpoint']}.pt (epoch "
          f"{result['epoch']})")
    if result.get("conditional"):
        print("conditional model: every number is given each image's label y")
    print(f"{'':22}  {'nats/image':>10}  {'± stderr':>8}")
    for name, value, error in rows:
        print(f"{name:22}  {value:>10.2f}  {'' if error is None else f'{error:8.2f}':>8}")
    _print_bits(result, px)
    if "exact_nll" in result:
        print(f"{f'-log {px}, exact':22}  {result['exact_nll']:>10.2f}  "
              f"{result['exact_nll_stderr']:8.2f}  (quadrature over z)")
        print(f"{'  estimate short by':22}  {result['exact_gap_mean']:>10.4f}  on average; "
              f"{100 * result['exact_share_off']:.1f}% of images off by more than 0.05; worst "
              f"{result['exact_gap_worst']:.3f} (image {result['exact_gap_worst_image']})")
    print(f"{'active units':22}  {result['active_units']:>6} of {result['latent_dim']}")
    if "pixel_entropy" in result:
        print(f"{'grayscale floor':22}  {result['pixel_entropy']:>10.2f}  (pixel entropy)")
    print(f"written to {path}")
    return 0


def _print_bits(result: dict[str, Any], px: str) -> None:
    """Bits per dimension, only where they are a probability of the 8-bit values."""
    if not result["density_of_8bit"]:
        print(f"{'bits/dim':22}  not shown: a {result['likelihood']} likelihood is not a "
              "density of 8-bit images (--likelihood logistic gives one)")
        return
    print(f"{'':22}  {'bits/dim':>10}  {'± stderr':>8}")
    print(f"{f'-log {px}, IW':22}  {result['nll_bits_per_dim']:>10.4f}  "
          f"{result['nll_bits_per_dim_stderr']:8.4f}")
    print(f"{'-ELBO':22}  {result['neg_elbo_bits_per_dim']:>10.4f}")


def run_explore(args: argparse.Namespace) -> int:
    from .explore import Explorer
    from .explorer_app import check_can_serve, launch, serve_until_interrupted
    from .runs import load_run, validation_of

    check_can_serve(args.host, args.port)
    run = load_run(args.run, args.checkpoint, args.device)
    log.info("encoding the validation set for the explorer")
    explorer = Explorer(run, validation_of(run, args.data_dir, args.data))
    app = launch(explorer, args.host, args.port, block=False)
    print(f"serving {run.path} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    serve_until_interrupted(app)
    return 0


def run_disentanglement(args: argparse.Namespace) -> int:
    from . import plots
    from .disentanglement import Protocol
    from .figures import figure_mutual_information
    from .units import write_scores

    if not 0 < args.share <= 10 or args.repeats < 1:
        raise VaelabError(f"--share {args.share} / --repeats {args.repeats}: the share must be "
                          "in (0, 10] and the repeats at least 1")
    protocol = dataclasses.replace(Protocol().scaled(args.share), repeats=args.repeats)
    result, path = write_scores(args.run, protocol, args.seed, args.checkpoint, args.device,
                                args.data)
    print(f"{result['summary']}, {result['checkpoint']}.pt (epoch {result['epoch']}); "
          f"{result['images']} images, factors {', '.join(result['factors'])}")
    print(f"{'score':34}  {'mean':>7}  {'sd':>6}  (over {args.repeats} draws)")
    for metric, values in result["scores"].items():
        for name, value in values.items():
            print(f"{metric + ' ' + name:34}  {value['mean']:7.3f}  {value['sd']:6.3f}")
    folder = Path(args.out) if args.out else Path(args.run) / "figures"
    print(plots.save(figure_mutual_information(result), folder / "mutual_information.png"))
    print(f"written to {path}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.run, args.data_dir, args.out, args.checkpoint, args.device,
                        args.data)
    print(f"report: {path}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .config import from_recipe
    from .report import write_report
    from .training import RESUMABLE_CHANGES, check_resume_changes, restarted, resume, train

    changes = config_changes(args)
    progress = False if args.quiet else None
    writer = distributed.is_writer()  # under torchrun, rank 0 alone prints and reports
    print_row = _row_printer() if writer else lambda row: None
    again = restarted(args.out) if args.out else None  # torchrun --max-restarts
    if again == "resume":  # the same command: its other settings are the run's own
        args.resume, args.recipe = args.out, None
        changes = {k: v for k, v in changes.items() if k in RESUMABLE_CHANGES}
    args.force = args.force or again == "start"
    if args.resume:
        if args.recipe:
            raise VaelabError("a resumed run keeps its settings; --recipe is for new runs")
        check_resume_changes(changes)
        # The epochs already done are shown for context once the run is locked and restored,
        # so a refused resume (a damaged checkpoint, a lock held) prints its error alone.
        run_dir = resume(args.resume, progress=progress, on_epoch_end=print_row,
                         on_resumed=lambda done: [print_row(row) for row in done], **changes)
    else:
        config = from_recipe(args.recipe, **changes)
        run_dir = train(config, args.out, force=args.force, progress=progress,
                        on_epoch_end=print_row)
    if not writer:
        return 0
    print(f"run saved in {run_dir}")
    with _threads_of_training(print_row.last):
        print(f"report: {write_report(run_dir)}")
    return 0


@contextlib.contextmanager
def _threads_of_training(row: dict[str, float]) -> Iterator[None]:
    """The report encodes the validation set: with the threads training chose (its last
    epoch's row says), so that a busy core slows it no more than it slowed training; torch's
    own count is put back after it (main may be called within a longer program)."""
    import torch

    from .threads import restored

    with restored():
        if isinstance(row.get("threads"), int):
            torch.set_num_threads(row["threads"])
        yield


def _row_printer():
    """Prints each epoch's row under one header; `.last` keeps the last row printed."""
    table: list[tuple[str, str, int]] = []

    def print_row(row: dict[str, float]) -> None:
        if not table:  # the first row says which terms the model reports
            table.extend(_table_for(row))
            print("  ".join(f"{header:>{width}}" for _, header, width in table))
        print("  ".join(_cell(row[key], width) for key, _, width in table), flush=True)
        print_row.last = row

    print_row.last = {}
    return print_row


def _table_for(row: dict[str, float]) -> list[tuple[str, str, int]]:
    """TABLE, with the terms a model names beyond the ELBO's after the KL: a hierarchy's
    per-group KLs, a family's own (beta-TCVAE's mi, tc, dwkl, ...)."""
    from .runs import term_columns

    named = [(key, key.replace("val_", ""), 7) for key in term_columns(row)]
    at = next(i for i, (key, _, _) in enumerate(TABLE) if key == "val_kl") + 1
    return [*TABLE[:at], *named, *TABLE[at:]]


def _cell(value: float, width: int) -> str:
    return f"{value:>{width}d}" if isinstance(value, int) else f"{value:>{width}.2f}"


def log_to_stderr() -> None:
    """vaelab's own messages, one line each; other libraries' loggers (httpx under Gradio,
    for one) keep Python's default: warnings only."""
    logger = logging.getLogger("vaelab")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("vaelab: %(message)s"))
        logger.addHandler(handler)
    # Under torchrun the ranks would say everything N times: rank 0 speaks for them.
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    logger.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (as logging's last-resort handler does),
    so a caller that swaps sys.stderr, as tests and notebooks do, still gets the lines."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # train's first Ctrl-C stops it cleanly; this is a second one
        print(f"vaelab: {args.command} interrupted (Ctrl-C){_what_is_kept(args)}",
              file=sys.stderr)
        return 130
    except TrainingInterrupted as stopped:
        _report(stopped, f"vaelab: {stopped}")
        return stopped.exit_code
    except VaelabError as err:
        _report(err, f"vaelab: error: {err}")
        return 1


def _what_is_kept(args: argparse.Namespace) -> str:
    """What a training run interrupted outside its own stop handling (a second Ctrl-C, or one
    while the data are read) leaves: last.pt as its last save left it, if there is one."""
    run = (args.resume or args.out) if args.command == "train" else None
    if run is None:
        return ""
    from .runs import LAST, holds_run

    if (Path(run) / LAST).is_file():
        return f"; {Path(run) / LAST} is as the last save left it (vaelab train --resume {run})"
    if holds_run(Path(run)):
        return f"; {run} has no checkpoint yet: start it again with --force"
    return "; nothing was saved"


def _report(err: VaelabError, line: str) -> None:
    """Under torchrun an error all ranks agree on is printed once, by rank 0 (read from the
    environment: an argument error must not wait for torch to import)."""
    if os.environ.get("RANK", "0") == "0" or not getattr(err, "agreed", False):
        print(line, file=sys.stderr)
