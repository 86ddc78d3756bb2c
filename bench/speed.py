"""Training speed, side by side on one machine: the reference notebook's loop, vaelab's
defaults, its `fast` recipe. Each row trains until the validation loss reaches the notebook's
final figure (103.04 nats per image = 6563.28 in its per-batch convention) and reports throughput,
seconds per epoch, peak memory and the time to that target. Each row runs in its own process,
so its peak memory is its own. Prints a Markdown table.

    VAELAB_DATA_DIR=../shared/data python bench/speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from record import Record

TARGET = 103.04  # the reference notebook's epoch-10 validation loss, in nats per image
ROWS = {
    "a": "(a) the notebook's loop: torchvision MNIST + DataLoader + ToTensor, sigmoid + BCE",
    "b": "(b) vaelab, reference settings",
    "c": "(c) vaelab --recipe fast",
}


class ReachedTarget(Exception):
    pass


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def notebook_loop(data_dir: Path, max_epochs: int) -> dict:
    """What the reference notebook does, with vaelab's model so only the loop differs (on the GPU
    when there is one, as pytorch/examples' vae does)."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from vaelab import VAE
    from vaelab.idx import find_files
    from vaelab.losses import kl_standard_normal

    root = Path(tempfile.mkdtemp())  # torchvision extracts beside the files: use a copy
    (root / "MNIST" / "raw").mkdir(parents=True)
    files = find_files("mnist", data_dir)  # either layout vaelab accepts
    if None in files.values():
        sys.exit(f"MNIST files not found under {data_dir}: set VAELAB_DATA_DIR")
    for path in files.values():
        shutil.copy(path, root / "MNIST" / "raw" / path.name)
    started = time.perf_counter()  # from here on, as vaelab's rows: reading data included
    train_set = datasets.MNIST(root, train=True, download=True, transform=transforms.ToTensor())
    test_set = datasets.MNIST(root, train=False, download=True, transform=transforms.ToTensor())
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=64)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as the examples do
    model = VAE(20).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_sum(x):
        x = x.to(device)
        logits, _, mu, logvar = model(x)
        recon = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum")
        return recon + kl_standard_normal(mu, logvar).sum()

    epochs = []
    for epoch in range(1, max_epochs + 1):
        tick = time.perf_counter()
        model.train()
        for x, _ in train_loader:
            optimizer.zero_grad()
            loss_sum(x).backward()
            optimizer.step()
        train_seconds, tick = time.perf_counter() - tick, time.perf_counter()
        model.eval()
        with torch.no_grad():
            val_loss = sum(loss_sum(x).item() for x, _ in test_loader) / len(test_set)
        epochs.append({"train_seconds": train_seconds, "eval_seconds": time.perf_counter() - tick,
                       "val_loss": val_loss, "elapsed": time.perf_counter() - started})
        if val_loss <= TARGET:
            break
    return {"epochs": epochs, "train_images": len(train_set), "val_images": len(test_set)}


def vaelab_run(recipe: str, max_epochs: int) -> dict:
    """vaelab's own loop, stopped at the first epoch whose validation loss reaches TARGET."""
    import vaelab
    from vaelab.config import RECIPES, from_recipe

    config = from_recipe(recipe, epochs=RECIPES[recipe].get("epochs", max_epochs))
    epochs, started = [], time.perf_counter()

    def record(row):
        epochs.append({"train_seconds": row["train_seconds"],
                       "eval_seconds": row["epoch_seconds"] - row["train_seconds"],
                       "val_loss": row["val_loss"], "elapsed": time.perf_counter() - started})
        if row["val_loss"] <= TARGET:
            raise ReachedTarget

    run = Path(tempfile.mkdtemp()) / "run"
    try:
        vaelab.train(config, run, progress=False, on_epoch_end=record)
    except ReachedTarget:
        pass
    model = vaelab.load_run(run, "last", device=None).model  # on the device it trained on
    return {"epochs": epochs, "iw_rate": iw_throughput(model),
            "train_images": 60_000, "val_images": 10_000}


def iw_throughput(model) -> float:
    """Importance-weighted evaluation: images x samples per second (200 images, K = 500)."""
    from vaelab.data import load_split
    from vaelab.evaluate import log_likelihood_iw

    images = load_split("mnist", "val", limit=200).images
    tick = time.perf_counter()
    log_likelihood_iw(model, images, samples=500)
    return 200 * 500 / (time.perf_counter() - tick)


