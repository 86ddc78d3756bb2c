"""A run's self-contained HTML report: every figure (figures.py), the curves' table beside the
reference notebook's, the evaluation and the config, in one file."""

from __future__ import annotations

import base64
import html
import json
import os
from datetime import datetime
from pathlib import Path

from . import generate, plots
from .checkpoint import atomic_open, file_sha256
from .data import Split
from .errors import VaelabError
from .figures import standard_figures, targets
from .models import count_parameters
from .runs import (
    FIGURES,
    REPORT,
    Run,
    checkpoint_path,
    eval_path,
    load_run,
    term_columns,
    validation_of,
)
from .units import SCORES_FILE

# The reference notebook's table (SEED.md): epoch -> (train, val) in its convention, each
# batch's summed loss averaged over batches of 64: 938 training and 157 validation batches.
REFERENCE_TABLE = {1: (7267.97, 7022.17), 5: (6773.17, 6675.44), 10: (6629.47, 6563.28)}
REFERENCE_BATCHES_PER_IMAGE = (938 / 60_000, 157 / 10_000)


def write_report(run_dir: str | os.PathLike, data_dir: str | None = None,
                 out: str | os.PathLike | None = None, checkpoint: str = "best",
                 device: str | None = None, data: str | None = None) -> Path:
    """Save every figure into RUN/figures/ and write RUN/report.html embedding them; with
    `out`, both go into that folder instead and the run folder is left as it was."""
    run = load_run(run_dir, checkpoint, device)
    figure_dir = Path(out) if out else run.path / FIGURES
    val = validation_of(run, data_dir, data)
    paths = {name: plots.save(figure, figure_dir / f"{name}.png")
             for name, figure in standard_figures(run, val).items()}
    report = (Path(out) if out else run.path) / REPORT
    try:
        with atomic_open(report) as file:
            file.write(render_html(run, paths, _captions(run, val)))
    except OSError as err:
        raise VaelabError(f"cannot write {report} ({err.strerror}); is the run folder writable?")
    return report


