"""`--data`: folders and arrays of images -> the same uint8 Splits as the IDX files; the cache."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from helpers import refused
from PIL import Image

import vaelab.cache
import vaelab.images as images_module
from vaelab import Config
from vaelab.data import load_data, load_split
from vaelab.errors import DataError
from vaelab.images import fit

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant


def write_mnist_folder(data_dir, out, *extra):
    subprocess.run([sys.executable, REPO / "scripts" / "mnist_to_images.py", out,
                    "--data-dir", data_dir, *map(str, extra)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def mnist_pngs(data_dir, tmp_path_factory):
    """MNIST's first 300 training and 100 test images as OUT/{train,val}/<digit>/*.png."""
    return write_mnist_folder(data_dir, tmp_path_factory.mktemp("png") / "mnist",
                              "--limit-train", 300, "--limit-val", 100)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("VAELAB_CACHE_DIR", str(folder))
    return folder


def by_class(split):
    """The IDX order regrouped as a folder of class subfolders lists it: by class, stably."""
    order = torch.sort(split.labels, stable=True).indices
    return split.images[order], split.labels[order]


def test_a_png_folder_of_mnist_loads_to_exactly_the_idx_tensors(mnist_pngs, data_dir):
    train, val = load_data(Config(data=str(mnist_pngs)))
    for split, name, count in ((train, "train", 300), (val, "val", 100)):
        expected_images, expected_labels = by_class(load_split("mnist", name, data_dir, count))
        assert split.images.dtype == torch.uint8 and split.images.shape == (count, 1, 28, 28)
        assert torch.equal(split.images, expected_images)
        assert torch.equal(split.labels, expected_labels)
        assert split.classes == tuple("0123456789")


def pictures(folder, names, size=(20, 16), mode="RGB", seed=0):
    """Random pictures at folder/NAME for each name; returns their arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        arrays[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arrays[name]).convert(mode).save(path)
    return arrays


def test_class_folders_are_sorted_labels_held_out_per_class_by_seed(tmp_path):
    names = [f"{cls}/{i}.png" for cls in ("zebra", "ant") for i in range(20)]
    pictures(tmp_path / "d", names, size=(16, 16))
    config = Config(data=str(tmp_path / "d"), val_fraction=0.25)
    train, val = load_data(config)
    assert train.classes == val.classes == ("ant", "zebra")
    assert (len(train), len(val)) == (30, 10)
    assert val.labels.bincount().tolist() == [5, 5]  # round(0.25 x 20) of each class
    again = load_data(config)[1]
    other = load_data(config.replace(seed=1))[1]
    assert torch.equal(again.images, val.images)
    assert not torch.equal(other.images, val.images)


def test_limits_draw_from_every_class_with_the_seed(tmp_path):
    pictures(tmp_path / "d", [f"{c}/{i}.png" for c in "abc" for i in range(10)], size=(16, 16))
    config = Config(data=str(tmp_path / "d"), limit_train=9, limit_val=3)
    train, val = load_data(config)
    assert (len(train), len(val)) == (9, 3) and len(set(train.labels.tolist())) == 3
    assert torch.equal(load_data(config)[0].images, train.images)


def test_grey_palettes_and_eight_bit_integer_pictures_keep_their_values(tmp_path):
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    palette = Image.fromarray(grey).convert("P")
    assert palette.mode == "P" and images_module.channels_of(palette, "p") == 1
    assert np.array_equal(fit(palette, None, 1, "p")[..., 0], grey)
    wide = Image.fromarray(grey.astype(np.int32), mode="I")
    assert np.array_equal(fit(wide, None, 1, "i")[..., 0], grey)


def test_a_flat_folder_is_unlabelled_and_searched_recursively(tmp_path):
    pictures(tmp_path / "d", [f"{i}.png" for i in range(6)] + ["deep/er/x.png", "deep/y.png"],
             size=(16, 16), mode="L")
    (tmp_path / "d" / "notes.txt").write_text("not an image, skipped by its name")
    train, val = load_data(Config(data=str(tmp_path / "d")))
    assert train.labels is None and val.labels is None and train.classes == ()
    assert (len(train), len(val)) == (7, 1) and train.images.shape[1:] == (1, 16, 16)


def test_arrays_npz_npy_and_keras_layout(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "a.npz", images=images, labels=labels,
             classes=np.array(["w", "x", "y", "z"]))
    train, val = load_data(Config(data=str(tmp_path / "a.npz")))
    assert train.classes == ("w", "x", "y", "z") and (len(train), len(val)) == (36, 4)
    together = torch.cat([train.images, val.images])
    assert sorted(map(bytes, together.numpy())) == sorted(
        map(bytes, images.transpose(0, 3, 1, 2)))
    mixed = np.tile(np.arange(4), 10)
    np.savez(tmp_path / "k.npz", x_train=images[:30, ..., 0], y_train=mixed[:30],
             x_test=images[30:, ..., 0], y_test=mixed[30:])
    train, val = load_data(Config(data=str(tmp_path / "k.npz")))  # the split as given
    assert torch.equal(val.images, torch.from_numpy(images[30:, None, ..., 0]))
    assert val.labels.tolist() == mixed[30:].tolist() and train.classes == ("0", "1", "2", "3")
    np.save(tmp_path / "n.npy", images)
    train, val = load_data(Config(data=str(tmp_path / "n.npy"), channels=1))
    assert train.labels is None and train.images.shape[1:] == (1, 16, 16)


def test_resizing_is_torchvisions_resize_and_centre_crop(tmp_path):
    """The reference: torchvision's Resize(S) + CenterCrop(S) on the same Pillow picture."""
    from torchvision import transforms

    reference = transforms.Compose([transforms.Resize(12), transforms.CenterCrop(12)])
    for size in ((40, 23), (23, 40), (31, 31)):
        picture = Image.fromarray(np.random.default_rng(1).integers(
            0, 256, (size[1], size[0], 3), dtype=np.uint8))
        assert np.array_equal(fit(picture, 12, 3, "p"), np.asarray(reference(picture)))


