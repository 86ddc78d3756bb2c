"""The explorer's logic without a browser: sliders, interpolation, preprocessing, encoding."""

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import load_run
from vaelab.data import load_split, to_float
from vaelab.errors import VaelabError
from vaelab.explore import Explorer, preprocess, read_picture
from vaelab.generate import reconstruct


@pytest.fixture(scope="module")
def explorer(trained_run, data_dir):
    run = load_run(trained_run)
    return Explorer(run, load_split("mnist", "val", data_dir, limit=2000))


def test_slider_vector_round_trip(explorer):
    z = explorer.code(3)
    values = explorer.to_sliders(z)
    assert len(values) == 8
    assert torch.allclose(explorer.from_sliders(values, z), z, atol=1e-10)
    moved = [v + 0.5 * (i % 3 - 1) for i, v in enumerate(values)]
    assert np.allclose(explorer.to_sliders(explorer.from_sliders(moved, z)), moved, atol=1e-9)
    image, where = explorer.at_sliders(values, z)  # what the app shows for unmoved sliders
    assert np.array_equal(image, explorer.decode(z)) and where.ndim == 3


def test_unit_sliders_are_the_units_by_kl_and_move_one_coordinate(explorer, trained_run,
                                                                   data_dir):
    from vaelab.units import unit_kl

    run = load_run(trained_run)
    kl = unit_kl(run, load_split("mnist", "val", data_dir, limit=2000).images)
    assert explorer.units == kl.argsort(descending=True)[:10].tolist()
    z = explorer.code(5)
    values = explorer.to_units(z)
    image, _ = explorer.at_units(values, z)  # unmoved: the image's own decode
    assert np.array_equal(image, explorer.decode(z))
    moved = values[:1] + [v + 1 for v in values[1:]]
    image, _ = explorer.at_units(moved, z)
    shifted = z.double().clone()
    shifted[explorer.units[1:]] += 1
    assert np.array_equal(image, explorer.decode(shifted))
    assert explorer.unit_name(explorer.units[0]).startswith(f"z{explorer.units[0]} (KL ")


