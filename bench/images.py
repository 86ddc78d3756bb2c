"""Training from a folder of image files: vaelab's decode-once cache against the pipeline the
peers use (torchvision ImageFolder + transforms + a DataLoader with 2 workers), side by side on
one machine, on MNIST written out as PNGs and on a seeded colour MNIST (both made by
scripts/mnist_to_images.py). Rows, per dataset, each in its own process (so its peak memory is
its own):

  vaelab-first   a fresh, empty cache: the time load_data takes to decode every file and write
                 the cache (and images per second), then seconds per epoch of `vaelab.train`;
  vaelab-cached  a new process, the cache filled: load time (a cache read), seconds per epoch;
  peers          the same model, optimizer settings and loss, fed by ImageFolder + Grayscale
                 (grey folders) + ToTensor + DataLoader(batch 64, shuffle, 2 workers), which
                 decodes every file every epoch; each epoch also evaluates val/ with the same
                 batch as vaelab's validation pass, under inference_mode, as vaelab's epoch does.

Seconds per epoch are training plus validation. The aim: once the cache is filled,
vaelab takes at most half the peers' time per epoch (ratio <= 0.5). Torch's default threads are
used by every row (DataLoader workers run one thread each, as torch sets them). Prints a
Markdown table. The full run, and a quicker one:

    VAELAB_DATA_DIR=../shared/data python bench/images.py
    VAELAB_DATA_DIR=../shared/data python bench/images.py --limit-train 6000 --limit-val 1000
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

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mnist_to_images.py"
DATASETS = {"mnist-png": [], "colour-png": ["--colour"]}  # name -> the script's extra flags
ROWS = ("vaelab-first", "vaelab-cached", "peers")
WORKERS = 2


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def vaelab_row(data: Path, epochs: int, batch_size: int, run_dir: Path, precision: str,
               device: str) -> dict:
    """Time load_data (decode + cache write on a fresh cache, else a cache read), then train."""
    import vaelab
    from vaelab.data import load_data

    config = vaelab.Config(data=str(data), epochs=epochs, batch_size=batch_size, device=device,
                           precision=precision)
    tick = time.perf_counter()
    train, val = load_data(config)
    load_seconds = time.perf_counter() - tick
    images, shape = len(train) + len(val), tuple(train.images.shape[1:])
    del train, val  # vaelab.train loads its own copy (from the cache, now filled)
    rows: list[dict] = []
    vaelab.train(config, run_dir, progress=False, on_epoch_end=rows.append)
    return {"images": images, "shape": shape, "load_seconds": load_seconds, "epochs": rows,
            "peak_mb": peak_mb()}


def peers_row(data: Path, epochs: int, batch_size: int, precision: str, device: str) -> dict:
    """The same model and loss, fed the way torchvision's examples feed a folder of images."""
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    import vaelab
    from vaelab.evaluate import EVAL_BATCH
    from vaelab.losses import elbo_terms
    from vaelab.models import build_model
    from vaelab.training_state import uses_bf16

    tick = time.perf_counter()
    train_set = datasets.ImageFolder(data / "train")  # lists the files; decodes nothing yet
    with Image.open(train_set.samples[0][0]) as first:
        grey = first.mode == "L"  # ImageFolder's loader converts every file to RGB
    steps = [transforms.Grayscale(1), transforms.ToTensor()] if grey else [transforms.ToTensor()]
    transform = transforms.Compose(steps)
    train_set.transform = transform
    val_set = datasets.ImageFolder(data / "val", transform=transform)
    load_seconds = time.perf_counter() - tick
    pin = device.startswith("cuda")  # as pytorch/examples' loaders do on a GPU
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, pin_memory=pin,
                              num_workers=WORKERS, persistent_workers=False)
    val_loader = DataLoader(val_set, batch_size=EVAL_BATCH, num_workers=WORKERS, pin_memory=pin,
                            persistent_workers=False)

    shape = tuple(train_set[0][0].shape)
    config = vaelab.Config(data=str(data), epochs=epochs, batch_size=batch_size, device=device,
                           precision=precision)
    config = config.replace(channels=shape[0], height=shape[1], width=shape[2])
    where = torch.device(device)
    bf16 = uses_bf16(config.precision, where)  # autocast as vaelab's loop does
    torch.manual_seed(config.seed)
    # As vaelab's TrainingState builds it, so that only the data pipeline differs.
    model = build_model(config).to(where, memory_format=config.torch_memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    noise = torch.Generator(where).manual_seed(config.seed + 1)

    rows = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()  # worker start-up included: it is paid every epoch
        model.train()
        train_sum = 0.0
        for x, _ in train_loader:
            x = x.to(where, non_blocking=True)
            with torch.autocast(where.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x, noise)
            loss = elbo_terms(model.likelihood.nll(out.params, x), out.mu, out.logvar).loss
            optimizer.zero_grad(set_to_none=True)
            loss.mean().backward()
            optimizer.step()
            train_sum += loss.detach().sum().item()
        train_seconds = time.perf_counter() - started
        model.eval()
        val_sum, generator = 0.0, torch.Generator(where).manual_seed(config.seed)
        with torch.inference_mode():
            for x, _ in val_loader:
                x = x.to(where, non_blocking=True)
                with torch.autocast(where.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(x, generator)
                val_sum += elbo_terms(model.likelihood.nll(out.params, x), out.mu,
                                      out.logvar).loss.sum().item()
        rows.append({"epoch": epoch, "train_seconds": train_seconds,
                     "epoch_seconds": time.perf_counter() - started,
                     "train_loss": train_sum / len(train_set), "val_loss": val_sum / len(val_set)})
    # ru_maxrss of RUSAGE_CHILDREN is the largest finished child's (a worker), not a sum.
    return {"images": len(train_set) + len(val_set), "shape": shape,
            "load_seconds": load_seconds, "epochs": rows, "peak_mb": peak_mb(),
            "worker_peak_mb": peak_mb(resource.RUSAGE_CHILDREN)}


def run_row(args: argparse.Namespace) -> dict:
    data, epochs, batch = Path(args.data), args.epochs, args.batch_size
    result = peers_row(data, epochs, batch, args.precision, args.device) if args.row == "peers" \
        else vaelab_row(data, epochs, batch, Path(args.run_dir), args.precision, args.device)
    return {**result, "threads": torch.get_num_threads()}


def make_folder(out: Path, name: str, args: argparse.Namespace) -> Path:
    """OUT/<name>[-<train>-<val>], written by scripts/mnist_to_images.py unless already there
    (written under a temporary name first, so an interrupted write is never reused)."""
    limits = [f"--limit-{split}" for split in ("train", "val")]
    counts = [args.limit_train, args.limit_val]
    suffix = "" if counts == [None, None] else f"-{counts[0] or 'all'}-{counts[1] or 'all'}"
    folder = out / (name + suffix)
    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    flags = [part for flag, count in zip(limits, counts) if count for part in (flag, str(count))]
    subprocess.run([sys.executable, str(SCRIPT), str(partial), *DATASETS[name], *flags],
                   check=True, stdout=sys.stderr)
    partial.rename(folder)
    return folder


def launch(row: str, folder: Path, cache: Path, work: Path, args: argparse.Namespace) -> dict:
    run_dir = work / "runs" / f"{folder.name}-{row}"
    shutil.rmtree(run_dir, ignore_errors=True)
    if row == "vaelab-first":
        shutil.rmtree(cache, ignore_errors=True)  # a first run: nothing decoded yet
    done = subprocess.run(
        [sys.executable, __file__, "--row", row, "--data", str(folder), "--run-dir", str(run_dir),
         "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
         "--precision", args.precision, "--device", args.device],
        env={**os.environ, "VAELAB_CACHE_DIR": str(cache)}, capture_output=True, text=True,
        check=False)
    if done.returncode:
        sys.exit(f"{folder.name} {row} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(result: dict) -> dict:
    epochs = result["epochs"]
    return {**result, "per_epoch": sum(e["epoch_seconds"] for e in epochs) / len(epochs),
            "train_part": sum(e["train_seconds"] for e in epochs) / len(epochs),
            "val_loss": epochs[-1]["val_loss"]}


def report(record: Record, results: dict, args: argparse.Namespace) -> None:
    threads = {r["threads"] for rows in results.values() for r in rows.values()}
    rows_out = []
    for name, rows in results.items():
        peers = rows.get("peers")
        for row, r in rows.items():
            shape = "x".join(map(str, r["shape"]))
            decode = f"{r['images'] / r['load_seconds']:,.0f}" if row == "vaelab-first" else "—"
            load = {"vaelab-first": "decode + cache write", "vaelab-cached": "cache read",
                    "peers": "listing"}[row]
            memory = f"{r['peak_mb']:.0f}"
            if row == "peers":
                memory += f" + {WORKERS} workers x {r['worker_peak_mb']:.0f} (shared pages " \
                    "counted in each)"
            ratio = f"{r['per_epoch'] / peers['per_epoch']:.2f}" if peers and row != "peers" \
                else ""
            record.number(f"{name} {row}", {key: r[key] for key in (
                "images", "load_seconds", "per_epoch", "train_part", "val_loss", "peak_mb")})
            rows_out.append([f"{name} ({shape})", row, f"{r['images']:,}",
                             f"{r['load_seconds']:.2f} ({load})", decode, f"{r['per_epoch']:.2f}",
                             f"{r['train_part']:.2f}", f"{r['val_loss']:.2f}", memory, ratio])
    record.table(["dataset", "row", "images (train+val)", "load s", "decode img/s", "s/epoch",
                  "of which training", "val loss", "peak RSS MB", "s/epoch vs peers"], rows_out,
                 f"Default threads: {', '.join(map(str, sorted(threads)))}; DataLoader "
                 f"workers: {WORKERS}, one thread each. Device {args.device}, precision "
                 f"{args.precision}, batch {args.batch_size}, {args.epochs} epoch(s) timed per "
                 "row; an epoch = training + validation.")
    for name, rows in results.items():
        if "vaelab-cached" in rows and "peers" in rows:
            ratio = rows["vaelab-cached"]["per_epoch"] / rows["peers"]["per_epoch"]
            record.number(f"{name}: vaelab cached / peers time per epoch", ratio)
            record.say(f"{name}: vaelab (cached) / peers time per epoch = {ratio:.2f}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="work folder: image folders, caches, runs "
                        "(default: a new temporary folder, kept)")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated, from {', '.join(DATASETS)} (default: both)")
    parser.add_argument("--limit-train", type=int, help="training images (default: all 60,000)")
    parser.add_argument("--limit-val", type=int, help="validation images (default: all 10,000)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs timed per row")
    parser.add_argument("--batch-size", type=int, default=64, help="the reference: 64")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: both pipelines")
    parser.add_argument("--precision", choices=("fp32", "auto"), default="fp32",
                        help="both pipelines' model: fp32 (the reference) or auto (bf16 autocast "
                             "on a CPU that computes it natively, as --recipe fast)")
    parser.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)  # internal: one row
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="where the results go (default bench/results/images.json)")
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args)))
        return
    names = args.datasets.split(",")
    if not names or set(names) - set(DATASETS):
        parser.error(f"--datasets takes names from {', '.join(DATASETS)}")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    work = (args.out or Path(tempfile.mkdtemp(prefix="vaelab-bench-images-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", file=sys.stderr)
    tick, present = time.perf_counter(), [p.name for p in work.iterdir()]
    folders = {name: make_folder(work, name, args) for name in names}
    written = [f.name for f in folders.values() if f.name not in present]
    made = f"{SCRIPT.name} wrote {', '.join(written) or 'nothing (all present)'} in " \
        f"{time.perf_counter() - tick:.1f} s."
    print(made, file=sys.stderr)

    record, results = Record("images", __doc__), {}
    for name, folder in folders.items():
        results[name] = {}
        for row in ROWS:
            result = summarize(launch(row, folder, work / f"cache-{folder.name}", work, args))
            results[name][row] = result
            print(f"{name} {row}: load {result['load_seconds']:.2f} s, "
                  f"{result['per_epoch']:.2f} s/epoch, peak {result['peak_mb']:.0f} MB",
                  file=sys.stderr, flush=True)
    report(record, results, args)
    record.save(args.json)


if __name__ == "__main__":
    main()
