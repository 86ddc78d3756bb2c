"""`vaelab` command line: a thin front end; every flag of `train` comes from a Config field."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any, Sequence

from . import __version__
from .config import Config, field_kind, flag_name
from .errors import VaelabError

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
        kind, choices, _ = field_kind(f.name)
        parser.add_argument(flag_name(f.name), dest=f.name, type=kind, choices=choices,
                            default=argparse.SUPPRESS, metavar=None if choices else f.name.upper(),
                            help=f"{f.metadata['help']} (default: {f.default})")


def config_changes(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(Config)}
    return {name: value for name, value in vars(args).items() if name in names}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaelab", description="Train, evaluate and explore variational "
                     "autoencoders on MNIST-like images.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a VAE (the seed's defaults) or resume one",
                                description="Train a VAE; defaults are the seed's.")
    where = train.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<timestamp>)")
    where.add_argument("--resume", metavar="RUN_DIR",
                       help="continue RUN_DIR from last.pt with its saved config")
    train.add_argument("--force", action="store_true",
                       help="replace a run already in --out (never done silently)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(train)
    train.set_defaults(handler=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from .runs import read_metrics
    from .train import resume, train

    changes = config_changes(args)
    progress = False if args.quiet else None
    print_row = _row_printer()
    if args.resume:
        for row in read_metrics(args.resume):  # the epochs already done, for context
            print_row(row)
        run_dir = resume(args.resume, progress=progress, on_epoch_end=print_row, **changes)
    else:
        run_dir = train(Config(**changes), args.out, force=args.force, progress=progress,
                        on_epoch_end=print_row)
    print(f"run saved in {run_dir}")
    return 0


def _row_printer():
    printed_header = False

    def print_row(row: dict[str, float]) -> None:
        nonlocal printed_header
        if not printed_header:
            print("  ".join(f"{header:>{width}}" for _, header, width in TABLE))
            printed_header = True
        print("  ".join(_cell(row[key], width) for key, _, width in TABLE), flush=True)

    return print_row


def _cell(value: float, width: int) -> str:
    return f"{value:>{width}d}" if isinstance(value, int) else f"{value:>{width}.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vaelab: %(message)s")
    try:
        return args.handler(args)
    except VaelabError as err:
        print(f"vaelab: error: {err}", file=sys.stderr)
        return 1
