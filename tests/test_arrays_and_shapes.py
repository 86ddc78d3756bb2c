"""own_data.py's arrays and splits, and data.py's recording of the data's shape, without training:
every refusal word for word, and what each accepted layout becomes (fast: run for every
mutant)."""

import numpy as np
import pytest
import torch
from helpers import refused

from vaelab import Config
from vaelab.data import Split, validation_split, with_data_shape
from vaelab.own_data import (
    _check_given,
    _check_images,
    _check_labels,
    _read_arrays,
    convert,
    read_factors,
)

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant

IMAGES = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)


def test_a_given_split_needs_images_on_both_sides_and_every_class_in_training(tmp_path):
    none = torch.zeros(4, dtype=torch.bool)
    assert refused(_check_given, None, none, (), tmp_path) == (
        f"{tmp_path}: its validation split holds no images; fill it, or drop the split folders "
        "to hold out --val-fraction")
    assert refused(_check_given, None, ~none, (), tmp_path) == (
        f"{tmp_path}: its training split holds no images; fill it, or drop the split folders "
        "to hold out --val-fraction")
    labels, is_val = torch.tensor([0, 0, 1, 1]), torch.tensor([False, True, True, False])
    _check_given(labels, is_val, ("a", "b"), tmp_path)  # each class trains: accepted
    assert refused(_check_given, labels, torch.tensor([False, True, True, True]), ("a", "b"),
                   tmp_path) == (f"{tmp_path}: class 'b' has no training images; add some to "
                                 "its training folder or remove the class")
    _check_given(None, is_val, (), tmp_path)  # unlabelled: only the split is checked


def test_images_must_be_uint8_grey_or_colour(tmp_path):
    assert refused(_check_images, IMAGES.astype(np.float32), tmp_path, "x") == (
        f"{tmp_path}: x has dtype float32; vaelab reads uint8 images (0-255): convert with "
        "(x * 255).round().astype(numpy.uint8)")
    assert refused(_check_images, np.zeros((2, 4, 4, 2), np.uint8), tmp_path, "x") == (
        f"{tmp_path}: x has shape (2, 4, 4, 2); expected images (N, H, W) or (N, H, W, C) with "
        "C 1 or 3, and N >= 1")
    assert refused(_check_images, np.zeros((0, 4, 4), np.uint8), tmp_path, "x").endswith(
        "and N >= 1")
    assert _check_images(IMAGES, tmp_path, "x").shape == (6, 4, 4, 1)


def test_labels_one_integer_per_image(tmp_path):
    column = np.array([[2], [0], [1]])  # (N, 1), as Keras ships CIFAR's
    assert _check_labels(column, 3, tmp_path).tolist() == [2, 0, 1]
    assert _check_labels(column, 3, tmp_path).dtype == torch.int64
    assert refused(_check_labels, np.zeros((3, 2), int), 3, tmp_path) == (
        f"{tmp_path}: labels have shape (3, 2) and dtype int64; expected one integer per image")
    assert refused(_check_labels, np.zeros(3), 3, tmp_path).endswith(
        "dtype float64; expected one integer per image")
    assert refused(_check_labels, np.zeros(2, int), 3, tmp_path) == (
        f"{tmp_path}: 3 images but 2 labels; there must be one label per image")
    assert refused(_check_labels, np.array([0, -1, 2]), 3, tmp_path) == (
        f"{tmp_path}: holds label -1; labels must be 0, 1, 2, ...")


