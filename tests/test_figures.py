"""Each figure command on a run trained for 300 steps: PNG sizes, determinism, bad input."""

import pytest
import torch
from PIL import Image

from vaelab import load_run, train
from vaelab.cli import main
from vaelab.data import Split, load_split
from vaelab.errors import VaelabError
from vaelab.generate import (
    interpolate,
    interpolation_path,
    pick_pairs,
    project_2d,
    reconstruct,
    sample_prior,
)
from vaelab.plots import grid_figure_size


def cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


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
    code, out, err = cli(capsys, args[0], trained_run, "--out", tmp_path, *args[1:])
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
    split = Split(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.tensor([6, 6, 1]))
    with pytest.raises(VaelabError, match="no image of class 8"):
        pick_pairs(split, 6, 8, 2)


@pytest.mark.parametrize("args, words", [
    (["interpolate", "--from", "12"], ["digit 12 is not a class", "0-9"]),
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
