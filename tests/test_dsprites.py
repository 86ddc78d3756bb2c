"""The dSprites generator (dsprites.py, scripts/make_dsprites.py), factor-labelled data as
`--data`, and the disentanglement command on a run trained on it.

Pixel geometry is checked with tolerances from the rasterization itself: a pixel is on when its
centre lies inside the shape, so the count of on pixels differs from the shape's area by at
most the pixels its outline crosses (about its perimeter in pixels).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import cli

from vaelab import dsprites
from vaelab.data import load_data
from vaelab.errors import DataError
from vaelab.own_data import read_factors

SCRIPT = "scripts/make_dsprites.py"
SIDE_PX = dsprites.SIZE_AT_SCALE_1 * dsprites.SIDE  # the square's side at scale 1, pixels


def test_every_combination_once_in_the_original_order():
    factors = dsprites.all_factors()
    assert factors.shape == (737_280, 5) == (math.prod(dsprites.FACTOR_SIZES), 5)
    assert (factors[1] == [0, 0, 0, 0, 1]).all()  # pos_y changes fastest, as the original
    picks = np.random.default_rng(0).integers(len(factors), size=1000)
    assert (dsprites.index_of(factors[picks]) == picks).all()
    values = dsprites.factor_values()
    assert np.allclose(values[1], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert values[2][-1] < 2 * math.pi and np.allclose(np.diff(values[2]), 2 * math.pi / 40)


def test_area_follows_the_scale_and_not_the_angle():
    """A square of side s has s^2 pixels, give or take its perimeter (4 s)."""
    for scale in (0.5, 1.0):
        side = SIDE_PX * scale
        for angle in (0.0, 0.3, math.pi / 4):
            pixels = dsprites.render(0, scale, angle)[10, 20].sum().item()
            assert abs(pixels - side ** 2) <= 4 * side, (scale, angle, pixels)


def test_the_shape_sits_at_its_position():
    """The centroid of a symmetric shape is its centre, within the half pixel a raster moves
    it; pos 0 and pos 1 put it at CENTRE_RANGE's ends."""
    images = dsprites.render(0, 1.0, 0.0)
    for x, y in ((0, 0), (31, 31), (5, 20)):
        rows, cols = torch.nonzero(images[x, y], as_tuple=True)
        low, high = dsprites.CENTRE_RANGE
        centre = [(low + (high - low) * p / 31) * dsprites.SIDE for p in (x, y)]
        assert abs(cols.float().mean() + 0.5 - centre[0]) <= 0.5
        assert abs(rows.float().mean() + 0.5 - centre[1]) <= 0.5


def test_no_shape_leaves_the_frame():
    for shape in range(3):
        for angle in dsprites.factor_values()[2][::3]:
            images = dsprites.render(shape, 1.0, float(angle))
            border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0],
                                images[..., :, -1]], -1)
            assert not border.any(), (shape, angle)
            assert images.flatten(2).any(2).all()  # and every image shows its shape