def profile(steps: int = 200) -> None:
    """Where the time of 200 training steps at the reference settings goes (with the data loading
    and a 64-image validation around them): torch.profiler's top ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    import vaelab

    config = vaelab.Config(epochs=1, limit_train=64 * steps, limit_val=64)
    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        vaelab.train(config, Path(tempfile.mkdtemp()) / "run", progress=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def run_row(row: str, max_epochs: int) -> dict:
    data_dir = Path(os.environ.get("VAELAB_DATA_DIR", "data"))
    result = notebook_loop(data_dir, max_epochs) if row == "a" else \
        vaelab_run("seed" if row == "b" else "fast", max_epochs)
    return {**result, "peak_mb": peak_memory_mb()}


def summarize(row: str, result: dict) -> dict:
    epochs = result["epochs"]
    train_seconds = sum(e["train_seconds"] for e in epochs)
    eval_seconds = sum(e["eval_seconds"] for e in epochs)
    eval_rate = result["val_images"] * len(epochs) / eval_seconds
    per_epoch = (train_seconds + eval_seconds) / len(epochs)
    reached = next((e for e in epochs if e["val_loss"] <= TARGET), None)
    return {"train_rate": result["train_images"] * len(epochs) / train_seconds,
            "eval_rate": eval_rate, "per_epoch": per_epoch, "peak_mb": result["peak_mb"],
            "iw_rate": result.get("iw_rate"), "final": epochs[-1]["val_loss"],
            "epochs": len(epochs), "to_target": reached["elapsed"] if reached else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="abc", help="which rows to run (default: abc)")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--profile", action="store_true",
                        help="instead: profile 200 training steps and print the top ops")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row, print JSON
    parser.add_argument("--json", help="where the results go (default bench/results/speed.json)")
    args = parser.parse_args()
    if args.profile:
        return profile()
    if not args.rows or set(args.rows) - set(ROWS):
        parser.error(f"--rows takes letters from {''.join(ROWS)}")
    if args.row:
        print(json.dumps(run_row(args.row, args.max_epochs)))
        return

    record = Record("speed", __doc__)
    results = {}
    for row in args.rows:
        done = subprocess.run([sys.executable, __file__, "--row", row, "--max-epochs",
                               str(args.max_epochs)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"row {row} failed:\n{done.stderr}")
        results[row] = summarize(row, json.loads(done.stdout.strip().splitlines()[-1]))
        record.number(ROWS[row], results[row])
        print(f"{ROWS[row]}: {results[row]}", file=sys.stderr, flush=True)
    record.table(["run", "train img/s", "eval img/s", "s/epoch", "peak RSS (MB)",
                  "IW eval (img x samples/s)", "epochs run", "time to target (s)", "vs (a)"],
                 table_rows(results),
                 f"{torch.get_num_threads()} threads, "
                 f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}. "
                 f"Target: val_loss <= {TARGET} nats per image. \"vs (a)\" is the ratio to the "
                 "first row in the same run; s/epoch includes validation; the time to target "
                 "counts everything from the start of the run.")
    record.save(args.json)


def table_rows(results: dict) -> list[list[str]]:
    base = results.get("a")
    rows = []
    for row, r in results.items():
        def ratio(key: str) -> str:
            return f" ({r[key] / base[key]:.2f}x)" if base and row != "a" else ""

        reached = r["to_target"] is not None
        to_target = f"{r['to_target']:.0f}" if reached else f"not reached ({r['final']:.2f})"
        speedup = f"{base['to_target'] / r['to_target']:.2f}x sooner" \
            if base and base["to_target"] and reached and row != "a" else ""
        iw = f"{r['iw_rate']:,.0f}" if r["iw_rate"] else "—"
        rows.append([ROWS[row], f"{r['train_rate']:,.0f}{ratio('train_rate')}",
                     f"{r['eval_rate']:,.0f}{ratio('eval_rate')}", f"{r['per_epoch']:.1f}",
                     f"{r['peak_mb']:.0f}", iw, str(r["epochs"]), to_target, speedup])
    return rows


if __name__ == "__main__":
    main()
