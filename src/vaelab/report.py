"""A run's figures (run -> matplotlib Figure) and its self-contained HTML report."""

from __future__ import annotations

import base64
import html
import json
import os
from datetime import datetime
from pathlib import Path

import torch
from matplotlib.figure import Figure

from . import generate, plots
from .checkpoint import atomic_open, file_sha256
from .data import Split, to_float, validation_split
from .errors import VaelabError
from .model import count_parameters
from .runs import FIGURES, REPORT, Run, checkpoint_path, eval_path, load_run

# The seed's table (SEED.md): epoch -> (train, val) in its convention, each batch's summed
# loss averaged over batches of 64: 938 training and 157 validation batches.
SEED_TABLE = {1: (7267.97, 7022.17), 5: (6773.17, 6675.44), 10: (6629.47, 6563.28)}
SEED_BATCHES_PER_IMAGE = (938 / 60_000, 157 / 10_000)


def _at_least(flag: str, value: float, low: float) -> None:
    if value < low:
        raise VaelabError(f"{flag} {value} is not allowed: it must be at least {low}")


def figure_reconstructions(run: Run, val: Split, n: int = 16, sample: bool = False,
                           seed: int = 0) -> Figure:
    _at_least("--n", n, 1)
    originals = val.images[:n]
    decoded = generate.reconstruct(run.model, originals, sample, seed)
    return plots.reconstructions(to_float(originals), decoded, sample)


def figure_samples(run: Run, n: int = 64, temperature: float = 1.0, seed: int = 0) -> Figure:
    _at_least("--n", n, 1)
    if not temperature > 0:
        raise VaelabError(f"--temperature {temperature} is not allowed: it must be > 0")
    return plots.samples(generate.sample_prior(run.model, n, temperature, seed), temperature)


def figure_interpolation(run: Run, val: Split, digit_from: int = 6, digit_to: int = 8,
                         steps: int = 10, pairs: int = 4, spherical: bool = False,
                         index: tuple[int, int] | None = None) -> Figure:
    _at_least("--steps", steps, 2)
    _at_least("--pairs", pairs, 1)
    if index is not None:
        for i in index:
            if not 0 <= i < len(val):
                raise VaelabError(f"--index {i} is outside the validation set (0-{len(val) - 1})")
        chosen = [tuple(index)]
    else:
        chosen = generate.pick_pairs(val, digit_from, digit_to, pairs)
    strips = torch.stack([generate.interpolate(run.model, val.images[i], val.images[j], steps,
                                               spherical) for i, j in chosen])
    first, last = (int(val.labels[k]) for k in chosen[0])
    kind = "spherical" if spherical else "linear"
    return plots.interpolations(strips, f"{first} → {last}: {kind} path between posterior "
                                        f"means, {steps} steps")


def figure_latent(run: Run, val: Split, method: str = "pca") -> Figure:
    codes = generate.encode_means(run.model, val.images)
    points = generate.project_2d(codes, method, run.config.seed)
    name = "t-SNE" if method == "tsne" else ("PCA" if codes.shape[1] > 2 else "z")
    return plots.latent_scatter(points, val.labels, name)


def figure_manifold(run: Run, n: int = 20) -> Figure:
    _at_least("--n", n, 2)
    return plots.manifold(generate.manifold(run.model, n))


def figure_curves(run: Run) -> Figure:
    if not run.metrics:
        raise VaelabError(f"{run.path} has no metrics.csv rows to plot")
    return plots.curves(run.metrics)


def standard_figures(run: Run, val: Split) -> dict[str, Figure]:
    """Every figure of a run at its defaults, by file stem."""
    figures = {"curves": figure_curves(run), "reconstructions": figure_reconstructions(run, val),
               "samples": figure_samples(run, seed=run.config.seed),
               "interpolation": figure_interpolation(run, val),
               "latent": figure_latent(run, val)}
    if run.model.latent_dim == 2:
        figures["manifold"] = figure_manifold(run)
    return figures


def write_report(run_dir: str | os.PathLike, data_dir: str | None = None,
                 out: str | os.PathLike | None = None, checkpoint: str = "best",
                 device: str | None = None) -> Path:
    """Save every figure into RUN/figures/ and write RUN/report.html embedding them; with
    `out`, both go into that folder instead and the run folder is left as it was."""
    run = load_run(run_dir, checkpoint, device)
    figure_dir = Path(out) if out else run.path / FIGURES
    val = validation_split(run.config, data_dir)
    paths = {name: plots.save(figure, figure_dir / f"{name}.png")
             for name, figure in standard_figures(run, val).items()}
    report = (Path(out) if out else run.path) / REPORT
    try:
        with atomic_open(report) as file:
            file.write(render_html(run, paths))
    except OSError as err:
        raise VaelabError(f"cannot write {report} ({err.strerror}); is the run folder writable?")
    return report


# ---- HTML ----------------------------------------------------------------------------------

_CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}table{border-collapse:collapse;
margin:1em 0}td,th{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee}figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}"""

_CAPTIONS = {
    "curves": "Negative ELBO and its two parts per epoch (nats per image).",
    "reconstructions": "Validation digits (top) and their reconstructions from μ (bottom).",
    "samples": "New digits: z drawn from the prior N(0, I), decoded (Bernoulli means).",
    "interpolation": "Linear interpolation between the posterior means of validation 6s and 8s.",
    "latent": "Posterior means of the 10,000 validation images, coloured by digit.",
    "manifold": "The 2-D latent space decoded on a grid over the prior's quantiles.",
}


def render_html(run: Run, figures: dict[str, Path]) -> str:
    last = run.metrics[-1] if run.metrics else {}
    sections = [
        f"<h1>vaelab run <code>{_e(run.path.name)}</code></h1>",
        f"<p class=sub>{_e(run.config.dataset)}, {run.epoch} epochs, "
        f"{count_parameters(run.model):,} parameters, written "
        f"{datetime.now():%Y-%m-%d %H:%M}. Final validation loss "
        f"{last.get('val_loss', float('nan')):.2f} nats per image.</p>",
        "<h2>Against the seed</h2>", _seed_table(run),
        "<h2>Per epoch</h2>", _metrics_table(run),
    ]
    sections += _evaluation_section(run)
    for name, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode()
        sections.append(f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
                        f"<figcaption>{_e(_CAPTIONS.get(name, name))}</figcaption></figure>")
    sections += ["<h2>Config</h2>", _dict_table(run.config.to_dict())]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vaelab "
            f"{_e(run.path.name)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else _e(value)


def _seed_table(run: Run) -> str:
    ours = {int(row["epoch"]): row for row in run.metrics}
    rows = []
    for epoch, (train, val) in SEED_TABLE.items():
        mine = ours.get(epoch, {})
        rows.append([epoch, train, val, mine.get("train_batch_loss", "—"),
                     mine.get("val_batch_loss", "—"), train * SEED_BATCHES_PER_IMAGE[0],
                     val * SEED_BATCHES_PER_IMAGE[1], mine.get("train_loss", "—"),
                     mine.get("val_loss", "—")])
    note = ("<p>Seed convention: each batch's summed loss averaged over batches; "
            "nats per image = that × batches / images.</p>")
    return note + _table(["epoch", "seed train", "seed val", "ours train", "ours val",
                          "seed train nats/img", "seed val nats/img", "ours train nats/img",
                          "ours val nats/img"], rows)


def _metrics_table(run: Run) -> str:
    columns = ["epoch", "train_loss", "val_loss", "val_recon", "val_kl", "train_batch_loss",
               "val_batch_loss", "epoch_seconds"]
    return _table(columns, [[row[c] for c in columns] for row in run.metrics])


def _evaluation_section(run: Run) -> list[str]:
    """eval.json, shown only if it measured the very checkpoint file the run has now (a run
    replaced with --force, or trained further, has another)."""
    path = eval_path(run.path, "test")
    if not path.is_file():
        return []
    try:
        result = json.loads(path.read_text())
        current = (run.checkpoint_sha256 if result["checkpoint"] == run.checkpoint
                   else file_sha256(checkpoint_path(run.path, result["checkpoint"])))
        fresh = result["checkpoint_sha256"] == current
    except (OSError, ValueError, KeyError, TypeError):
        fresh = False
    if not fresh:
        return ["<h2>Evaluation</h2>", f"<p>{_e(path.name)} measured a checkpoint this run no "
                f"longer has; run <code>vaelab evaluate {_e(run.path)}</code> again.</p>"]
    caption = (f"<p>{result['images']:,} {_e(result['split'])} images, {_e(result['binarize'])} "
               f"targets, {_e(result['checkpoint'])}.pt (epoch {result['epoch']}), "
               f"K = {result['iw_samples']:,} importance samples per image.</p>")
    rows = [[f"−log p(x), importance-weighted (K = {result['iw_samples']:,})", result["nll"],
             result["nll_stderr"]],
            ["−ELBO", result["neg_elbo"], result["neg_elbo_stderr"]],
            ["  reconstruction", result["recon"], "—"], ["  KL", result["kl"], "—"]]
    if "exact_nll" in result:
        rows.insert(1, ["−log p(x), exact (quadrature over z)", result["exact_nll"],
                        result["exact_nll_stderr"]])
    if "pixel_entropy" in result:
        rows.append(["grayscale floor (pixel entropy)", result["pixel_entropy"], "—"])
    table = _table(["nats per image", "mean", "± standard error"], rows)
    if "exact_nll" in result:
        table += (f"<p>The estimate falls short of the exact value by "
                  f"{result['exact_gap_mean']:.3f} nats on average (median "
                  f"{result['exact_gap_median']:.4f}); "
                  f"{100 * result['exact_share_off']:.1f}% of images are off by more than 0.05 "
                  f"nats, the worst by {result['exact_gap_worst']:.2f} (image "
                  f"{result['exact_gap_worst_image']}).</p>")
    units = (f"<p>{result['active_units']} of {result['latent_dim']} latent units active; "
             f"median effective sample size {result['effective_samples_median']:.0f} of "
             f"{result['iw_samples']:,}.</p>")
    return ["<h2>Evaluation</h2>", caption, table, units]


def _dict_table(values: dict) -> str:
    return _table(["setting", "value"], [[k, str(v)] for k, v in values.items()])
