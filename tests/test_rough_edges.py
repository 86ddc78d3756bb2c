"""The rough edges a new user hit (issue #25): refusals before any work or any file, one-line
errors and exit codes, and figures whose titles, caps and layouts say what they show."""

import fcntl
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from test_app import free_port
from test_images import pictures

import vaelab.cache as cache
import vaelab.images
import vaelab.own_data
from vaelab import Config, figures, load_run, plots, sealed, train
from vaelab.data import Split, load_data, load_split
from vaelab.explore import LatentMap, read_picture
from vaelab.plots import GAP_GREY, grid_figure_size

REPO = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).with_name("signal_hook.py")
# A process whose Ctrl-C is Python's KeyboardInterrupt even when pytest runs as a background
# job (a shell starts those with SIGINT ignored, and Python would keep that).
AS_A_TERMINAL = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
                 " from vaelab.cli import main; sys.exit(main(sys.argv[1:]))")


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- refused before any folder, lock, decode or cache entry -------------------------------

@pytest.mark.parametrize("side", [30, 12])
def test_an_npz_of_an_unusable_size_leaves_no_run_folder(capsys, tmp_path, side):
    np.savez(tmp_path / "a.npz", images=np.zeros((10, side, side), np.uint8))
    code, _, err = cli(capsys, "train", "--data", tmp_path / "a.npz", "--out", tmp_path / "run")
    assert code == 1
    assert f"images of {side}x{side} cannot be taken" in one_line(err)
    assert not (tmp_path / "run").exists()  # no folder, so no .lock left in it


def test_conditional_on_an_unlabelled_folder_decodes_nothing(capsys, tmp_path, monkeypatch):
    pictures(tmp_path / "flat", [f"{i}.png" for i in range(6)], size=(16, 16))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    for name in ("probe", "decode"):
        monkeypatch.setattr(vaelab.images, name, lambda *a: pytest.fail("decoded an image"))
    code, _, err = cli(capsys, "train", "--data", tmp_path / "flat", "--conditional",
                       "--out", tmp_path / "run")
    assert code == 1 and "--conditional needs labelled images" in one_line(err)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_conditional_on_an_unlabelled_array_converts_nothing(capsys, tmp_path, monkeypatch):
    np.savez(tmp_path / "a.npz", images=np.zeros((10, 20, 20), np.uint8))
    monkeypatch.setattr(vaelab.own_data, "convert", lambda *a: pytest.fail("converted"))
    code, _, err = cli(capsys, "train", "--data", tmp_path / "a.npz", "--conditional",
                       "--image-size", 16, "--out", tmp_path / "run")
    assert code == 1 and "--conditional needs labelled images" in one_line(err)


def test_an_npz_whose_only_array_has_another_name_is_its_images(tmp_path):
    """README "Your own images": `pics` (or numpy.savez's `arr_0`) alone is read as images."""
    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, (20, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", pics=pics, labels=np.arange(20) % 2)
    train_split, val_split = load_data(Config(data=str(tmp_path / "a.npz")))
    both = torch.cat([train_split.images, val_split.images])
    assert len(both) == 20 and train_split.classes == ("0", "1")
    assert sorted(map(bytes, both[:, 0].numpy())) == sorted(map(bytes, pics))
    np.savez(tmp_path / "c.npz", pics)  # numpy.savez(file, array) names it arr_0
    unlabelled = load_data(Config(data=str(tmp_path / "c.npz")))
    assert sum(map(len, unlabelled)) == 20 and unlabelled[0].labels is None


# ---- one line and an exit code -------------------------------------------------------------

def test_mnist_to_images_without_the_files_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, REPO / "scripts" / "mnist_to_images.py", tmp_path / "out",
         "--data-dir", tmp_path / "empty"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "VAELAB_MIRRORS": "http://127.0.0.1:9/"})  # nothing listens there
    assert result.returncode == 1 and result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith("mnist_to_images.py: error: mnist: train-images-idx3-ubyte")
    assert "--data-dir" in line and not (tmp_path / "out").exists()