def test_slider_scales_are_standard_deviations(explorer):
    coordinates = torch.tensor([explorer.to_sliders(z) for z in explorer.codes],
                               dtype=torch.float64)
    assert torch.allclose(coordinates.std(0), torch.ones(8, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(coordinates.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-6)


def test_decode_shows_a_large_dark_on_white_digit(explorer):
    image = explorer.decode(explorer.code(0))
    assert image.shape == (224, 224) and image.dtype == np.uint8
    assert np.median(image) > 200 and image.min() < 60  # white paper, dark strokes


def test_interpolation_endpoints_are_the_reconstructions(explorer):
    i, j = explorer.first_of_class(6), explorer.first_of_class(8)
    start, strip = explorer.interpolate(i, j, 0.0, 7, spherical=True)
    end, _ = explorer.interpolate(i, j, 1.0, 7, spherical=True)
    ends = reconstruct(explorer.model, explorer.val.images[[i, j]])
    assert np.abs(start.astype(int) - explorer.decode(explorer.code(i)).astype(int)).max() <= 1
    assert np.abs(end.astype(int) - explorer.decode(explorer.code(j)).astype(int)).max() <= 1
    assert np.abs(start[::8, ::8].astype(int) - np.round(255 * (1 - ends[0, 0].numpy()))).max() <= 1
    assert strip.shape == (224, 7 * 224 + 6 * 8)


def mnist_range(data_dir):
    means = to_float(load_split("mnist", "val", data_dir).images).mean((1, 2, 3))
    return means.quantile(0.01).item(), means.quantile(0.99).item()


def test_preprocessing_a_drawn_digit(data_dir, explorer):
    """A big black-on-white drawing off to one side becomes a centred MNIST-like 28x28 digit."""
    digit = explorer.val.images[1, 0].numpy()
    canvas = np.full((400, 300), 255, dtype=np.uint8)
    canvas[20:20 + 280, 10:10 + 280] = 255 - np.kron(digit, np.ones((10, 10), dtype=np.uint8))
    result = preprocess(canvas)
    assert result.shape == (28, 28) and result.dtype == np.uint8
    rows, cols = np.nonzero(result > 25)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 21  # fits 20x20
    mass = result / result.sum()
    rows, cols = np.indices(result.shape)
    centre = ((rows * mass).sum(), (cols * mass).sum())
    assert abs(centre[0] - 14) <= 1 and abs(centre[1] - 14) <= 1
    low, high = mnist_range(data_dir)
    assert low <= result.mean() / 255 <= high


def test_a_transparent_sketch_is_read_as_ink_on_paper(explorer):
    sketch = np.zeros((280, 280, 4), dtype=np.uint8)  # transparent, as the sketchpad sends
    sketch[60:220, 130:150] = (0, 0, 0, 255)          # a black vertical stroke: a "1"
    result = preprocess(sketch)
    assert result[14, 14] > 200 and result[14, 3] == 0
    encoded = explorer.encode_image(sketch)
    assert encoded["reconstruction"].shape == (224, 224)
    assert len(encoded["neighbour_labels"]) == 5 and encoded["map"].ndim == 3


def test_encoding_a_real_digit_finds_neighbours_of_its_class(explorer):
    image = 255 - np.kron(explorer.val.images[0, 0].numpy(), np.ones((6, 6), dtype=np.uint8))
    result = explorer.encode_image(image)
    assert result["neighbour_labels"].count(str(int(explorer.val.labels[0]))) >= 3


@pytest.mark.parametrize("image, words", [
    (None, "no image"),
    (np.full((50, 50), 255, dtype=np.uint8), "blank"),
    (np.zeros((50, 50, 4), dtype=np.uint8), "blank"),
    (np.zeros((5000, 5000), dtype=np.uint8), "too large"),
])
def test_bad_pictures_get_clear_messages(explorer, image, words):
    with pytest.raises(VaelabError, match=words):
        explorer.encode_image(image)


def test_read_picture_refuses_files_that_are_not_images(tmp_path):
    (tmp_path / "digit.png").write_text("not an image at all")
    with pytest.raises(VaelabError, match="not a picture"):
        read_picture(str(tmp_path / "digit.png"))
    Image.fromarray(np.zeros((30, 40), dtype=np.uint8)).save(tmp_path / "ok.png")
    assert read_picture(str(tmp_path / "ok.png")).shape == (30, 40, 4)


def test_index_out_of_range(explorer):
    with pytest.raises(VaelabError, match="not in the validation set"):
        explorer.code(len(explorer.codes))


def test_thin_strokes_on_a_large_picture_stay_as_dark_as_mnist():
    photo = np.full((3000, 2000), 255, dtype=np.uint8)
    photo[500:2500, 990:1002] = 0  # a "1" drawn with a thin pen, 12 of 3000 pixels wide
    result = preprocess(photo)
    assert result.max() == 255
    assert abs(np.nonzero(result)[1].mean() - 14) <= 1


def test_read_picture_refuses_a_huge_file_before_decoding_it(tmp_path):
    Image.new("L", (5000, 4000)).save(tmp_path / "huge.png")
    with pytest.raises(VaelabError, match="too large"):
        read_picture(str(tmp_path / "huge.png"))


def test_a_one_dimensional_latent_space_gets_one_slider_and_a_flat_map(data_dir):
    from vaelab import VAE, Config
    from vaelab.runs import Run

    torch.manual_seed(0)
    run = Run(path=None, config=Config(latent_dim=1), model=VAE(1).eval(), epoch=0, metrics=[],
              device=torch.device("cpu"))
    explorer = Explorer(run, load_split("mnist", "val", data_dir, limit=300))
    z = explorer.code(5)
    assert len(explorer.to_sliders(z)) == 1
    assert explorer.project(z[None]).shape == (1, 2)
    assert explorer.map.marked(explorer.project(z[None])[0]).ndim == 3