def test_files_and_arrays_give_the_same_tensor_after_conversion(tmp_path):
    arrays = pictures(tmp_path / "d", [f"{i}.png" for i in range(5)], size=(24, 30))
    np.save(tmp_path / "a.npy", np.stack([arrays[f"{i}.png"] for i in range(5)]))
    options = dict(image_size=16, channels=1, val_fraction=0.2)
    from_files = load_data(Config(data=str(tmp_path / "d"), **options))
    from_array = load_data(Config(data=str(tmp_path / "a.npy"), **options))
    for a, b in zip(from_files, from_array):
        assert torch.equal(a.images, b.images)


def test_sixteen_bit_and_palette_pictures_are_converted(tmp_path):
    """16-bit grey is scaled to 8 bits (v / 257, rounded); a palette becomes its RGB colours."""
    folder = tmp_path / "d"
    folder.mkdir()
    row = np.array([0, 257 * 3, 257 * 200 + 100, 65535], dtype=np.uint16)
    for i in range(2):
        Image.fromarray(np.tile(row, (16, 4))).save(folder / f"{i}.png")
    assert Image.open(folder / "0.png").mode.startswith("I")  # Pillow reads it as 16-bit
    train, val = load_data(Config(data=str(folder), val_fraction=0.5))
    assert train.images[0, 0, 0, :4].tolist() == [0, 3, 200, 255]
    palette = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3),
                                                                dtype=np.uint8)).quantize(8)
    assert palette.mode == "P"
    assert np.array_equal(fit(palette, None, 3, "p"), np.asarray(palette.convert("RGB")))


def test_the_cache_is_reused_and_invalidated(tmp_path, cache, monkeypatch):
    folder = tmp_path / "d"
    pictures(folder, [f"{c}/{i}.png" for c in "ab" for i in range(5)], size=(16, 16))
    decoded = []
    real = images_module.decode
    monkeypatch.setattr(images_module, "decode", lambda *a: decoded.append(a[0]) or real(*a))
    config = Config(data=str(folder))
    first = load_data(config)
    assert len(decoded) == 10 and len(list(cache.glob("images-*.pt"))) == 1
    assert not list(folder.rglob("*.pt"))  # never beside the data
    second = load_data(config)
    assert len(decoded) == 10  # read from the cache
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, second))

    os.utime(folder / "a" / "0.png", ns=(1, 1))  # a changed file: decoded again
    load_data(config)
    assert len(decoded) == 20
    load_data(config.replace(channels=3))  # what a run records: the same images, cached
    assert len(decoded) == 20
    load_data(config.replace(channels=1))  # other options: another cache entry
    assert len(decoded) == 30 and len(list(cache.glob("images-*.pt"))) == 3


