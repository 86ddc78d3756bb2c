"""Runs on your own images, through the CLI: a grey PNG folder with class subfolders, colour
JPEGs of mixed sizes resized to 32x32, a flat unlabelled folder, odd small folders, and the
explorer in a browser. (Bad input: test_own_data_errors.py.)"""

import base64
import io
import json

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image
from test_app import changed, free_port, image_src, set_number
from test_images import pictures, write_mnist_folder

import vaelab.images
from vaelab import load_run
from vaelab.data import validation_split
from vaelab.models import count_parameters


def train_on(folder, out, *flags):
    from vaelab.cli import main

    code = main(["train", "--data", str(folder), "--out", str(out), "--epochs", "1",
                 "--latent-dim", "8", "--quiet", *map(str, flags)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def grey_run(data_dir, tmp_path_factory):
    """MNIST as PNGs in class subfolders (train/ and val/ as given)."""
    base = tmp_path_factory.mktemp("grey")
    folder = write_mnist_folder(data_dir, base / "pngs", "--limit-train", 640,
                                "--limit-val", 160)
    return train_on(folder, base / "run")


@pytest.fixture(scope="module")
def colour_run(data_dir, tmp_path_factory):
    """Colour MNIST as RGB JPEGs of sides 28, 36 and 44, resized to 32x32 for the model."""
    base = tmp_path_factory.mktemp("colour")
    folder = write_mnist_folder(data_dir, base / "jpgs", "--colour", "--format", "jpg",
                                "--sizes", "28,36,44", "--limit-train", 640,
                                "--limit-val", 160)
    return train_on(folder, base / "run", "--image-size", 32, "--channels", 3)


def test_the_runs_record_their_data_and_rebuild_their_model(grey_run, colour_run):
    for run_dir, shape in ((grey_run, (1, 28, 28)), (colour_run, (3, 32, 32))):
        saved = json.loads((run_dir / "config.json").read_text())
        assert (saved["channels"], saved["height"], saved["width"]) == shape
        assert saved["data"] and saved["arch"] == "conv"
        run = load_run(run_dir)
        assert run.model.shape == shape
        x = torch.rand(2, *shape)
        assert run.model.decode_mean(run.model.encode(x)[0]).shape == (2, *shape)
    grey = load_run(grey_run)  # 1x28x28 with latent size 8: the reference's layers, other D
    assert count_parameters(grey.model) == 258_025 - 2 * (20 - 8) * (3136 + 1) - (20 - 8) * 3136


def is_colour(path):
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return np.abs(pixels[..., 0] - pixels[..., 1]).max() > 3  # grey figures have R = G = B


@pytest.mark.parametrize("command", [
    ["reconstruct"], ["reconstruct", "--sample"], ["sample", "--n", "16"],
    ["interpolate", "--from", "3", "--to", "5"], ["interpolate", "--index", "0", "7"],
    ["latent"], ["curves"],
])
def test_every_figure_command_on_both_runs(capsys, grey_run, colour_run, tmp_path, command):
    for run_dir, colour in ((grey_run, False), (colour_run, True)):
        code, out, err = cli(capsys, command[0], run_dir, *command[1:], "--out", tmp_path)
        assert code == 0, err
        for path in out.split():
            assert Image.open(path).size[0] > 100
            if command[0] in ("reconstruct", "sample", "interpolate"):
                assert is_colour(path) == colour, path


def test_later_commands_read_the_cache_the_training_run_filled(capsys, grey_run, colour_run,
                                                              tmp_path, monkeypatch):
    monkeypatch.setattr(vaelab.images, "decode", lambda *a: pytest.fail("decoded again"))
    for run_dir in (grey_run, colour_run):
        code, _, err = cli(capsys, "reconstruct", run_dir, "--out", tmp_path)
        assert code == 0, err


def test_evaluate_and_report_on_both_runs(capsys, grey_run, colour_run):
    for run_dir in (grey_run, colour_run):
        code, out, err = cli(capsys, "evaluate", run_dir, "--iw-samples", 4, "--limit", 20)
        assert code == 0, err
        result = json.loads((run_dir / "eval.json").read_text())
        assert result["images"] == 20 and result["dataset"].endswith(("pngs", "jpgs"))
        pixels = 784 if run_dir == grey_run else 3 * 32 * 32
        assert result["nll_bits_per_dim"] == pytest.approx(
            result["nll"] / (pixels * np.log(2)))
        code, out, err = cli(capsys, "report", run_dir)
        assert code == 0, err
        page = (run_dir / "report.html").read_text()
        assert "Against the reference notebook" not in page and "Evaluation" in page
        assert "data:image/png;base64" in page


def test_interpolation_takes_class_names_and_refuses_unknown_ones(capsys, grey_run, tmp_path):
    code, _, err = cli(capsys, "interpolate", grey_run, "--from", "seven", "--out", tmp_path)
    assert code == 1 and "class 'seven' is not one of this run's classes: 0, 1" in err


def test_an_unlabelled_folder_trains_and_interpolates_by_index(capsys, tmp_path):
    pictures(tmp_path / "flat", [f"{i:02d}.png" for i in range(40)], size=(16, 16))
    run = train_on(tmp_path / "flat", tmp_path / "run")
    code, out, err = cli(capsys, "interpolate", run, "--from", 0, "--to", 2, "--out", tmp_path)
    assert code == 0, err
    code, out, err = cli(capsys, "latent", run, "--out", tmp_path)
    assert code == 0, err
    code, _, err = cli(capsys, "interpolate", run, "--from", 0, "--to", 99)
    assert code == 1 and "no classes" in err and "0-3" in err


def test_resume_refuses_changed_data(capsys, tmp_path):
    folder = tmp_path / "d"
    pictures(folder, [f"{c}/{i}.png" for c in "ab" for i in range(10)], size=(16, 16))
    run = train_on(folder, tmp_path / "run")
    pictures(folder, ["a/new.png"], size=(16, 16), seed=5)
    code, _, err = cli(capsys, "train", "--resume", run, "--epochs", 2)
    assert code == 1 and "data changed" in err and "train 18 -> 19" in err
    (folder / "a" / "new.png").unlink()
    code, _, err = cli(capsys, "train", "--resume", run, "--epochs", 2, "--quiet")
    assert code == 0, err


def test_small_or_odd_folders_still_train_and_report(capsys, tmp_path, monkeypatch):
    """A validation set too small for an interpolation pair skips that figure, not the run;
    train/ alone is held out from; a relative --data is recorded absolute."""
    pictures(tmp_path / "d" / "train", [f"a/{i}.png" for i in range(12)], size=(16, 16))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "train", "--data", "d", "--out", "run", "--epochs", 1,
                         "--val-fraction", 0.1, "--quiet")
    assert code == 0, err
    assert "no interpolation figure" in err and (tmp_path / "run" / "report.html").is_file()
    run = load_run(tmp_path / "run")
    assert run.config.data == str(tmp_path / "d") and run.data["classes"] == ["a"]
    assert (run.data["train"], run.data["val"]) == (11, 1)  # one class: no pair of its own
    monkeypatch.chdir("/")  # later commands run from anywhere
    code, _, err = cli(capsys, "reconstruct", tmp_path / "run", "--out", tmp_path / "f")
    assert code == 0, err
    pictures(tmp_path / "d" / "train", [f"a/x{i}.png" for i in range(10)], size=(16, 16))
    code, _, err = cli(capsys, "sample", tmp_path / "run", "--out", tmp_path / "f")
    assert code == 0 and "changed since training" not in err  # sample reads no data
    code, _, err = cli(capsys, "latent", tmp_path / "run", "--out", tmp_path / "f")
    assert code == 0 and "changed since training (1 validation images then, 2 now)" in err


def test_the_explorer_works_with_fewer_than_five_validation_images(tmp_path):
    from vaelab.explore import Explorer

    pictures(tmp_path / "d", [f"{i}.png" for i in range(12)], size=(16, 16))
    run = load_run(train_on(tmp_path / "d", tmp_path / "run"))
    explorer = Explorer(run, validation_split(run.config))
    assert len(explorer.codes) == 1
    result = explorer.encode_image(np.zeros((30, 20, 3), dtype=np.uint8))
    assert result["neighbour_labels"] == ["image 0"]


# ---- the explorer on a colour run, in a real browser -------------------------------------------

def decoded_picture(page, selector):
    """The picture an <img> shows: inline data, or fetched from the server as the browser did."""
    src = image_src(page, selector)
    if src.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    return Image.open(io.BytesIO(page.request.get(src).body()))


def test_the_explorer_on_a_colour_run_in_a_real_browser(colour_run, browser, tmp_path):
    from vaelab.explore import Explorer
    from vaelab.explorer_app import launch

    run = load_run(colour_run)
    explorer = Explorer(run, validation_split(run.config))
    assert not explorer.drawable and explorer.decode(explorer.code(0)).shape[2] == 3
    port = free_port()
    app = launch(explorer, port=port, block=False)
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
        page.wait_for_selector("#slider-image img", timeout=60_000)
        before = image_src(page, "#slider-image")
        set_number(page, "#slider-1", 2.5)
        changed(page, "#slider-image", before)

        page.get_by_role("tab", name="Interpolation").click()
        page.wait_for_selector("#interp-point img")
        page.locator("#from-digit input").click()
        page.get_by_role("option", name="3", exact=True).click()
        first_three = int((explorer.val.labels == 3).nonzero()[0])
        page.wait_for_function(f"Array.from(document.querySelectorAll('input[type=number]'))"
                               f".some(box => box.value === '{first_three}')", timeout=30_000)

        page.get_by_role("tab", name="Encode your own").click()
        assert page.locator("#sketch").count() == 0  # no canvas for colour photos
        pictures(tmp_path, ["upload.png"], size=(50, 40))
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "upload.png"))
        changed(page, "#encoded-reconstruction", None)
        assert "Nearest validation images" in page.locator("#encode-status").inner_text()
        shown = np.asarray(decoded_picture(page, "#encoded-reconstruction").convert("RGB"))
        assert shown.shape[0] >= 32 and np.abs(shown[..., 0].astype(int) - shown[..., 2]).max() > 0
        (tmp_path / "broken.png").write_text("not a picture")  # a colour run: no digit asked for
        page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "broken.png"))
        page.wait_for_function("document.querySelector('#encode-status').innerText"
                               ".includes('Could not encode')", timeout=30_000)
        status = page.locator("#encode-status").inner_text()
        assert "upload a PNG or JPEG picture" in status and "digit" not in status
        page.close()
    finally:
        app.close()


def test_mnist_resized_to_colour_16_trains_a_resnet(capsys, data_dir, tmp_path):
    """--image-size and --channels apply to the IDX sets too; --arch resnet is rebuilt from
    the folder alone."""
    code, _, err = cli(capsys, "train", "--arch", "resnet", "--image-size", 16, "--channels", 3,
                       "--data-dir", data_dir, "--limit-train", 128, "--limit-val", 32,
                       "--epochs", 2, "--latent-dim", 4, "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    run = load_run(tmp_path / "run")
    assert run.config.arch == "resnet" and run.model.shape == (3, 16, 16)
    assert run.metrics[1]["train_loss"] < run.metrics[0]["train_loss"]
