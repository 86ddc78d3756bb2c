"""`vaelab compare RUN RUN...`: runs side by side in one self-contained HTML page.

The page holds: which run is which (letters A, B, ... label them everywhere); the settings
that differ; the final and best metrics and each run's eval.json; the curves overlaid; the
runs' reconstructions of the same validation images and their decodings of the same prior
noise. Runs of different families or data are allowed: where something cannot be compared
(other validation images, priors of other sizes, losses of other data), the page says so at
that place and shows each run on its own instead.
"""

from __future__ import annotations

import base64
import io
import os
import string
from pathlib import Path

import torch

from . import generate, plots
from .checkpoint import atomic_open
from .config import resolve_device
from .data import Split, to_float
from .errors import VaelabError
from .figures import ink
from .models import count_parameters
from .report import CSS, escaped, fresh_result, html_table
from .runs import Run, eval_path, load_run, term_columns, validation_of

PICTURES = 10  # validation images and prior draws per run
DEFAULT_OUT = "compare.html"


def compare_runs(run_dirs: list[str], out: str | os.PathLike = DEFAULT_OUT,
                 checkpoint: str = "best", data_dir: str | None = None, device: str = "cpu"
                 ) -> Path:
    """Load every run (any defect is one line, before anything is written), then write the
    page atomically to `out`."""
    resolve_device(device)  # a flag's error first, whatever else is wrong
    if len(run_dirs) < 2:
        raise VaelabError(f"compare needs at least two runs, got {len(run_dirs)}: vaelab "
                          "compare RUN RUN [RUN...]")
    if len(run_dirs) > len(string.ascii_uppercase):
        raise VaelabError(f"compare takes at most 26 runs, got {len(run_dirs)}")
    runs = [load_run(path, checkpoint, device) for path in run_dirs]
    letters = list(string.ascii_uppercase[:len(runs)])
    page = render(runs, letters, data_dir)
    path = Path(out)
    try:
        with atomic_open(path) as file:
            file.write(page)
    except OSError as err:
        raise VaelabError(f"cannot write {path} ({err.strerror}); choose another --out") from None
    return path


def render(runs: list[Run], letters: list[str], data_dir: str | None) -> str:
    sections = [f"<h1>vaelab: {len(runs)} runs compared</h1>", _who(runs, letters),
                "<h2>Settings that differ</h2>", _differences(runs, letters),
                "<h2>Metrics</h2>", _metrics(runs, letters), *_curves(runs, letters),
                *_pictures(runs, letters, data_dir)]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vaelab compare: "
            f"{escaped(', '.join(run.path.name for run in runs))}</title><style>{CSS}</style>"
            "</head><body>" + "\n".join(sections) + "</body></html>\n")


def _who(runs: list[Run], letters: list[str]) -> str:
    rows = [[letter, str(run.path), run.config.model, _data_name(run),
             "x".join(map(str, run.model.shape)), run.epoch, f"{count_parameters(run.model):,}"]
            for letter, run in zip(letters, runs)]
    return html_table(["", "run", "family", "data", "images", "epoch", "parameters"], rows)


def _data_name(run: Run) -> str:
    return run.config.data or run.config.dataset


def _differences(runs: list[Run], letters: list[str]) -> str:
    settings = [run.config.to_dict() for run in runs]
    differ = [key for key in settings[0] if len({repr(s[key]) for s in settings}) > 1]
    same = len(settings[0]) - len(differ)
    if not differ:
        return f"<p>All {same} settings are the same.</p>"
    rows = [[key, *(str(s[key]) for s in settings)] for key in differ]
    return html_table(["setting", *letters], rows) + f"<p>The other {same} settings are the " \
        "same.</p>"


def _metrics(runs: list[Run], letters: list[str]) -> str:
    """Final and best validation numbers, the terms only some runs name, and eval.json."""
    header = ["", "epochs", "final −ELBO", "best −ELBO (epoch)", "final recon", "final KL",
              "own terms (final)", "seconds / epoch", "−log p(x), IW ± se", "bits/dim"]
    rows = []
    for letter, run in zip(letters, runs):
        last = run.metrics[-1] if run.metrics else None
        if last is None:
            rows.append([letter, run.epoch, "— (no metrics.csv)", *["—"] * 7])
            continue
        best = min(run.metrics, key=lambda row: row["val_loss"])
        own = ", ".join(f"{key[4:]} {last[key]:.2f}" for key in term_columns(last)) or "—"
        seconds = sum(row["epoch_seconds"] for row in run.metrics) / len(run.metrics)
        rows.append([letter, len(run.metrics), last["val_loss"],
                     f"{best['val_loss']:.2f} ({best['epoch']})", last["val_recon"],
                     last["val_kl"], own, seconds, *_evaluation(run)])
    notes = ["<p>Nats per validation image.</p>"]
    if len({(_data_name(run), run.model.shape, run.config.binarize) for run in runs}) > 1:
        notes.append("<p><b>These runs trained on different data</b> (or different targets): "
                     "their losses are probabilities of different images and do not "
                     "compare.</p>")
    return html_table(header, rows) + "".join(notes)


