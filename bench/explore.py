"""How live the explorer feels: the time from a slider value to the image it shows.

Times, on the run's own device under inference mode, the decode alone and the whole slider
handler (slider values -> z -> decoded 224x224 image + the marked latent map), then, with
--screenshot, serves the app and saves a picture of it from headless Chromium (the manual's).

    VAELAB_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python bench/explore.py \
        runs/seed-defaults --screenshot docs/figures/explore.png
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vaelab.data import validation_split
from vaelab.explore import Explorer
from vaelab.runs import load_run

from record import Record


def milliseconds(action, repeats: int) -> tuple[float, float]:
    """Median and 95th percentile of `repeats` timed calls, after a warm-up."""
    for _ in range(5):
        action()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=20)[-1]


def screenshot(explorer: Explorer, path: str, browser_path: str) -> None:
    from playwright.sync_api import sync_playwright

    from vaelab.explorer_app import launch

    app = launch(explorer, port=7861, block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path)
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto("http://127.0.0.1:7861")
            page.locator("#slider-image img").wait_for()
            slider = page.locator("#slider-1 input[type=number]")
            slider.fill("2.5")  # move one direction, as a user would, before the picture
            slider.press("Enter")
            time.sleep(2)
            page.screenshot(path=path, full_page=True)
            browser.close()
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--screenshot", metavar="PNG", help="also save a picture of the app")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--json", help="where the results go (default bench/results/"
                                       "explore.json)")
    args = parser.parse_args()

    run = load_run(args.run, device=None)  # the device the run trained on
    started = time.perf_counter()
    explorer = Explorer(run, validation_split(run.config))
    setup = time.perf_counter() - started
    base = explorer.code(0)
    values = explorer.to_sliders(base)
    moved = [values[0] + 1.0, *values[1:]]

    device = next(run.model.parameters()).device
    record = Record("explore", __doc__)
    record.number("setup seconds", setup)
    rows = [[f"set up: encode the {len(explorer.codes):,} validation images, PCA, draw the map",
             f"{setup * 1000:.0f}", ""]]
    for name, action in (("decode z -> 224x224 image", lambda: explorer.decode(base)),
                         ("slider handler: z, image, marked map",
                          lambda: explorer.at_sliders(moved, base)),
                         ("interpolation: point + 10-step strip",
                          lambda: explorer.interpolate(0, 1, 0.3, 10, False))):
        median, p95 = milliseconds(action, args.repeats)
        record.number(name, {"median ms": median, "95th percentile ms": p95})
        rows.append([name, f"{median:.2f}", f"{p95:.2f}"])
    record.table(["step", "median (ms)", "95th percentile (ms)"], rows,
                 f"{args.run} on {device}, {torch.get_num_threads()} threads, {args.repeats} "
                 "timed calls per step after a warm-up. The model's side only: Gradio's PNG "
                 "encoding and the browser's round trip come on top.")
    if args.screenshot:
        screenshot(explorer, args.screenshot, args.chromium)
        record.figure(args.screenshot)
    record.save(args.json)


if __name__ == "__main__":
    main()