@pytest.mark.parametrize("damage", ["truncated", "garbage", "tampered", "other version"])
def test_a_damaged_or_foreign_cache_is_rebuilt(tmp_path, cache, monkeypatch, damage):
    folder = tmp_path / "d"
    pictures(folder, [f"{i}.png" for i in range(6)], size=(16, 16))
    config = Config(data=str(folder))
    expected = load_data(config)
    (path,) = cache.glob("images-*.pt")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"\0" * 1000)
    elif damage == "tampered":  # whole and loadable, but its pixels are not what was saved
        saved = torch.load(path, weights_only=True)
        saved["images"][0, 0, 0, 0] ^= 1
        torch.save(saved, path)
    else:
        monkeypatch.setattr(vaelab.cache, "__version__", "0.0.0-other")
    decoded = []
    real = images_module.decode
    monkeypatch.setattr(images_module, "decode", lambda *a: decoded.append(a[0]) or real(*a))
    again = load_data(config)
    assert len(decoded) == 6
    assert all(torch.equal(a.images, b.images) for a, b in zip(expected, again))


def test_a_cache_folder_that_cannot_be_written_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("VAELAB_CACHE_DIR", str(blocker / "cache"))
    pictures(tmp_path / "d", [f"{i}.png" for i in range(4)], size=(16, 16))
    train, val = load_data(Config(data=str(tmp_path / "d"), val_fraction=0.25))
    assert (len(train), len(val)) == (3, 1)


def test_a_symlink_loop_is_named(tmp_path):
    pictures(tmp_path / "d", ["a/0.png", "a/1.png"], size=(16, 16))
    (tmp_path / "d" / "a" / "loop").symlink_to(tmp_path / "d")
    with pytest.raises(DataError, match="symbolic link loop"):
        load_data(Config(data=str(tmp_path / "d")))


def test_every_sixteen_bit_value_rounds_to_the_nearest_eight_bit_one():
    """All 65,536 values at once against v / 257 rounded in float64 (never a tie: 257 is
    odd), so a rounding or a divisor off by one shows; a 16-bit picture of small values is
    still scaled, and a 32-bit integer picture only when it goes above 255."""
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.round(every / 257).astype(np.uint8)
    assert np.array_equal(fit(Image.fromarray(every), None, 1, "w")[..., 0], expected)
    small = np.array([[0, 128, 129, 255]], dtype=np.uint16)  # I;16 holding at most 255
    assert fit(Image.fromarray(small), None, 1, "s")[0, :, 0].tolist() == [0, 0, 1, 1]
    as_is = np.arange(256, dtype=np.int32).reshape(16, 16)  # mode I, 0-255: kept as it is
    assert np.array_equal(fit(Image.fromarray(as_is, mode="I"), None, 1, "i")[..., 0], as_is)
    above = np.array([[0, 256, 65535]], dtype=np.int32)  # mode I above 255: a 16-bit scale
    assert fit(Image.fromarray(above, mode="I"), None, 1, "i")[0, :, 0].tolist() == [0, 1, 255]
    edge = np.array([[0, 128, 256]], dtype=np.int32)  # 256: just past 8 bits, so all scale
    assert fit(Image.fromarray(edge, mode="I"), None, 1, "i")[0, :, 0].tolist() == [0, 0, 1]


@pytest.mark.parametrize("value", [-1, 65536])
def test_pixels_beyond_sixteen_bits_are_refused_naming_the_file(tmp_path, value):
    picture = Image.fromarray(np.array([[0, value]], dtype=np.int32), mode="I")
    assert refused(fit, picture, None, 1, "p.tif") == (
        "p.tif: holds pixel values beyond 16 bits; convert it to 8-bit")
    picture.save(tmp_path / "p.tif")  # from a file, the error names its path
    assert refused(images_module.decode, tmp_path / "p.tif", None, 1) == (
        f"{tmp_path / 'p.tif'}: holds pixel values beyond 16 bits; convert it to 8-bit")


def test_a_file_that_cannot_be_decoded_is_named_with_pillows_reason(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:40])  # the header, not the pixels
    try:  # Pillow's own words for it, whatever its version says
        with Image.open(path) as picture:
            picture.load()
    except OSError as err:
        reason = str(err).splitlines()[0]
    assert refused(images_module.decode, path, None, 1) == (
        f"{path}: cannot be decoded ({reason}); replace or remove it (vaelab does not skip "
        "images silently)")
    floats = Image.fromarray(np.zeros((2, 2), np.float32))
    assert refused(fit, floats, None, 1, "f.tif") == (
        "f.tif: holds 32-bit floating-point pixels, not an 8- or 16-bit picture; convert it "
        "to 8-bit PNG")


