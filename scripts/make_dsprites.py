"""Generate dSprites (vaelab.dsprites) into an .npz that `--data` reads, factors included.

    python scripts/make_dsprites.py data/dsprites.npz                  # all 737,280 images
    python scripts/make_dsprites.py data/dsprites-20k.npz --subset 20000 --seed 0

The file holds `images` (N, 64, 64) uint8, `factors` (N, 5) int64 (each factor's index),
`factor_values` (N, 5) float32 and `factor_names`; about 3 GB in memory for the full set, 18 MB
compressed on disk. It is written atomically: an interrupted run leaves no file.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from vaelab.checkpoint import atomic_open
from vaelab.dsprites import FACTOR_SIZES, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument("--subset", type=int, default=None,
                        help="only this many combinations, drawn with --seed (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the subset")
    parser.add_argument("--uncompressed", action="store_true",
                        help="store the arrays as they are (3 GB for the full set, read in "
                             "seconds rather than about half a minute)")
    args = parser.parse_args()
    total = math.prod(FACTOR_SIZES)
    if args.subset is not None and not 1 <= args.subset <= total:
        sys.exit(f"error: --subset {args.subset} must be between 1 and {total}")
    if not args.out.endswith(".npz"):
        sys.exit(f"error: {args.out} must end in .npz (vaelab reads the arrays by name)")
    started = time.perf_counter()
    arrays = generate(args.subset, args.seed)
    with atomic_open(args.out, "wb") as out:
        (np.savez if args.uncompressed else np.savez_compressed)(out, **arrays)
    print(f"wrote {len(arrays['images'])} images with factors "
          f"{', '.join(arrays['factor_names'])} to {args.out} "
          f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
