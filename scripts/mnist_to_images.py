"""Write MNIST (or Fashion-MNIST, KMNIST) out as a folder of image files, for `--data`.

    python scripts/mnist_to_images.py OUT                 # OUT/train/<digit>/*.png, OUT/val/...
    python scripts/mnist_to_images.py OUT --colour        # a seeded colour MNIST (RGB)
    python scripts/mnist_to_images.py OUT --colour --format jpg --sizes 28,36,44

The split is MNIST's own (train/ = the 60,000 training images, val/ = the 10,000 test images),
so a run on the folder sees the same images as a run on the IDX files. --colour paints each
digit with a random foreground colour over a random background colour (seeded by the image's
index, so the folder is the same every time): pixel = background + (foreground - background)
x intensity / 255. --sizes resizes each image to a size drawn from the list (seeded), which
makes a folder of mixed sizes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vaelab.data import load_split
from vaelab.errors import VaelabError

COLOUR_SEED = 1234
VAL_OFFSET = 100_000  # validation images draw their colours from seeds of their own


def coloured(digit: np.ndarray, index: int) -> np.ndarray:
    """(28, 28) uint8 grey digit -> (28, 28, 3) uint8, colours drawn with the image's seed."""
    rng = np.random.default_rng([COLOUR_SEED, index])
    foreground, background = rng.integers(0, 256, size=(2, 3))
    alpha = digit[..., None].astype(np.float64) / 255
    return np.round(background + (foreground - background) * alpha).astype(np.uint8)


def write_split(images: np.ndarray, labels: np.ndarray, folder: Path, offset: int,
                args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    for i, (digit, label) in enumerate(zip(images, labels)):
        index = offset + i
        pixels = coloured(digit, index) if args.colour else digit
        picture = Image.fromarray(pixels)
        if sizes:
            side = sizes[np.random.default_rng([COLOUR_SEED + 1, index]).integers(len(sizes))]
            picture = picture.resize((side, side), Image.Resampling.BILINEAR)
        target = folder / str(label) / f"{i:05d}.{args.format}"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target, quality=95) if args.format == "jpg" else picture.save(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist",
                                                                "kmnist"))
    parser.add_argument("--data-dir", help="where the IDX files lie (default: $VAELAB_DATA_DIR)")
    parser.add_argument("--colour", action="store_true", help="random colours per image (RGB)")
    parser.add_argument("--format", default="png", choices=("png", "jpg", "bmp", "webp"))
    parser.add_argument("--sizes", help="comma-separated sides to resize images to, e.g. 28,40")
    parser.add_argument("--limit-train", type=int, help="only the first N training images")
    parser.add_argument("--limit-val", type=int, help="only the first N test images")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    try:  # missing or damaged IDX files: vaelab's one line (where they were looked for), no trace
        train = load_split(args.dataset, "train", args.data_dir, args.limit_train)
        val = load_split(args.dataset, "val", args.data_dir, args.limit_val)
    except VaelabError as err:
        sys.exit(f"{parser.prog}: error: {err}")
    write_split(train.images[:, 0].numpy(), train.labels.numpy(), args.out / "train", 0, args)
    write_split(val.images[:, 0].numpy(), val.labels.numpy(), args.out / "val", VAL_OFFSET, args)
    print(f"wrote {len(train)} training and {len(val)} validation images to {args.out}")


if __name__ == "__main__":
    main()