def test_available_memory_is_linuxs_memavailable_else_the_physical_memory(monkeypatch):
    """Read through a stand-in /proc/meminfo; without one, the physical memory, which must be
    MemTotal (the kernel's count of the same pages, in kB); without that, 1 TiB."""
    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))

    def meminfo(text):
        def fake_open(path, *args, **kwargs):
            if path != "/proc/meminfo":
                raise FileNotFoundError(path)
            return io.StringIO(text)
        return fake_open

    monkeypatch.setattr(images_module, "open", meminfo(
        "MemTotal:  100 kB\nMemFree:  7 kB\nMemAvailable:   42 kB\n"), raising=False)
    assert images_module.available_memory() == 42 * 1024
    monkeypatch.setattr(images_module, "open", meminfo("MemTotal:  100 kB\n"))  # no such line
    assert images_module.available_memory() == total * 1024
    monkeypatch.setattr(images_module.os, "sysconf", lambda name: int("unknown name"))
    assert images_module.available_memory() == 1 << 40


def test_the_memory_check_counts_every_byte_of_a_wide_picture(monkeypatch):
    """2 pictures of 3x4x8 take 192 bytes: they fit in twice that, not in a byte less (a
    height and width taken for each other would count 384)."""
    monkeypatch.setattr(images_module, "available_memory", lambda: 2 * 192)
    images_module.check_memory(2, (3, 4, 8), "wide")
    monkeypatch.setattr(images_module, "available_memory", lambda: 2 * 192 - 1)
    assert refused(images_module.check_memory, 2, (3, 4, 8), "wide").startswith(
        "wide: 2 images of 3x4x8 take 0.0 GB as uint8, more than half")


def test_the_cache_is_found_only_for_the_same_size_and_the_channels_a_run_records(
        tmp_path, monkeypatch):
    """A run records its images' channels, so a later command asks for them: the decode made
    without --channels serves it. A different size is decoded anew."""
    folder = tmp_path / "d"
    pictures(folder, [f"{i}.png" for i in range(4)], size=(20, 20))
    decoded = []
    real = images_module.decode
    monkeypatch.setattr(images_module, "decode", lambda *a: decoded.append(a[0]) or real(*a))
    listing = images_module.list_folder(folder)
    first = images_module.read_folder(listing, 16, None, "conv")
    assert first.shape == (4, 3, 16, 16) and len(decoded) == 4
    again = images_module.read_folder(listing, 16, 3, "conv")  # as the run records it
    assert torch.equal(again, first) and len(decoded) == 4  # from the cache
    assert torch.equal(images_module.read_folder(listing, 16, 3, "conv"), first)
    assert len(decoded) == 4
    whole = images_module.read_folder(listing, None, 3, "conv")  # another size: decoded
    assert whole.shape == (4, 3, 20, 20) and len(decoded) == 8
    grey = images_module.read_folder(listing, 16, 1, "conv")  # other channels: decoded
    assert grey.shape == (4, 1, 16, 16) and len(decoded) == 12
    assert torch.equal(images_module.read_folder(listing, 16, 1, "conv"), grey)
    assert len(decoded) == 12  # its own entry now


def test_a_file_whose_header_cannot_be_read_is_named_with_pillows_reason(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"not a picture at all")
    try:
        Image.open(path)
    except OSError as err:
        reason = str(err).splitlines()[0]
    assert refused(images_module.probe, path) == (
        f"{path}: cannot be read as an image ({reason}); replace or remove it")


def test_a_folder_of_grey_and_colour_pictures_asks_for_channels(tmp_path):
    pictures(tmp_path / "d", ["a.png", "b.png"], size=(16, 16), mode="L")
    pictures(tmp_path / "d", ["c.png"], size=(16, 16))
    listing = images_module.list_folder(tmp_path / "d")
    assert refused(images_module.read_folder, listing, None, None, "conv") == (
        f"{tmp_path / 'd' / 'c.png'} is colour but {tmp_path / 'd' / 'a.png'} is grey; "
        "give --channels 1 or 3")


def test_a_folder_of_two_sizes_or_too_large_for_memory_is_refused_word_for_word(
        tmp_path, monkeypatch):
    pictures(tmp_path / "d", ["a.png"], size=(20, 16))
    pictures(tmp_path / "d", ["b.png", "c.png"], size=(16, 16))
    listing = images_module.list_folder(tmp_path / "d")
    assert refused(images_module.read_folder, listing, None, None, "conv") == (
        f"{tmp_path / 'd' / 'b.png'} is 16x16 but {tmp_path / 'd' / 'a.png'} is 20x16; give "
        "--image-size S to resize all images to SxS")
    monkeypatch.setattr(images_module, "available_memory", lambda: 1000)
    assert refused(images_module.read_folder, listing, 16, None, "conv") == (
        f"{tmp_path / 'd'}: 3 images of 3x16x16 take 0.0 GB as uint8, more than half the 0.0 GB "
        "of memory available; use --image-size to shrink them, or a subset")


