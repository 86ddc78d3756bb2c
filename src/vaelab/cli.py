"""`vaelab` command line: a thin front end. The parser is cli_parser's; each command's handler
here imports what it uses when it runs, so `--help` and argument errors answer at once."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from .cli_parser import build_parser
from .config import Config
from .errors import TrainingInterrupted, VaelabError

log = logging.getLogger("vaelab")

TABLE = (  # column, header, width
    ("epoch", "epoch", 5), ("train_loss", "train_loss", 10), ("val_loss", "val_loss", 9),
    ("val_recon", "val_recon", 9), ("val_kl", "val_kl", 7),
    ("train_batch_loss", "train_batch", 11), ("val_batch_loss", "val_batch", 9),
    ("epoch_seconds", "seconds", 7),
)


def config_changes(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(Config)}
    return {name: value for name, value in vars(args).items() if name in names}


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
    from .models import family_class, learns_prior

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
            ("  reconstruction", result["recon"], None),
            # a point-mass posterior's KL is the code map's -log p under the prior
            ("  -log p(codes)" if learns_prior(family_class(result["model"])) else "  KL",
             result["kl"], None)]
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


def run_train_prior(args: argparse.Namespace) -> int:
    from .prior import train_prior

    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone prints
    if speaks:
        print(f"{'epoch':>5}  {'train_nll':>10}  {'val_nll':>9}  {'bits/code':>9}  "
              f"{'seconds':>7}")

    def print_row(row: dict[str, float]) -> None:
        if speaks:
            print(f"{row['epoch']:>5}  {row['train_nll']:>10.2f}  {row['val_nll']:>9.2f}  "
                  f"{row['val_bits_per_code']:>9.3f}  {row['seconds']:>7.1f}", flush=True)

    path = train_prior(args.run, args.epochs, args.lr, args.batch_size, args.channels,
                       args.layers, args.seed, args.force, args.data_dir, args.device,
                       print_row)
    if speaks:
        print(f"prior saved in {path} (nats per code map; sample with `vaelab sample "
              f"{args.run}`)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import export_run

    folder = export_run(args.run, args.folder, args.checkpoint, args.onnx, args.force,
                        args.device or "cpu")
    print(f"exported {args.run} ({args.checkpoint}.pt) to {folder}: "
          + ", ".join(sorted(path.name for path in folder.iterdir())))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs

    page = compare_runs(args.runs, args.out, args.checkpoint, args.data_dir, args.device or "cpu")
    print(f"comparison: {page}")
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
    if args.no_report:
        return 0
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


HANDLERS = {"train": run_train, "evaluate": run_evaluate, "explore": run_explore,
            "disentanglement": run_disentanglement, "report": run_report, "export": run_export,
            "compare": run_compare, "train_prior": run_train_prior,
            "figures": run_figures}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()
    try:
        return HANDLERS[args.handler](args)
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
