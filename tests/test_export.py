"""`vaelab export`: a run as model.safetensors + config.json + a model card (+ decoder.onnx),
loaded by `from_pretrained` without the run folder and without unpickling anything; the
exported model samples and evaluates to the run's own numbers, and its ONNX decoder matches
PyTorch in onnxruntime."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli, sha256

from vaelab import from_pretrained, load_run
from vaelab.checkpoint import load_checkpoint
from vaelab.evaluate import write_evaluation
from vaelab.export import CARD, EXPORT_FILES, ONNX_FILE, PICTURE, WEIGHTS, export_run
from vaelab.generate import class_grid, sample_prior
from vaelab.runs import BEST, CONFIG_FILE

safetensors = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    return export_run(trained_run, tmp_path_factory.mktemp("export") / "model")


def test_the_folder_holds_the_weights_config_card_and_picture(exported, trained_run):
    assert {path.name for path in exported.iterdir()} == set(EXPORT_FILES) - {ONNX_FILE}
    # the weights, read by safetensors itself, are best.pt's
    saved = load_checkpoint(trained_run / BEST)["model"]
    weights = safetensors.load_file(exported / WEIGHTS)
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[name], saved[name]) for name in saved)
    description = json.loads((exported / CONFIG_FILE).read_text())
    assert description["config"] == json.loads((trained_run / CONFIG_FILE).read_text())
    assert description["data"]["shape"] == [1, 28, 28] and len(description["data"]["classes"]) == 10
    assert description["weights_sha256"] == sha256(exported / WEIGHTS)
    card = (exported / CARD).read_text()
    assert card.startswith("---\nlibrary_name: vaelab\n") and f"]({PICTURE})" in card
    last = load_run(trained_run).metrics[-1]["val_loss"]
    assert f"| {last:.2f} |" in card
    mask = os.umask(0)
    os.umask(mask)
    assert exported.stat().st_mode & 0o777 == 0o777 & ~mask  # shareable, not mkdtemp's 0700
    assert all(path.stat().st_mode & 0o777 == 0o666 & ~mask for path in exported.iterdir())


def test_loads_without_the_run_and_samples_what_the_run_samples(exported, trained_run,
                                                                tmp_path):
    moved = shutil.copytree(exported, tmp_path / "elsewhere")  # no run folder beside it
    run, model = load_run(trained_run), from_pretrained(moved)
    assert model.epoch == run.epoch and model.config == run.config
    assert torch.equal(sample_prior(model.model, 8, seed=3), sample_prior(run.model, 8, seed=3))


def test_loading_never_unpickles(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an exported folder was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert from_pretrained(exported).model.code_dim == 20


def test_evaluates_to_the_runs_numbers(exported, trained_run, data_dir):
    ours, _ = write_evaluation(str(exported), samples=20, limit=50, progress=False)
    theirs, _ = write_evaluation(str(trained_run), samples=20, limit=50, progress=False)
    for key in ("nll", "nll_stderr", "neg_elbo", "recon", "kl", "active_units"):
        assert ours[key] == theirs[key], key
    assert (exported / "eval.json").is_file()


def test_figure_commands_take_an_exported_folder(capsys, exported, tmp_path):
    for command in ("sample", "reconstruct", "curves"):
        code, out, err = cli(capsys, command, exported, "--out", tmp_path)
        assert code == 0, err
    assert {path.name for path in tmp_path.iterdir()} == {"samples.png", "reconstructions.png",
                                                          "curves.png"}
    code, _, err = cli(capsys, "sample", exported, "--checkpoint", "last")
    assert code == 1 and "best.pt only" in err and err.count("\n") == 1


def test_a_conditional_export_draws_the_classes_the_run_draws(conditional_run, tmp_path):
    model = from_pretrained(export_run(conditional_run, tmp_path / "model"))
    run = load_run(conditional_run)
    assert torch.equal(class_grid(model.model, 3, seed=1), class_grid(run.model, 3, seed=1))


# ---- bad input: one line, nothing written ----------------------------------------------------

def test_a_run_without_a_checkpoint_is_refused_and_nothing_is_written(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CONFIG_FILE).write_text("{}")
    code, out, err = cli(capsys, "export", tmp_path / "run", tmp_path / "model")
    assert code == 1 and out == "" and err.count("\n") == 1 and "no checkpoint" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_an_existing_export_is_kept_unless_forced(capsys, exported, trained_run, tmp_path):
    target = shutil.copytree(exported, tmp_path / "model")
    before = {path.name: sha256(path) for path in target.iterdir()}
    code, _, err = cli(capsys, "export", trained_run, target, "--checkpoint", "last")
    assert code == 1 and "--force" in err and err.count("\n") == 1
    assert {path.name: sha256(path) for path in target.iterdir()} == before
    code, out, err = cli(capsys, "export", trained_run, target, "--checkpoint", "last", "--force")
    assert code == 0, err
    assert json.loads((target / CONFIG_FILE).read_text())["source"]["checkpoint"] == "last"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no staging left


def test_a_folder_of_other_files_is_refused(capsys, trained_run, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "export", trained_run, tmp_path)
    assert code == 1 and "other files" in err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("damage, message", [
    (lambda folder: _flip_a_byte(folder / WEIGHTS), "is damaged: its SHA-256"),
    (lambda folder: (folder / CONFIG_FILE).write_text("{\"config\": "), "not JSON"),
    (lambda folder: (folder / CONFIG_FILE).write_text(json.dumps({"model_type": "vae"})),
     "not written by `vaelab export`"),
    (lambda folder: _foreign_weights(folder), "weights do not fit"),
])
def test_a_damaged_or_foreign_folder_is_one_line(capsys, exported, tmp_path, damage, message):
    folder = shutil.copytree(exported, tmp_path / "model")
    damage(folder)
    code, out, err = cli(capsys, "sample", folder, "--out", tmp_path / "pictures")
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "pictures").exists()


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _foreign_weights(folder: Path) -> None:
    """Another model's tensors, with a config.json that vouches for them."""
    safetensors.save_file({"encoder.weight": torch.zeros(3, 3)}, folder / WEIGHTS)
    description = json.loads((folder / CONFIG_FILE).read_text())
    description["weights_sha256"] = sha256(folder / WEIGHTS)
    (folder / CONFIG_FILE).write_text(json.dumps(description))