def test_listing_refusals_word_for_word(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert refused(images_module.list_folder, tmp_path / "a.txt") == (
        f"{tmp_path / 'a.txt'} is a file; --data takes a folder of images or an .npz/.npy array")
    assert refused(images_module.list_folder, tmp_path / "none") == (
        f"{tmp_path / 'none'}: no such folder; point --data at a folder of images or an "
        ".npz/.npy file")
    assert refused(images_module.list_folder, tmp_path) == (
        f"{tmp_path} holds no image files (.png, .jpg, .jpeg, .bmp, .gif, ...); point --data "
        "at a folder of pictures")
    pictures(tmp_path / "d" / "train" / "a", ["0.png"], size=(16, 16))
    pictures(tmp_path / "d" / "val", ["0.png"], size=(16, 16))
    assert refused(images_module.list_folder, tmp_path / "d") == (
        f"{tmp_path / 'd' / 'train'} and {tmp_path / 'd' / 'val'} are laid out differently "
        "(class subfolders in one only); give both class subfolders, or neither")
    (tmp_path / "e" / "a").mkdir(parents=True)
    pictures(tmp_path / "e" / "b", ["0.png"], size=(16, 16))
    assert refused(images_module.list_folder, tmp_path / "e") == (
        f"class folder {tmp_path / 'e' / 'a'} holds no images; add some or remove it")


def test_train_alone_is_held_out_from_and_a_class_may_lack_validation_images(tmp_path):
    pictures(tmp_path / "d" / "train" / "a", ["0.png", "1.png"], size=(16, 16))
    pictures(tmp_path / "d" / "train" / "b", ["0.png"], size=(16, 16))
    alone = images_module.list_folder(tmp_path / "d")
    assert alone.root == tmp_path / "d" / "train" and alone.given is None
    assert (alone.labels, alone.classes) == ([0, 0, 1], ("a", "b"))
    pictures(tmp_path / "d" / "val" / "a", ["2.png"], size=(16, 16))
    both = images_module.list_folder(tmp_path / "d")
    assert (both.labels, both.classes) == ([0, 0, 1, 0], ("a", "b"))
    assert both.given == ["train", "train", "train", "val"]
    pictures(tmp_path / "u" / "train", ["0.png"], size=(16, 16))
    pictures(tmp_path / "u" / "val", ["0.png"], size=(16, 16))
    unlabelled = images_module.list_folder(tmp_path / "u")
    assert unlabelled.labels is None and unlabelled.classes == () and len(unlabelled.files) == 2
    # val/ without train/ is no split layout: like any other subfolder, it is a class
    pictures(tmp_path / "v" / "val", ["0.png", "1.png"], size=(16, 16))
    val_alone = images_module.list_folder(tmp_path / "v")
    assert (val_alone.labels, val_alone.classes, val_alone.given) == ([0, 0], ("val",), None)


def test_hidden_entries_and_other_files_beside_class_folders_are_passed_over(tmp_path):
    root = tmp_path / "d"
    pictures(root / "a", [f"{i}.png" for i in range(6)] + [".x0.png", ".x1.png", ".x2.png"],
             size=(16, 16))
    pictures(root / "b", ["0.png"], size=(16, 16))
    pictures(root / ".thumbnails", ["0.png"], size=(16, 16))
    (root / "README.txt").write_text("not an image: the class folders still give labels")
    listing = images_module.list_folder(root)
    assert listing.classes == ("a", "b") and listing.labels == [0] * 6 + [1]
    assert [path.name for path in listing.files] == [f"{i}.png" for i in range(6)] + ["0.png"]


@pytest.mark.parametrize("inside", ["a", "a/b"])
def test_a_link_back_up_the_tree_is_named_where_it_lies(tmp_path, inside):
    root = tmp_path / "d"
    pictures(root / inside, ["0.png"], size=(16, 16))
    pictures(root / "c", ["0.png"], size=(16, 16))
    (root / inside / "up").symlink_to(root / "a", target_is_directory=True)
    assert refused(images_module.list_folder, root) == (
        f"{root / inside / 'up'} is a symbolic link loop (it leads back to {root / 'a'}); "
        "remove the link")


def test_a_palette_is_grey_when_its_colours_are_and_without_one():
    colour = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))
    assert images_module.channels_of(colour.quantize(4), "p") == 3
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    assert images_module.channels_of(grey, "p") == 1
    bare = Image.frombytes("P", (2, 2), bytes([0, 1, 2, 3]))
    assert bare.getpalette() == [] and images_module.channels_of(bare, "p") == 1