# ---- HTML ----------------------------------------------------------------------------------

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}table{border-collapse:collapse;
margin:1em 0}td,th{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee}figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}"""

def _captions(run: Run, val: Split) -> dict[str, str]:
    source, target = generate.default_pair(val)
    between = (f"validation images of class {source} and of class {target}"
               if val.labels is not None else f"validation images {source} and {target}")
    coloured = ", coloured by class" if val.labels is not None else ""
    return {
        "curves": "Negative ELBO and its two parts per epoch (nats per image).",
        "reconstructions": "Validation images (top) and their reconstructions from μ "
                           "(bottom), shown as the mean E[x|z].",
        "samples": "New images: z drawn from the prior N(0, I), decoded, shown as the mean "
                   "E[x|z].",
        "interpolation": f"Linear interpolation between the posterior means of {between}.",
        "latent": f"Posterior means of the {len(val):,} validation images{coloured}.",
        "manifold": "The 2-D latent space decoded on a grid over the prior's quantiles.",
        "temperatures": "The same prior noise decoded with each latent group's standard "
                        "deviation scaled by T: lower temperatures give cleaner, less varied "
                        "images.",
        "levels": "What each level holds: row k keeps the top k latent groups of one prior "
                  "sample and draws the groups below afresh in each column.",
        "traversal": "Latent traversals: for three validation images, each unit in turn set "
                     "from -3 to 3 with the others held at the image's posterior mean; units "
                     "sorted by their KL, which each row names (nats).",
        "unit_kl": "Each unit's KL(q(z_d|x) || N(0, 1)) over the validation images: units "
                   "near 0 are inactive (the posterior is the prior whatever the image).",
        "mutual_information": "Each unit's mutual information with each factor of variation, "
                              "over the factor's entropy (disentanglement.json): a "
                              "disentangled code has one bright cell per column and per row.",
        **(_conditional_captions(run) if run.model.conditional else {}),
    }


def _conditional_captions(run: Run) -> dict[str, str]:
    return {
        "samples": "Asked for by class: one row per class, and down each column one z drawn "
                   "from N(0, I), so a column is one style written as every class.",
        "analogies": "Analogies: validation images (first column) encoded with their labels, "
                     "and each code decoded with every label: the code keeps the style, the "
                     "label sets the class.",
        "interpolation": "Between the codes of two validation images, each encoded with its "
                         "own label; the one-hot labels are blended along the path, so the ends "
                         "are the two reconstructions.",
        "latent": "Posterior means μ(x, y) of the validation images, coloured by class: the "
                  "label carries the class, so the codes separate by class far less than an "
                  "unconditional model's.",
        "manifold": f"The 2-D latent space decoded as class {run.classes[0]} on a grid over "
                    "the prior's quantiles.",
    }


def render_html(run: Run, figures: dict[str, Path], captions: dict[str, str]) -> str:
    last = run.metrics[-1] if run.metrics else {}
    shape = "x".join(map(str, run.model.shape))
    sections = [
        f"<h1>vaelab run <code>{escaped(run.path.name)}</code></h1>",
        f"<p class=sub>{escaped(run.config.data or run.config.dataset)} ({shape} images, "
        f"{escaped(run.model.summary)}), {run.epoch} epochs, "
        f"{count_parameters(run.model):,} parameters, written "
        f"{datetime.now():%Y-%m-%d %H:%M}. Final validation loss "
        f"{last.get('val_loss', float('nan')):.2f} nats per image.</p>",
    ]
    if run.config.data is None and run.config.dataset == "mnist":
        sections += ["<h2>Against the reference notebook</h2>", _reference_table(run)]
    sections += ["<h2>Per epoch</h2>", _metrics_table(run)]
    sections += _evaluation_section(run)
    sections += _disentanglement_section(run)
    for name, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode()
        sections.append(f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
                        f"<figcaption>{escaped(captions.get(name, name))}</figcaption></figure>")
    sections += ["<h2>Config</h2>", _dict_table(run.config.to_dict())]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vaelab "
            f"{escaped(run.path.name)}</title><style>{CSS}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def escaped(value: object) -> str:
    return html.escape(str(value))


def html_table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escaped(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else escaped(value)


def _reference_table(run: Run) -> str:
    ours = {int(row["epoch"]): row for row in run.metrics}
    rows = []
    for epoch, (train, val) in REFERENCE_TABLE.items():
        mine = ours.get(epoch, {})
        rows.append([epoch, train, val, mine.get("train_batch_loss", "—"),
                     mine.get("val_batch_loss", "—"), train * REFERENCE_BATCHES_PER_IMAGE[0],
                     val * REFERENCE_BATCHES_PER_IMAGE[1], mine.get("train_loss", "—"),
                     mine.get("val_loss", "—")])
    note = ("<p>Seed convention: each batch's summed loss averaged over batches; "
            "nats per image = that × batches / images.</p>")
    return note + html_table(["epoch", "seed train", "seed val", "ours train", "ours val",
                          "seed train nats/img", "seed val nats/img", "ours train nats/img",
                          "ours val nats/img"], rows)


def _metrics_table(run: Run) -> str:
    named = term_columns(run.metrics[0]) if run.metrics else []
    columns = ["epoch", "train_loss", "val_loss", "val_recon", "val_kl", *named,
               "train_batch_loss", "val_batch_loss", "epoch_seconds"]
    return html_table(columns, [[row[c] for c in columns] for row in run.metrics])


def fresh_result(run: Run, path: Path) -> dict | None:
    """A measurement's JSON if it measured the very checkpoint file the run has now (a run
    replaced with --force, or trained further, has another); else None."""
    try:
        result = json.loads(path.read_text())
        current = (run.checkpoint_sha256 if result["checkpoint"] == run.checkpoint
                   else file_sha256(checkpoint_path(run.path, result["checkpoint"])))
        return result if result["checkpoint_sha256"] == current else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _disentanglement_section(run: Run) -> list[str]:
    """disentanglement.json's scores, if it scored the checkpoint the run has now."""
    path = run.path / SCORES_FILE
    if not path.is_file():
        return []
    result = fresh_result(run, path)
    if result is None:
        return ["<h2>Disentanglement</h2>", f"<p>{escaped(path.name)} scored a checkpoint this run "
                f"no longer has; run <code>vaelab disentanglement {escaped(run.path)}</code> "
                "again.</p>"]
    protocol = result["protocol"]
    caption = (f"<p>Against the data's factors ({escaped(', '.join(result['factors']))}), "
               f"{escaped(result['checkpoint'])}.pt (epoch {result['epoch']}); each score the mean "
               f"and sd of {protocol['repeats']} draws of {protocol['train_points']:,} "
               f"training and {protocol['test_points']:,} test points.</p>")
    rows = [[f"{metric} {name}", value["mean"], value["sd"]]
            for metric, values in result["scores"].items() for name, value in values.items()]
    return ["<h2>Disentanglement</h2>", caption, html_table(["score", "mean", "sd"], rows)]


def _evaluation_section(run: Run) -> list[str]:
    """eval.json, shown only if it measured the very checkpoint file the run has now (a run
    replaced with --force, or trained further, has another)."""
    path = eval_path(run.path, "test")
    if not path.is_file():
        return []
    result = fresh_result(run, path)
    if result is None:
        return ["<h2>Evaluation</h2>", f"<p>{escaped(path.name)} measured a checkpoint this run no "
                f"longer has; run <code>vaelab evaluate {escaped(run.path)}</code> again.</p>"]
    caption = (f"<p>{result['images']:,} {escaped(result['split'])} images, "
               f"{escaped(targets(result['binarize']))}, {escaped(result['checkpoint'])}.pt "
               f"(epoch {result['epoch']}), "
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
    table = html_table(["nats per image", "mean", "± standard error"], rows)
    if result.get("density_of_8bit"):
        table += html_table(["bits per dimension", "mean", "± standard error"], [
            ["−log p(x), importance-weighted", f"{result['nll_bits_per_dim']:.4f}",
             f"{result['nll_bits_per_dim_stderr']:.4f}"],
            ["−ELBO", f"{result['neg_elbo_bits_per_dim']:.4f}", "—"]])
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
    return html_table(["setting", "value"], [[k, str(v)] for k, v in values.items()])