def test_every_array_layout(tmp_path):
    np.save(tmp_path / "plain.npy", IMAGES)
    images, labels, classes, given = _read_arrays(tmp_path / "plain.npy")
    assert images.shape == (6, 4, 4, 1) and (labels, classes, given) == (None, (), None)
    np.save(tmp_path / "floats.npy", IMAGES.astype(np.float32))
    assert refused(_read_arrays, tmp_path / "floats.npy") == (
        f"{tmp_path / 'floats.npy'}: the array has dtype float32; vaelab reads uint8 images "
        "(0-255): convert with (x * 255).round().astype(numpy.uint8)")
    np.savez(tmp_path / "extra.npz", images=IMAGES, aaa=np.zeros(3))  # `images` is chosen
    assert _read_arrays(tmp_path / "extra.npz")[0].shape == (6, 4, 4, 1)
    np.savez(tmp_path / "one.npz", IMAGES)  # a single unnamed array: the images
    assert _read_arrays(tmp_path / "one.npz")[0].shape == (6, 4, 4, 1)
    np.savez(tmp_path / "named.npz", pictures=IMAGES, labels=np.array([0, 1, 2, 0, 1, 2]))
    images, labels, classes, given = _read_arrays(tmp_path / "named.npz")
    assert labels.tolist() == [0, 1, 2, 0, 1, 2] and classes == ("0", "1", "2")
    np.savez(tmp_path / "keras.npz", x_train=IMAGES[:4], y_train=np.array([1, 0, 1, 0]),
             x_test=IMAGES[4:], y_test=np.array([[0], [1]]))
    images, labels, classes, given = _read_arrays(tmp_path / "keras.npz")
    assert torch.equal(torch.from_numpy(images[..., 0]), torch.from_numpy(IMAGES))
    assert labels.tolist() == [1, 0, 1, 0, 0, 1] and given.tolist() == [False] * 4 + [True] * 2
    np.savez(tmp_path / "unlabelled.npz", x_train=IMAGES[:4], x_test=IMAGES[4:])
    assert _read_arrays(tmp_path / "unlabelled.npz")[1] is None


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": IMAGES[:4], "y_train": np.zeros(4, int), "x_test": IMAGES[4:]},
     "has labels for one split only; give y_train and y_test, or neither"),
    ({"x_train": IMAGES[:4], "x_test": IMAGES[4:], "y_test": np.zeros(2, int)},
     "has labels for one split only; give y_train and y_test, or neither"),
    ({"labels": np.zeros(6, int), "other": IMAGES, "more": IMAGES},
     "holds labels, more, other but no `images`; vaelab reads `images` (and `labels`, "
     "`classes`), or x_train, y_train, x_test, y_test"),
    ({"images": IMAGES, "labels": np.array([0, 1, 2, 3, 0, 1]), "classes": np.array(["a", "b"])},
     "label 3 has no name in `classes` (2 names)"),
    ({"images": IMAGES, "labels": np.array([0, 1, 2, 3, 0, 1]),
      "classes": np.array(["a", "b", "c"])}, "label 3 has no name in `classes` (3 names)"),
    ({"images": IMAGES, "classes": np.array(["a", 1], dtype=object)},
     "`classes` is an object array; save the names as strings, numpy.array(names, dtype=str)"),
    ({"images": IMAGES.astype(np.int16)}, "images has dtype int16; vaelab reads uint8 images "
     "(0-255): convert with (x * 255).round().astype(numpy.uint8)"),
    ({"x_train": IMAGES.astype(np.int16), "x_test": IMAGES}, "x_train has dtype int16; vaelab"
     " reads uint8 images (0-255): convert with (x * 255).round().astype(numpy.uint8)"),
    ({"images": IMAGES, "labels": np.zeros(5, int)},
     "6 images but 5 labels; there must be one label per image"),
])
def test_every_refused_array_names_the_file(tmp_path, arrays, message):
    np.savez(tmp_path / "a.npz", **arrays)
    assert refused(_read_arrays, tmp_path / "a.npz") == f"{tmp_path / 'a.npz'}: {message}"