def test_a_subset_is_the_full_set_s_rows(tmp_path):
    out = tmp_path / "d.npz"
    done = subprocess.run([sys.executable, SCRIPT, str(out), "--subset", "30", "--seed", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with np.load(out) as saved:
        factors, images = saved["factors"], saved["images"]
        assert list(saved["factor_names"]) == list(dsprites.FACTOR_NAMES)
        values = saved["factor_values"]
    assert images.shape == (30, 64, 64) and images.dtype == np.uint8
    assert set(np.unique(images)) <= {0, 255}
    assert (np.diff(dsprites.index_of(factors)) > 0).all()  # in the full set's order
    all_values = dsprites.factor_values()
    for row, image, value in zip(factors, images, values):
        shape, scale, angle, x, y = row
        expected = dsprites.render(shape, all_values[1][scale], all_values[2][angle])[x, y]
        assert np.array_equal(image, expected.numpy().astype(np.uint8) * 255)
        assert np.allclose(value, [all_values[k][row[k]] for k in range(5)])


def test_the_script_refuses_a_bad_subset(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "d.npz"), "--subset", "0"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "--subset" in done.stderr
    assert not list(tmp_path.iterdir())


SPRITES = 768  # 3 shapes, 2 scales, 2 orientations, 8 x 8 positions: every combination


@pytest.fixture(scope="module")
def sprites(tmp_path_factory):
    """A small dSprites holding every combination of a few values of each factor (12 blocks
    to render rather than the full set's 720)."""
    factors = dsprites.all_factors()
    keep = (np.isin(factors[:, 1], [0, 5]) & np.isin(factors[:, 2], [0, 10])
            & (factors[:, 3] % 4 == 0) & (factors[:, 4] % 4 == 0))
    factors = factors[keep]
    path = tmp_path_factory.mktemp("sprites") / "sprites.npz"
    np.savez(path, images=dsprites.images_of(factors), factors=factors,
             factor_names=np.array(dsprites.FACTOR_NAMES))
    return path


def test_factors_travel_with_the_data_and_are_recorded(sprites, tmp_path):
    from vaelab import Config

    config = Config(data=str(sprites))
    train, val = load_data(config)
    assert train.factor_names == val.factor_names == dsprites.FACTOR_NAMES
    factors, names = read_factors(sprites, SPRITES)
    assert factors.shape == (SPRITES, 5) and names == dsprites.FACTOR_NAMES


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(factors=a["factors"][:-1]), "rows of factors"),
    (lambda a: a.update(factors=a["factors"].astype(np.float32)), "integers"),
    (lambda a: a.update(factor_names=a["factor_names"][:2]), "factor_names"),
])
def test_bad_factors_are_one_line_errors(tmp_path, change, message):
    factors = dsprites.all_factors()[:20]
    arrays = {"images": dsprites.images_of(factors), "factors": factors,
              "factor_names": np.array(dsprites.FACTOR_NAMES)}
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    from vaelab import Config

    with pytest.raises(DataError, match=message):
        load_data(Config(data=str(path)))


def test_disentanglement_and_traversals_of_a_run_on_dsprites(sprites, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", sprites, "--model", "beta-tcvae", "--arch",
                       "locatello", "--latent-dim", 4, "--epochs", 1, "--out", run, "--quiet")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["train_images"] == round(0.9 * SPRITES)
    code, out, err = cli(capsys, "disentanglement", run, "--share", 0.01, "--repeats", 2)
    assert code == 0, err
    scores = json.loads((run / "disentanglement.json").read_text())
    assert scores["factors"] == list(dsprites.FACTOR_NAMES) and scores["images"] == SPRITES
    assert set(scores["scores"]) == {"beta_vae", "factor_vae", "mig", "sap", "dci"}
    assert len(scores["scores"]["mig"]["score"]["runs"]) == 2
    assert np.array(scores["mutual_information"]).shape == (4, 5)
    assert "mig score" in out
    code, _, err = cli(capsys, "traverse", run, "--n", 2, "--steps", 5)
    assert code == 0, err
    code, _, err = cli(capsys, "report", run)
    assert code == 0, err
    report = (run / "report.html").read_text()
    for name in ("traversal", "unit_kl", "mutual_information"):
        assert (run / "figures" / f"{name}.png").is_file() and f"alt='{name}'" in report, name
    assert "Disentanglement" in report and "mig score" in report


def test_disentanglement_needs_factors(tmp_path, capsys, data_dir):
    from vaelab import Config, train

    run = train(Config(data_dir=str(data_dir), latent_dim=2, limit_train=64, limit_val=32,
                       epochs=1, device="cpu"), tmp_path / "mnist", progress=False)
    code, _, err = cli(capsys, "disentanglement", run, "--share", 0.01)
    assert code == 1 and "without factors of variation" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "disentanglement.json").exists()
