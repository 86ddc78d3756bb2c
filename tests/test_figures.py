"""Each figure command on a run trained for 300 steps: PNG sizes, determinism, bad input."""

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image

from vaelab import load_run, plots, train
from vaelab.data import Split, load_split, to_float
from vaelab.errors import VaelabError
from vaelab.generate import (
    encode_means,
    interpolate,
    interpolation_path,
    pick_pairs,
    project_2d,
    reconstruct,
    sample_prior,
)
from vaelab.plots import grid_figure_size


def png_size(path):
    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("args, files", [
    (["reconstruct", "--n", "16"], {"reconstructions.png": grid_figure_size(2, 16)}),
    (["reconstruct", "--n", "5", "--sample"], {"reconstructions.png": grid_figure_size(2, 5)}),
    (["sample", "--n", "64"], {"samples.png": grid_figure_size(8, 8)}),
    (["sample", "--n", "10", "--temperature", "0.7"], {"samples.png": grid_figure_size(3, 4)}),
    (["interpolate", "--from", "6", "--to", "8"], {"interpolation.png": grid_figure_size(4, 10)}),
    (["interpolate", "--index", "0", "1", "--steps", "7", "--spherical"],
     {"interpolation.png": grid_figure_size(1, 7)}),
    (["latent"], {"latent.png": (700, 600)}),
    (["curves"], {"curves.png": (1200, 360)}),
])
def test_each_command_writes_pngs_of_the_expected_size(capsys, trained_run, tmp_path, args,
                                                       files):
    assert_writes_pngs(capsys, trained_run, tmp_path, args, files)


def assert_writes_pngs(capsys, run, tmp_path, args, files):
    code, out, err = cli(capsys, args[0], run, "--out", tmp_path, *args[1:])
    assert code == 0, err
    assert out.split() == [str(tmp_path / name) for name in files]
    for name, size in files.items():
        assert png_size(tmp_path / name) == size


def test_figures_go_to_the_run_folder_by_default_and_are_deterministic(capsys, trained_run):
    assert cli(capsys, "sample", trained_run, "--seed", "3")[0] == 0
    first = (trained_run / "figures" / "samples.png").read_bytes()
    assert cli(capsys, "sample", trained_run, "--seed", "3")[0] == 0
    assert (trained_run / "figures" / "samples.png").read_bytes() == first
    assert cli(capsys, "sample", trained_run, "--seed", "4")[0] == 0
    assert (trained_run / "figures" / "samples.png").read_bytes() != first


def test_a_two_dimensional_run_also_gets_the_manifold(capsys, tiny_config, tmp_path):
    run = train(tiny_config.replace(latent_dim=2), tmp_path / "run")
    code, out, _ = cli(capsys, "latent", run)
    assert code == 0 and out.split() == [str(run / "figures" / n) for n in
                                         ("latent.png", "manifold.png")]
    assert png_size(run / "figures" / "manifold.png") == grid_figure_size(20, 20)


def test_sampling_is_reproducible_by_seed_and_changes_with_it(trained_run):
    model = load_run(trained_run).model
    a, b, c = (sample_prior(model, 8, seed=s) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 1, 28, 28) and 0 <= a.min() and a.max() <= 1


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_endpoints_are_the_reconstructions(trained_run, data_dir, spherical):
    model = load_run(trained_run).model
    val = load_split("mnist", "val", data_dir, limit=200)
    (i, j), = pick_pairs(val, 6, 8, 1)
    strip = interpolate(model, val.images[i], val.images[j], steps=9, spherical=spherical)
    ends = reconstruct(model, val.images[[i, j]])
    assert strip.shape == (9, 1, 28, 28)
    assert torch.allclose(strip[0], ends[0], atol=1e-6)
    assert torch.allclose(strip[-1], ends[1], atol=1e-6)
    assert not torch.allclose(strip[4], ends[0], atol=1e-2)  # the middle is somewhere else


def test_slerp_keeps_the_norm_between_equal_norm_ends():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    path = interpolation_path(a, b, 5, spherical=True)
    assert torch.allclose(path.norm(dim=1), torch.full((5,), 3.0))
    assert interpolation_path(a, b, 5)[2].norm() < 3.0 - 0.5  # the straight line cuts inside


def test_pca_projection_is_2d_and_tsne_is_available():
    codes = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    assert project_2d(codes).shape == project_2d(codes, "tsne").shape == (300, 2)


def test_a_class_absent_from_the_data_is_refused():
    split = Split(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.tensor([6, 6, 1]),
                  tuple("0123456789"))
    with pytest.raises(VaelabError, match="no image of class '8'"):
        pick_pairs(split, 6, 8, 2)
    with pytest.raises(VaelabError, match="class 'cat' is not one of this run's classes: 0, 1"):
        pick_pairs(split, "cat", 8, 2)


