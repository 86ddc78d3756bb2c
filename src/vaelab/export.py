"""A run exported as a Hugging Face-style folder (`vaelab export RUN DIR`): the weights as
safetensors, the config as JSON, a model card, a picture, the training curves' numbers and,
with `onnx`, the decoder as ONNX.

    DIR/model.safetensors   the model's weights (and buffers): tensors only, never code
    DIR/config.json         the model's config, the data's shape and classes, the epoch, the
                            vaelab version, the weights' SHA-256 and where they came from
    DIR/README.md           the model card: what it is, its numbers, a picture, how to load it
    DIR/samples.png         prior samples (the card's picture; a discrete autoencoder without
                            a trained prior shows reconstructions instead)
    DIR/metrics.csv         the run's metrics, epoch by epoch (so `vaelab curves` works)
    DIR/decoder.onnx        with --onnx: a code (and a class, for a conditional run) in,
                            the picture E[x|z] out

`from_pretrained(DIR)` rebuilds the model from these files alone; `load_run` takes such a
folder too, so every figure command, `evaluate` and `report` work on it. Loading reads JSON
and safetensors only: no pickle, so loading a folder never runs code from it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import file_sha256
from .errors import VaelabError
from .pretrained import DESCRIPTION, FORMAT, FORMAT_VERSION, WEIGHTS, is_export
from .runs import METRICS_FILE, Run, eval_path, load_exported, load_run
from .version import __version__

CARD = "README.md"
PICTURE = "samples.png"
ONNX_FILE = "decoder.onnx"
EXPORT_FILES = (WEIGHTS, DESCRIPTION, CARD, PICTURE, METRICS_FILE, ONNX_FILE)


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, checkpoint: str = "best",
               onnx: bool = False, force: bool = False, device: str = "cpu") -> Path:
    """Write RUN's model into the folder `out`; returns it. Everything is written into a
    temporary folder beside `out` first and moved into place at the end, so a failure leaves
    `out` as it was."""
    target = Path(out)
    _check_target(target, force)
    if onnx:
        _require_onnx()
    run = load_run(run_dir, checkpoint, device)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_folder(run, staging, onnx)
        _usual_permissions(staging)
        _put_in_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_target(target: Path, force: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise VaelabError(f"{target} is a file; choose a folder for the export")
    if is_export(target) and not force:
        raise VaelabError(f"{target} already holds an export; pass --force to replace it, or "
                          "choose another folder")
    if not is_export(target) and any(target.iterdir()):
        raise VaelabError(f"{target} holds other files; export into a new or empty folder")


def _usual_permissions(folder: Path) -> None:
    """mkdtemp (and safetensors) create private files; an export is for sharing: the modes a
    new folder and new files get under the user's umask."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


def _put_in_place(staging: Path, target: Path) -> None:
    """Move the finished export in; a replaced export is removed only once the new one is in."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old)


def _write_folder(run: Run, folder: Path, onnx: bool) -> None:
    from safetensors.torch import save_file

    from . import plots

    # contiguous CPU copies: safetensors refuses shared or strided storage
    weights = {name: tensor.detach().cpu().contiguous().clone()
               for name, tensor in run.model.state_dict().items()}
    save_file(weights, folder / WEIGHTS, metadata={"format": FORMAT})
    (folder / DESCRIPTION).write_text(json.dumps(_description(run, folder), indent=2) + "\n")
    if (run.path / METRICS_FILE).is_file():
        shutil.copy(run.path / METRICS_FILE, folder / METRICS_FILE)
    plots.save(_picture(run), folder / PICTURE)
    if onnx:
        export_decoder(run.model, folder / ONNX_FILE)
    (folder / CARD).write_text(model_card(run, onnx))


def _picture(run: Run):
    from . import generate
    from .figures import figure_reconstructions, figure_samples
    from .runs import validation_of

    if generate.can_sample(run.model):
        return figure_samples(run, 16)
    return figure_reconstructions(run, validation_of(run), 8)


def _description(run: Run, folder: Path) -> dict[str, Any]:
    prior = getattr(run.model, "prior", None)  # a discrete autoencoder's, in the same file
    settings = {"prior": prior.settings} if prior is not None else {}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "vaelab_version": __version__,
            **settings, "config": run.config.to_dict(), "data": run.data, "epoch": run.epoch,
            "weights_sha256": file_sha256(folder / WEIGHTS),
            "source": {"run": str(run.path.absolute()), "checkpoint": run.checkpoint,
                       "checkpoint_sha256": run.checkpoint_sha256}}


def from_pretrained(folder: str | os.PathLike, device: str | None = "cpu") -> Run:
    """The model of a folder written by `vaelab export`, as a Run (its `path` the folder);
    device None = the config's own. Reads JSON and safetensors only (pretrained.py)."""
    return load_exported(Path(folder), device)


# ---- ONNX ----------------------------------------------------------------------------------