# ---- ONNX --------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["trained_run", "conditional_run", "small_hvae_run"])
def test_the_onnx_decoder_matches_pytorch(which, request, tmp_path):
    """onnxruntime's float32 pictures are as close to the float64 decoder's as PyTorch's own
    float32 ones are, up to a factor for other kernels' summation orders (8), and never held
    to less than one float32 ulp of the pictures' scale."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run = load_run(request.getfixturevalue(which))
    folder = export_run(run.path, tmp_path / "model", onnx=True)
    session = onnxruntime.InferenceSession(str(folder / ONNX_FILE))
    exact = load_run(run.path)
    exact.model.double()
    generator = torch.Generator().manual_seed(0)
    for n in (1, 7):  # the batch axis takes any size
        code = torch.randn(n, run.model.code_dim, generator=generator)
        label = torch.arange(n) % 10 if run.model.classes else None
        inputs = {"code": code.numpy()} | ({"label": label.numpy()} if label is not None else {})
        (pictures,) = session.run(None, inputs)
        with torch.no_grad():
            ours = run.model.likelihood.mean(run.model.decode(code, label))
            reference = exact.model.likelihood.mean(exact.model.decode(code.double(), label))
        assert pictures.shape == tuple(ours.shape) == (n, *run.config.image_shape)
        eps = torch.finfo(torch.float32).eps
        tolerance = 8 * max((ours.double() - reference).abs().max().item(),
                            eps * reference.abs().max().item())
        assert (torch.from_numpy(pictures).double() - reference).abs().max() <= tolerance