@pytest.mark.parametrize("args, words", [
    (["interpolate", "--from", "12"], ["class '12' is not one", "0, 1, 2"]),
    (["interpolate", "--steps", "-2"], ["--steps -2", "at least 2"]),
    (["interpolate", "--index", "0", "99999"], ["--index 99999", "outside"]),
    (["reconstruct", "--n", "0"], ["--n 0", "at least 1"]),
    (["sample", "--n", "0"], ["--n 0", "at least 1"]),
    (["sample", "--temperature", "0"], ["--temperature 0", "> 0"]),
])
def test_bad_figure_arguments(capsys, trained_run, args, words):
    code, _, err = cli(capsys, args[0], trained_run, *args[1:])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert all(word in err for word in words), err


def test_a_run_without_checkpoint_and_an_unwritable_folder(capsys, trained_run, tmp_path):
    code, _, err = cli(capsys, "sample", tmp_path)
    assert code == 1 and "no checkpoint at" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = cli(capsys, "sample", trained_run, "--out", blocker / "figures")
    assert code == 1 and "cannot write" in err and "--out" in err


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def rendered(figure, path):
    """The pixels of a figure made here from the functions behind the commands."""
    return pixels(plots.save(figure, path))


def digits(array):
    """An image grid's digits without its title band (whose text names the options)."""
    return array[plots.TITLE_PX:]


def test_sample_draws_at_the_given_temperature(capsys, trained_run, tmp_path):
    model = load_run(trained_run).model
    figures = {}
    for t in (0.5, 1.0):
        code, out, err = cli(capsys, "sample", trained_run, "--out", tmp_path / str(t), "--n",
                             4, "--seed", 3, "--temperature", t)
        assert code == 0, err
        figures[t] = pixels(out.strip())
        expected = plots.samples(sample_prior(model, 4, t, 3), t)
        assert np.array_equal(figures[t], rendered(expected, tmp_path / f"expected-{t}.png"))
    assert not np.array_equal(digits(figures[0.5]), digits(figures[1.0]))


def test_reconstruct_sample_decodes_a_posterior_draw_not_the_mean(capsys, trained_run,
                                                                  tmp_path):
    model = load_run(trained_run).model
    originals = load_split("mnist", "val", load_run(trained_run).config.data_dir, 6).images
    figures = {}
    for flags in ([], ["--sample"], ["--sample", "--seed", 1]):
        out_dir = tmp_path / "-".join(map(str, flags))
        code, out, err = cli(capsys, "reconstruct", trained_run, "--out", out_dir, "--n", 6,
                             *flags)
        assert code == 0, err
        figures[tuple(flags)] = pixels(out.strip())
        sample, seed = "--sample" in flags, 1 if "--seed" in flags else 0
        expected = plots.reconstructions(to_float(originals),
                                         reconstruct(model, originals, sample, seed), sample)
        assert np.array_equal(figures[tuple(flags)], rendered(expected, out_dir / "expected.png"))
    mean, drawn, other = figures.values()
    assert not np.array_equal(digits(mean), digits(drawn))
    assert not np.array_equal(digits(drawn), digits(other))  # --seed picks the draw


def test_latent_map_is_the_pca_of_the_posterior_means(capsys, trained_run, tmp_path):
    run = load_run(trained_run)
    val = load_split("mnist", "val", run.config.data_dir)
    code, out, err = cli(capsys, "latent", trained_run, "--out", tmp_path)
    assert code == 0, err
    points = project_2d(encode_means(run.model, val.images))
    expected = plots.latent_scatter(points, val.labels, val.classes, "PCA")
    assert np.array_equal(pixels(out.strip()), rendered(expected, tmp_path / "expected.png"))


def test_pca_projection_equals_the_top_eigenvectors_of_the_covariance(trained_run, data_dir):
    """project_2d against an eigendecomposition done here: the codes' coordinates along the
    two largest-variance directions (each signed so that its first entry is >= 0)."""
    codes = encode_means(load_run(trained_run).model,
                         load_split("mnist", "val", data_dir, limit=2000).images)
    centred = codes.double().numpy() - codes.double().numpy().mean(0)
    variances, vectors = np.linalg.eigh(centred.T @ centred / (len(codes) - 1))
    top = vectors[:, ::-1][:, :2] * np.where(vectors[0, ::-1][:2] < 0, -1.0, 1.0)
    # float64 eigenvectors err by ~eps64 * largest / gap: far below float32's rounding
    eps32, eps64 = np.finfo(np.float32).eps, np.finfo(np.float64).eps
    assert variances[-2] - variances[-3] > eps64 / eps32 * variances[-1]
    points = project_2d(codes).double().numpy()
    # The float32 output is within half an ulp of each coordinate, |coordinate| <= |code|.
    tolerance = eps32 * np.linalg.norm(centred, axis=1).max()
    assert np.abs(points - centred @ top).max() <= tolerance
