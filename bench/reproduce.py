"""The reference notebook's loss table, reproduced: vaelab at its settings, epoch by epoch.

Trains (or reuses, or finishes) a run at the reference settings, as `make train` does (latent
size 20, batch 64, Adam at 1e-3, 10 epochs, the Bernoulli likelihood on the grey pixels of all
60,000 MNIST training images, validation on the 10,000 test images), and prints its losses
beside the notebook's table in both conventions: the notebook's (each batch's summed loss,
averaged over batches) and nats per image. Then it draws the run's figures into docs/figures,
the pictures the manual shows.

    VAELAB_DATA_DIR=../shared/data python bench/reproduce.py

A run in --run that is finished is reused; one that stopped is resumed.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import vaelab
from vaelab import plots
from vaelab.figures import standard_figures
from vaelab.report import REFERENCE_BATCHES_PER_IMAGE, REFERENCE_TABLE
from vaelab.runs import validation_of

from record import Record


def train_or_reuse(run: Path) -> float | None:
    """Seconds the training took in this process (None if the run was already finished)."""
    started = time.perf_counter()
    if (run / "last.pt").is_file():
        if vaelab.load_run(run, "last").epoch >= vaelab.Config().epochs:
            return None
        vaelab.resume(run, progress=False)
    else:
        vaelab.train(vaelab.Config(), run, force=True, progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/seed-defaults", help="the run folder")
    parser.add_argument("--figures", default="docs/figures", help="where the pictures go")
    parser.add_argument("--json", help="where the results go (default bench/results/"
                                       "reproduce.json)")
    args = parser.parse_args()

    record = Record("reproduce", __doc__)
    run_dir = Path(args.run)
    seconds = train_or_reuse(run_dir)
    run = vaelab.load_run(run_dir)
    ours = {int(row["epoch"]): row for row in run.metrics}
    rows = []
    for epoch, (train, val) in REFERENCE_TABLE.items():
        mine = ours[epoch]
        rows.append([epoch, f"{train:.2f}", f"{val:.2f}", f"{mine['train_batch_loss']:.2f}",
                     f"{mine['val_batch_loss']:.2f}",
                     f"{train * REFERENCE_BATCHES_PER_IMAGE[0]:.2f}",
                     f"{val * REFERENCE_BATCHES_PER_IMAGE[1]:.2f}", f"{mine['train_loss']:.2f}",
                     f"{mine['val_loss']:.2f}"])
        record.number(f"epoch {epoch}", {key: mine[key] for key in (
            "train_loss", "val_loss", "train_batch_loss", "val_batch_loss")})
    record.table(["epoch", "notebook train", "notebook val", "vaelab train", "vaelab val",
                  "notebook train (nats/image)", "notebook val (nats/image)",
                  "vaelab train (nats/image)", "vaelab val (nats/image)"], rows,
                 "The reference notebook's table beside vaelab's run at its settings. Its "
                 "convention: each batch's summed loss, averaged over batches (938 training "
                 "and 157 validation batches of 64); nats per image = that x batches / images.")
    reached = next((epoch for epoch, row in ours.items()
                    if row["val_batch_loss"] <= REFERENCE_TABLE[10][1]), None)
    record.number("first epoch at or below the notebook's final validation loss", reached)
    epoch_seconds = [row["epoch_seconds"] for row in run.metrics]
    record.number("seconds per epoch", epoch_seconds)
    timing = [["seconds per epoch (training and validation)",
               f"{min(epoch_seconds):.1f} to {max(epoch_seconds):.1f}"],
              ["first epoch whose validation loss is at or below the notebook's final "
               f"{REFERENCE_TABLE[10][1]:.2f}", str(reached)]]
    if seconds is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        record.number("training wall seconds, data loading included", seconds)
        record.number("peak memory GiB", peak)
        timing += [["wall time of the run, data loading included", f"{seconds / 60:.1f} min"],
                   ["peak memory of the process", f"{peak:.2f} GiB"]]
    record.table(["measure", "value"], timing, "Time and memory of this run.")

    val = validation_of(run)
    for name, figure in standard_figures(run, val).items():
        record.figure(plots.save(figure, Path(args.figures) / f"{name}.png"))
    record.save(args.json)


if __name__ == "__main__":
    main()