def _evaluation(run: Run) -> list[str]:
    result = fresh_result(run, eval_path(run.path, "test"))
    if result is None:
        return ["— (no eval.json for this checkpoint)", "—"]
    bits = (f"{result['nll_bits_per_dim']:.4f}" if result.get("density_of_8bit")
            else "— (not a density of 8-bit images)")
    return [f"{result['nll']:.2f} ± {result['nll_stderr']:.2f} (K={result['iw_samples']})", bits]


def _curves(runs: list[Run], letters: list[str]) -> list[str]:
    measured = {letter: run.metrics for letter, run in zip(letters, runs) if run.metrics}
    if not measured:
        return []
    return ["<h2>Curves</h2>", _image(plots.compared_curves(measured), "curves",
                                      "Validation (solid) and training (dashed), nats per "
                                      "image.")]


def _pictures(runs: list[Run], letters: list[str], data_dir: str | None) -> list[str]:
    splits = [validation_of(run, data_dir) for run in runs]
    return ["<h2>Reconstructions</h2>", *_reconstructions(runs, letters, splits),
            "<h2>Samples</h2>", *_samples(runs, letters)]


def _same_images(runs: list[Run], splits: list[Split]) -> bool:
    first = splits[0]
    return all(run.model.shape == runs[0].model.shape and len(split) == len(first)
               and torch.equal(split.images[:PICTURES], first.images[:PICTURES])
               for run, split in zip(runs, splits))


def _reconstructions(runs: list[Run], letters: list[str], splits: list[Split]) -> list[str]:
    if _same_images(runs, splits):
        images = splits[0].images[:PICTURES]
        labels = _first_labels(splits[0])
        rows = [to_float(images), *(generate.reconstruct(run.model, images, labels=labels)
                                    for run in runs)]
        grid = plots.image_grid(torch.cat(rows), PICTURES, "the same validation images "
                                "(top), each run's reconstruction from its posterior mean",
                                ink(runs[0]), row_names=["images", *letters])
        return [_image(grid, "reconstructions", "The same validation images (top row), then "
                       "each run's reconstruction of them from its posterior mean.")]
    parts = ["<p>The runs hold different validation images: each is shown on its own.</p>"]
    for letter, run, split in zip(letters, runs, splits):
        images = split.images[:PICTURES]
        decoded = generate.reconstruct(run.model, images, labels=_first_labels(split))
        grid = plots.image_grid(torch.cat([to_float(images), decoded]), PICTURES,
                                f"{letter}: its validation images and their reconstructions",
                                ink(run), row_names=["images", letter])
        parts.append(_image(grid, f"reconstructions {letter}"))
    return parts


def _samples(runs: list[Run], letters: list[str]) -> list[str]:
    """The same prior noise through every decoder, where the priors take the same noise
    (as many numbers per sample) and the images have one shape; else each its own draw."""
    unable = [letter for letter, run in zip(letters, runs) if not generate.can_sample(run.model)]
    if unable:
        return [f"<p>{escaped(', '.join(unable))} cannot sample yet (a discrete autoencoder "
                "whose prior is not trained: <code>vaelab train-prior RUN</code>): no samples "
                "are compared.</p>"]
    noise = [generate.prior_noise(run.model, PICTURES, seed=0) for run in runs]
    sizes = ", ".join(f"{letter}: {n.shape[1]}" for letter, n in zip(letters, noise))
    shapes = ", ".join(f"{letter}: {'x'.join(map(str, run.model.shape))}"
                       for letter, run in zip(letters, runs))
    if len({run.model.shape for run in runs}) > 1:
        why = f"The runs' images differ in shape ({shapes})"
    elif len({n.shape for n in noise}) > 1:
        why = f"The priors take noise of different sizes ({sizes} numbers per sample)"
    else:
        rows = [generate.from_noise(run.model, noise[0], labels=_sample_labels(run))
                for run in runs]
        grid = plots.image_grid(torch.cat(rows), PICTURES, "the same prior noise decoded by "
                                "each run (mean E[x|z])", ink(runs[0]), row_names=letters)
        return [_image(grid, "samples", "The same prior noise decoded by each run, shown "
                       "as E[x|z]; a conditional run draws the classes in turn.")]
    parts = [f"<p>{escaped(why)}: each run draws its own.</p>"]
    for letter, run, own in zip(letters, runs, noise):
        images = generate.from_noise(run.model, own, labels=_sample_labels(run))
        parts.append(_image(plots.image_grid(images, PICTURES, f"{letter}: prior samples",
                                             ink(run), row_names=[letter]),
                            f"samples {letter}"))
    return parts


def _first_labels(split: Split) -> torch.Tensor | None:
    return split.labels[:PICTURES] if split.labels is not None else None


def _sample_labels(run: Run) -> torch.Tensor | None:
    """A conditional run draws the classes in turn; others take no label."""
    return torch.arange(PICTURES) % run.model.classes if run.model.classes else None


def _image(figure, name: str, caption: str = "") -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)
    data = base64.b64encode(buffer.getvalue()).decode()
    return (f"<figure><img alt='{escaped(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{escaped(caption)}</figcaption></figure>")