class _Decoder(torch.nn.Module):
    """A code (and a class index) -> the picture E[x|z], the likelihood's mean."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, code: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.likelihood.mean(self.model.decode(code, label))


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch's exporter is written in it)
    except ImportError:
        raise VaelabError("--onnx needs the ONNX exporter: pip install 'vaelab[onnx]'") from None


def export_decoder(model: torch.nn.Module, path: Path) -> None:
    """The decoder as ONNX with a batch axis of any size: input `code` (n, code_dim) float32,
    and `label` (n,) int64 for a conditional model; output `mean` (n, C, H, W) in [0, 1]."""
    import warnings

    decoder = _Decoder(model).eval()
    batch = torch.export.Dim("n", min=1)
    device = next(model.parameters()).device
    inputs = (torch.zeros(2, model.code_dim, device=device),)
    names, shapes = ["code"], {"code": {0: batch}}
    if model.classes:
        inputs += (torch.zeros(2, dtype=torch.long, device=device),)
        names.append("label")
        shapes["label"] = {0: batch}
    with warnings.catch_warnings():  # that `label` shares the axis `n` is what we meant
        warnings.filterwarnings("ignore", message="# The axis name")
        torch.onnx.export(decoder, inputs, path, input_names=names, output_names=["mean"],
                          dynamic_shapes=shapes, dynamo=True, external_data=False,
                          verbose=False)
    _check_batch_axis(path)


def _check_batch_axis(path: Path) -> None:
    """torch's exporter falls back to fixed shapes, silently, when a model's code turns the
    batch size into a constant (len(tensor) does): such a file would refuse other sizes."""
    import onnx

    axis = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    if not axis.dim_param:
        path.unlink()
        raise VaelabError(f"the decoder exported for a batch of {axis.dim_value} images only "
                          "(its code fixes the batch size); decoder.onnx was not written")


# ---- the model card ------------------------------------------------------------------------

def model_card(run: Run, onnx: bool) -> str:
    from . import generate

    config, data = run.config, run.data or {}
    shape = "x".join(map(str, config.image_shape))
    classes = data.get("classes") or []
    rows = run.metrics
    best = min(rows, key=lambda row: row["val_loss"]) if rows else None
    lines = [
        "---", "library_name: vaelab", "tags:", "- vae", "- variational-autoencoder",
        "- pytorch", "---", "",
        f"# {config.model} on {config.data or config.dataset}", "",
        f"A `{config.model}` model (vaelab {__version__}) trained on "
        f"{data.get('train', '?')} {shape} images of `{config.data or config.dataset}`"
        f"{', conditional on ' + str(len(classes)) + ' classes' if config.conditional else ''}"
        f", with a {config.likelihood} likelihood, {config.epochs} epochs; these are the "
        f"weights of its {run.checkpoint}.pt (epoch {run.epoch}).", "",
        f"![{'prior samples' if generate.can_sample(run.model) else 'reconstructions'}]"
        f"({PICTURE})", "", "## Numbers", "",
        "| | nats per image |", "|---|---:|"]
    if rows:
        lines.append(f"| -ELBO on validation, last epoch ({rows[-1]['epoch']}) | "
                     f"{rows[-1]['val_loss']:.2f} |")
        lines.append(f"| -ELBO on validation, best epoch ({best['epoch']}) | "
                     f"{best['val_loss']:.2f} |")
    evaluation = _evaluation(run)
    if evaluation:
        lines.append(f"| -log p(x), importance-weighted (K={evaluation['iw_samples']}, "
                     f"{evaluation['images']} test images) | {evaluation['nll']:.2f} ± "
                     f"{evaluation['nll_stderr']:.2f} |")
        if evaluation.get("density_of_8bit"):
            lines.append(f"| the same in bits/dim | {evaluation['nll_bits_per_dim']:.4f} |")
    lines += ["", "## Use", "", "```python", "import torch", "import vaelab", "",
              'run = vaelab.from_pretrained("THIS_FOLDER")  # reads JSON and safetensors only',
              "images = run.model.likelihood.mean(run.model.from_prior(",
              "    run.model.prior_noise(16, torch.Generator()), 1.0, None))", "```", "",
              "or any figure command on the folder: `vaelab sample THIS_FOLDER`, "
              "`vaelab evaluate THIS_FOLDER`."]
    if onnx:
        lines += ["", f"`{ONNX_FILE}` is the decoder alone: input `code` "
                  f"(n, {run.model.code_dim})"
                  + (", `label` (n,) int64" if run.model.classes else "")
                  + f", output `mean` (n, {shape.replace('x', ', ')}), pixels in [0, 1]."]
    lines += ["", "## Upload", "", "```python", "from huggingface_hub import upload_folder",
              'upload_folder(repo_id="USER/NAME", folder_path="THIS_FOLDER")', "```", ""]
    return "\n".join(lines)


def _evaluation(run: Run) -> dict[str, Any] | None:
    """The run's eval.json, if it was written for the exported checkpoint."""
    path = eval_path(Path(run.path), "test")
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("checkpoint_sha256") == run.checkpoint_sha256 else None