def test_an_unreadable_array_file(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    assert refused(_read_arrays, tmp_path / "bad.npy").startswith(
        f"{tmp_path / 'bad.npy'}: cannot be read as a NumPy array file (")
    assert refused(_read_arrays, tmp_path / "bad.npy").endswith(
        "); write it with numpy.save or numpy.savez")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    assert "cannot be read as a NumPy array file" in refused(_read_arrays,
                                                             tmp_path / "objects.npy")


def test_convert_is_the_identity_without_options_and_resizes_with_them():
    colour = np.stack([IMAGES, IMAGES // 2, IMAGES // 3], -1)  # (6, 4, 4, 3)
    same = convert(colour, None, None, "x")
    assert same.shape == (6, 3, 4, 4) and torch.equal(same[:, 1], torch.from_numpy(IMAGES // 2))
    assert torch.equal(convert(colour, None, 3, "x"), same)
    grey = convert(IMAGES[..., None], None, 3, "x")  # a grey picture made colour: R = G = B
    assert grey.shape == (6, 3, 4, 4) and torch.equal(grey[:, 0], torch.from_numpy(IMAGES))
    assert torch.equal(grey[:, 2], grey[:, 0]) and grey.dtype == torch.uint8
    assert convert(IMAGES[..., None], 8, None, "x").shape == (6, 1, 8, 8)
    assert convert(colour, 8, 1, "x").shape == (6, 1, 8, 8)


def test_the_config_records_the_datas_shape_and_classes():
    split = Split(torch.zeros(5, 3, 16, 24, dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1]),
                  ("a", "b", "c"))
    config = with_data_shape(Config(data="x"), split)
    assert (config.channels, config.height, config.width, config.classes) == (3, 16, 24, None)
    assert config.train_images == 5  # beta-TCVAE's estimator needs the training set's size
    conditional = with_data_shape(Config(data="x", conditional=True), split)
    assert conditional.classes == 3 and conditional.height == 16
    unlabelled = Split(split.images, None)
    assert refused(with_data_shape, Config(data="x", conditional=True), unlabelled) == (
        "--conditional needs labelled images, and x has none: put each class in its own "
        "subfolder (or give labels in the .npz), or train without --conditional")


def test_a_runs_validation_split_comes_from_where_its_data_lies_now(tmp_path):
    np.save(tmp_path / "moved.npy", np.repeat(IMAGES, 2, 0))
    config = Config(data=str(tmp_path / "gone.npy"), val_fraction=0.25)
    val = validation_split(config, data=tmp_path / "moved.npy")
    assert len(val) == 3 and val.images.shape[1:] == (1, 4, 4)


def factors_file(tmp_path, **arrays):
    path = tmp_path / "with-factors.npz"
    np.savez(path, images=np.zeros((len(arrays["factors"]), 4, 4), np.uint8), **arrays)
    return path


def test_factors_are_one_row_of_indices_per_image_with_their_names(tmp_path):
    rows = np.array([[0, 2], [1, 0], [3, 1]], dtype=np.int16)
    path = factors_file(tmp_path, factors=rows, factor_names=np.array(["shape", "scale"]))
    factors, names = read_factors(path, 3)
    assert factors.tolist() == rows.tolist() and factors.dtype == np.int64
    assert names == ("shape", "scale")
    unnamed = factors_file(tmp_path, factors=rows)
    assert read_factors(unnamed, 3)[1] == ("factor 0", "factor 1")
    assert read_factors(factors_file(tmp_path, factors=np.zeros((0, 2), int)), 0)[0].shape == (0, 2)
    np.savez(tmp_path / "plain.npz", images=IMAGES)
    assert read_factors(tmp_path / "plain.npz", 6) is None  # no factors: none
    assert read_factors(tmp_path / "folder", 6) is None  # not an .npz: none


def test_every_refusal_of_factors_word_for_word(tmp_path):
    def message(count, **arrays):
        path = factors_file(tmp_path, **arrays)
        return refused(read_factors, path, count).replace(f"{path}: ", "")

    shape_rule = ("expected (N, F) integers >= 0, each factor's value as an index (bin "
                  "continuous factors first)")
    assert message(3, factors=np.zeros(3, int)) == (
        f"factors have shape (3,) and dtype int64; {shape_rule}")
    assert message(2, factors=np.zeros((2, 2), np.float32)) == (
        f"factors have shape (2, 2) and dtype float32; {shape_rule}")
    assert message(2, factors=np.array([[0, -1], [0, 0]])) == (
        f"factors have shape (2, 2) and dtype int64; {shape_rule}")
    assert message(3, factors=np.zeros((2, 2), int)) == (
        "3 images but 2 rows of factors; there must be one row per image")
    assert message(2, factors=np.zeros((2, 2), int), factor_names=np.array(["a"])) == (
        "2 factors but 1 factor_names")
    assert message(2, factors=np.zeros((2, 2), int),
                   factor_names=np.array(["a", None], dtype=object)) == (
        "`factor_names` is an object array; save the names as strings, "
        "numpy.array(names, dtype=str)")


def test_a_sample_is_distinct_images_in_their_order_with_their_labels_and_names():
    ids = torch.arange(10, dtype=torch.uint8)
    split = Split(ids.view(10, 1, 1, 1), torch.arange(10) % 3, ("a", "b", "c"), ("f",))
    for everything in (None, 10, 11):
        assert split.sample(everything, 0) is split  # all of it: the split itself, in order
    part = split.sample(4, 1)
    chosen = part.images.flatten().tolist()
    assert len(set(chosen)) == 4 and chosen == sorted(chosen)
    assert part.labels.tolist() == [i % 3 for i in chosen]  # each keeps its own label
    assert (part.classes, part.factor_names) == (("a", "b", "c"), ("f",))
    assert part.sample(4, 1) is part and torch.equal(split.sample(4, 1).images, part.images)
    assert split.sample(4, 2).images.flatten().tolist() != chosen  # the seed chooses
    unlabelled = Split(split.images, None).sample(4, 1)
    assert unlabelled.labels is None and unlabelled.images.flatten().tolist() == chosen


def test_converting_more_than_memory_holds_is_refused_naming_the_array(monkeypatch):
    import vaelab.images

    monkeypatch.setattr(vaelab.images, "available_memory", lambda: 2_000_000_000)
    many = np.broadcast_to(IMAGES[:1, ..., None], (50_000, 4, 4, 1))
    assert refused(convert, many, 100, 3, "big.npz") == (
        "big.npz: 50,000 images of 3x100x100 take 1.5 GB as uint8, more than half the 2.0 GB "
        "of memory available; use --image-size to shrink them, or a subset")
    needed = 2 * 3 * 4 * 4  # two images, made colour: exactly half of what is available fits
    monkeypatch.setattr(vaelab.images, "available_memory", lambda: 2 * needed)
    assert convert(IMAGES[:2, ..., None], None, 3, "fits.npz").shape == (2, 3, 4, 4)


@pytest.mark.parametrize("name", ["pictures", "x", "data", "digits", "faces", "arr"])
def test_the_one_array_that_is_not_labels_classes_or_factors_holds_the_images(tmp_path, name):
    """Whatever it is called; and `images` wins over any other array. (Set order decides
    nothing: several names, each beside arrays that would be refused as images.)"""
    np.savez(tmp_path / "a.npz", **{name: IMAGES}, labels=np.arange(6) % 2,
             classes=np.array(["odd one", "even one"]), factors=np.zeros((6, 1), int))
    images, labels, classes, _ = _read_arrays(tmp_path / "a.npz")
    assert images.shape == (6, 4, 4, 1) and classes == ("odd one", "even one")
    extras = {f"{name}_{k}": np.zeros(3) for k in range(3)}
    np.savez(tmp_path / "b.npz", images=IMAGES, **extras)
    assert _read_arrays(tmp_path / "b.npz")[0].shape == (6, 4, 4, 1)


def test_factors_are_checked_as_the_images_are_read(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, images=IMAGES, factors=np.zeros((5, 2), int))
    assert refused(_read_arrays, path) == (
        f"{path}: 6 images but 5 rows of factors; there must be one row per image")


def test_holding_out_refuses_word_for_word_when_a_class_or_the_data_would_not_train():
    from vaelab.own_data import held_out

    def refusal_of(labels, count, classes, fraction=0.1):
        return refused(held_out, labels, count, Config(val_fraction=fraction), classes)

    assert refusal_of(torch.tensor([0, 0, 2]), 3, ("a", "b", "c")) == (
        "class 'b' has no images: labels must number the classes 0, 1, 2, ... without gaps "
        "(or give `classes` only for labels in use)")
    assert refusal_of(None, 1, ()) == (
        "the data has 1 image(s): holding out 1 for validation leaves none to train on; add "
        "images, or give train/ and val/ folders")
    assert refusal_of(torch.tensor([0, 0, 1, 1, 1]), 5, ("a", "b"), 0.9) == (
        "class 'a' has 2 image(s): holding out 2 for validation leaves none to train on; add "
        "images, lower --val-fraction, or give train/ and val/ folders")
    kept = held_out(torch.tensor([0, 0, 1, 1, 1]), 5, Config(val_fraction=0.4), ("a", "b"))
    assert kept.tolist().count(True) == 2 and kept[:2].sum() == 1 and kept[2:].sum() == 1


def test_conditional_runs_need_labels_and_given_splits_are_checked(tmp_path):
    from vaelab.own_data import _check_labelled, _split

    assert refused(_check_labelled, Config(conditional=True), None, tmp_path) == (
        f"--conditional needs labelled images, and {tmp_path} has none: put each class in its "
        "own subfolder (or give labels in the .npz), or train without --conditional")
    _check_labelled(Config(conditional=True), torch.tensor([0]), tmp_path)  # labelled: fine
    _check_labelled(Config(), None, tmp_path)  # not conditional: fine
    given = torch.tensor([False, True, True])
    assert refused(_split, torch.tensor([0, 1, 1]), 3, ("a", "b"), given, Config(),
                   tmp_path) == (f"{tmp_path}: class 'b' has no training images; add some to "
                                 "its training folder or remove the class")
    fine = torch.tensor([False, False, True])
    assert _split(torch.tensor([0, 1, 0]), 3, ("a", "b"), fine, Config(), tmp_path) is fine


def test_a_head_keeps_labels_classes_and_factor_names():
    split = Split(torch.from_numpy(IMAGES[:, None].copy()), torch.arange(6) % 2, ("a", "b"),
                  ("f",))
    head = split.head(4)
    assert torch.equal(head.images, split.images[:4]) and head.labels.tolist() == [0, 1, 0, 1]
    assert (head.classes, head.factor_names) == (("a", "b"), ("f",))
    assert Split(split.images, None).head(2).labels is None


def test_an_array_file_as_data_names_itself_in_every_refusal(tmp_path, monkeypatch):
    from vaelab.own_data import load_image_data

    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, images=IMAGES, labels=np.arange(6) % 2)
    images, labels, classes, is_val = load_image_data(Config(data=str(labelled),
                                                             conditional=True))
    assert images.shape == (6, 1, 4, 4) and labels.tolist() == [0, 1] * 3 and int(is_val.sum())
    unlabelled = tmp_path / "plain.npy"
    np.save(unlabelled, IMAGES)
    assert refused(load_image_data, Config(data=str(unlabelled), conditional=True)) == (
        f"--conditional needs labelled images, and {unlabelled} has none: put each class in "
        "its own subfolder (or give labels in the .npz), or train without --conditional")
    keras = tmp_path / "keras.npz"
    np.savez(keras, x_train=IMAGES[:4], y_train=np.zeros(4, int), x_test=IMAGES[4:],
             y_test=np.array([0, 1]))
    assert refused(load_image_data, Config(data=str(keras))) == (
        f"{keras}: class '1' has no training images; add some to its training folder or "
        "remove the class")
    import vaelab.images

    monkeypatch.setattr(vaelab.images, "available_memory", lambda: 100)
    assert refused(load_image_data, Config(data=str(labelled), image_size=16)).startswith(
        f"{labelled}: 6 images of 1x16x16 take 0.0 GB as uint8")


def test_load_data_keeps_each_splits_labels_and_the_factors_names(tmp_path):
    from vaelab.data import load_data

    path = tmp_path / "f.npz"
    np.savez(path, images=IMAGES, labels=np.arange(6) % 3, factors=np.zeros((6, 2), int),
             factor_names=np.array(["shape", "size"]))
    train, val = load_data(Config(data=str(path), val_fraction=0.34))
    assert (len(train), len(val)) == (3, 3) and train.factor_names == ("shape", "size")
    for split in (train, val):
        assert sorted(split.labels.tolist()) == [0, 1, 2]  # one of each class on each side
        assert split.factor_names == ("shape", "size") and split.classes == ("0", "1", "2")
    np.savez(path, images=IMAGES)
    assert load_data(Config(data=str(path)))[0].factor_names == ()


def test_a_folder_as_data_names_itself_in_every_refusal(tmp_path):
    from PIL import Image

    from vaelab.own_data import load_image_data

    def folder(name, layout):
        for path in layout:
            (tmp_path / name / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(IMAGES[0]).resize((16, 16)).save(tmp_path / name / path)
        return tmp_path / name

    flat = folder("flat", ["0.png", "1.png"])
    assert refused(load_image_data, Config(data=str(flat), conditional=True)) == (
        f"--conditional needs labelled images, and {flat} has none: put each class in its own "
        "subfolder (or give labels in the .npz), or train without --conditional")
    classes = folder("classes", ["a/0.png", "a/1.png", "b/0.png", "b/1.png"])
    assert load_image_data(Config(data=str(classes), conditional=True))[1].tolist() == [0, 0,
                                                                                         1, 1]
    given = folder("given", ["train/a/0.png", "val/a/0.png", "val/b/0.png"])
    assert refused(load_image_data, Config(data=str(given))) == (
        f"{given}: class 'b' has no training images; add some to its training folder or remove "
        "the class")