def test_ctrl_c_while_explore_serves_is_vaelabs_line_and_130(trained_run):
    pytest.importorskip("gradio")
    server = subprocess.Popen([sys.executable, "-c", AS_A_TERMINAL, "explore", str(trained_run),
                               "--port", str(free_port())], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # blocks until the server is up (or the process ends)
        assert line.startswith(f"serving {trained_run} on http://"), server.communicate()
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 130, err
    lines = [line for line in err.splitlines() if "encoding the validation" not in line]
    assert one_line("\n".join(lines)) == "vaelab: explore interrupted (Ctrl-C)"


def test_a_refused_resume_prints_no_table_while_another_process_holds_the_run(
        capsys, tiny_config, tmp_path):
    run = train(tiny_config.replace(threads=1), tmp_path / "run")
    holder = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a training process holds it
        code, out, err = cli(capsys, "train", "--resume", run, "--epochs", 2)
    finally:
        os.close(holder)
    assert code == 1 and out == ""
    assert "is in use by another vaelab process" in one_line(err)


def test_ctrl_c_in_the_first_decode_mentions_no_checkpoint(tmp_path):
    pictures(tmp_path / "d", [f"{c}/{i}.png" for c in "ab" for i in range(4)], size=(16, 16))
    result = subprocess.run(
        [sys.executable, HOOK, "vaelab.images:_decode_all", "1", "INT", "train", "--data",
         tmp_path / "d", "--out", tmp_path / "run"], capture_output=True, text=True,
        timeout=120, env={**os.environ, cache.CACHE_ENV: str(tmp_path / "cache")})
    assert result.returncode == 130, result.stderr
    line = one_line(result.stderr)
    assert line == "vaelab: train interrupted (Ctrl-C); nothing was saved", line
    assert not (tmp_path / "run").exists()


def test_an_unsafe_cache_file_is_refused_without_torchs_advice(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    with cache.path("k" * 64).open("wb") as file:  # sealed: torch.load itself must refuse it
        sealed.save({"format": cache.FORMAT, "key": "k" * 64, "images": os.getpid}, file)
    with caplog.at_level(logging.INFO, logger="vaelab"):
        assert cache.read("k" * 64) is None
    assert "is unusable" in caplog.text and "weights_only" not in caplog.text


# ---- figures ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, rows", [(64, 8), (20, 4), (16, 2)])
def test_reconstructions_come_in_pairs_of_rows_of_at_most_16(capsys, trained_run, tmp_path, n,
                                                             rows):
    code, _, err = cli(capsys, "reconstruct", trained_run, "--out", tmp_path, "--n", n)
    assert code == 0, err
    with Image.open(tmp_path / "reconstructions.png") as png:
        assert png.size == grid_figure_size(rows, min(n, 16))


def test_each_image_sits_above_its_reconstruction():
    upper = torch.arange(20.0).reshape(20, 1, 1, 1) / 40  # image i is the grey i/40
    tiles = plots.paired_rows(upper, upper + 0.5, 16)
    assert tiles.shape == (64, 1, 1, 1)
    rows = tiles.reshape(4, 16)
    assert torch.equal(rows[0], upper.flatten()[:16])
    assert torch.equal(rows[1], upper.flatten()[:16] + 0.5)
    assert torch.equal(rows[2, :4], upper.flatten()[16:])
    assert torch.equal(rows[3, :4], upper.flatten()[16:] + 0.5)
    assert rows[2:, 4:].isnan().all()  # empty cells, drawn in the gaps' grey


def test_too_many_reconstructions_or_samples_are_refused(capsys, trained_run, tmp_path):
    for command in ("reconstruct", "sample"):
        code, _, err = cli(capsys, command, trained_run, "--out", tmp_path, "--n", 100_000)
        assert code == 1 and "--n 100000 is more than one figure shows (256" in one_line(err)
    assert not list(tmp_path.iterdir())


def test_more_reconstructions_than_images_says_so(trained_run, caplog):
    run = load_run(trained_run)
    few = Split(torch.zeros(5, 1, 28, 28, dtype=torch.uint8), None)
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        figures.figure_reconstructions(run, few, 16)
    assert "--n 16: the validation set holds 5 images; showing all of them" in caplog.text


def title(figure) -> str:
    return figure.texts[0].get_text()


def test_interpolate_by_index_is_titled_with_those_images(trained_run, data_dir):
    run = load_run(trained_run)
    val = load_split("mnist", "val", data_dir, limit=20)
    a, b = (val.classes[int(val.labels[i])] for i in (3, 7))
    figure = figures.figure_interpolation(run, val, index=(3, 7), steps=4)
    assert title(figure).startswith(f"image 3 ({a}) → image 7 ({b}): linear path")
    unlabelled = Split(val.images, None)
    assert title(figures.figure_interpolation(run, unlabelled, index=(3, 7), steps=4)).startswith(
        "image 3 → image 7:")
    by_class = figures.figure_interpolation(run, load_split("mnist", "val", data_dir, limit=500),
                                           "6", "8", steps=4, pairs=1)
    assert title(by_class).startswith("6 → 8:")


def test_evaluate_names_its_targets_in_words(capsys, trained_run):
    code, out, err = cli(capsys, "evaluate", trained_run, "--iw-samples", 2, "--limit", 5,
                         "--quiet")
    assert code == 0, err
    assert out.splitlines()[0].startswith("5 test images, grayscale targets, bernoulli")
    assert cli(capsys, "report", trained_run)[0] == 0
    assert "5 test images, grayscale targets" in (trained_run / "report.html").read_text()
    assert figures.targets("dynamic") == "binarized (dynamic) targets"


def test_the_curves_have_whole_epochs_only(trained_run):
    figure = figures.figure_curves(load_run(trained_run))
    FigureCanvasAgg(figure).draw()
    for axes in figure.axes:
        low, high = axes.get_xlim()
        ticks = [t for t in axes.get_xticks() if low <= t <= high]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_white_tiles_are_parted_by_grey_gaps():
    """Drawn pixels (--sample-pixels) often leave a tile's edge white: the gaps must differ."""
    white = torch.ones(4, 3, 8, 8)
    grid = plots.samples(white, 1.0, ink=False, pixels=True).axes[0].images[0].get_array()
    assert grid.shape == (2 + 2 * 10, 2 + 2 * 10, 3)
    assert (grid[2:10, 2:10] == 1).all() and (grid[0:2] == GAP_GREY).all()
    assert (grid[:, 10:12] == GAP_GREY).all()  # between the two columns of tiles


def test_temperature_tempers_z_only_and_says_so(capsys):
    images = torch.zeros(4, 1, 8, 8)
    assert "(T scales z only)" in title(plots.samples(images, 0.5, pixels=True))
    assert "z only" not in title(plots.samples(images, 0.5, pixels=False))
    assert "N(0, 0.5² I)" in title(plots.samples(images, 0.5, pixels=False))
    assert cli(capsys, "sample", "--help")[1].count("tempers z only") == 1


# ---- the explorer -------------------------------------------------------------------------------

def test_the_upload_error_asks_for_a_digit_only_on_a_digit_run(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(Exception, match="upload a PNG or JPEG picture$"):
        read_picture(str(tmp_path / "x.png"), digit=False)
    with pytest.raises(Exception, match="upload a PNG or JPEG of a digit$"):
        read_picture(str(tmp_path / "x.png"), digit=True)


def test_the_map_leaves_its_top_band_to_gradios_label_and_buttons():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(500, 2, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (500,), generator=generator)
    image = LatentMap(points, labels, tuple("0123456789")).image
    band = LatentMap.TOP_BAND_PX
    assert (image[:band] == 255).all()  # nothing drawn where the label and buttons lie
    assert (image[band:band + 40] != 255).any()  # the plot and the colour bar start below it
    assert (image[:, -2:] == 255).all()  # nor cut at the right edge (the colour bar's labels)
