"""Bad input for `--data`: each gets one line naming the file or setting and the fix, exit
code (1; 2 for an argument argparse refuses), and nothing written (no run folder, no change
to the data folder)."""

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image
from test_images import pictures

import vaelab.images

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant


def empty(root):
    root.mkdir(parents=True)


def not_images(root):
    root.mkdir(parents=True)
    (root / "a.txt").write_text("text")
    (root / "b.csv").write_text("1,2")


def undecodable(root):
    pictures(root, [f"{i}.png" for i in range(3)], size=(16, 16))
    whole = (root / "1.png").read_bytes()
    (root / "1.png").write_bytes(whole[:len(whole) // 2])  # header intact, data cut


def mixed_sizes(root):
    pictures(root, ["a.png", "b.png"], size=(16, 16))
    pictures(root, ["c.png"], size=(20, 16))


def mixed_modes(root):
    pictures(root, ["a.png", "b.png"], size=(16, 16))
    pictures(root, ["c.png"], size=(16, 16), mode="L")


def too_small(root):
    pictures(root, [f"{i}.png" for i in range(4)], size=(8, 8))


def floats(root):
    root.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.zeros((16, 16), dtype=np.float32)).save(root / f"{i}.tif")


def one_image_class(root):
    pictures(root, [f"a/{i}.png" for i in range(5)] + ["b/0.png"], size=(16, 16))


def split_layouts_differ(root):
    pictures(root, ["train/a/0.png", "train/b/0.png", "val/0.png"], size=(16, 16))


def loop(root):
    pictures(root, ["a/0.png", "a/1.png"], size=(16, 16))
    (root / "a" / "back").symlink_to(root)


def npz(**arrays):
    def make(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        np.savez(root, **arrays)
    return make


images16 = np.zeros((10, 16, 16), dtype=np.uint8)


@pytest.mark.parametrize("make, name, words", [
    (empty, "d", ["holds no image files", "--data"]),
    (not_images, "d", ["holds no image files"]),
    (undecodable, "d", ["1.png: cannot be decoded", "replace or remove it"]),
    (mixed_sizes, "d", ["c.png is 20x16 but", "a.png is 16x16", "--image-size"]),
    (mixed_modes, "d", ["c.png is grey but", "a.png is colour", "--channels 1 or 3"]),
    (too_small, "d", ["8x8 cannot be taken by --arch conv", "multiple of 4", "--image-size"]),
    (floats, "d", ["0.tif: holds 32-bit floating-point pixels", "8-bit"]),
    (one_image_class, "d", ["class 'b' has 1 image(s)", "add images, or give train/"]),
    (loop, "d", ["back is a symbolic link loop", "remove the link"]),
    (split_layouts_differ, "d", ["laid out differently", "class subfolders in one only"]),
    (npz(images=images16.astype(np.float32)), "a.npz", ["dtype float32", "uint8"]),
    (npz(images=np.zeros((10, 16, 16, 5), np.uint8)), "a.npz", ["shape (10, 16, 16, 5)"]),
    (npz(images=images16, labels=np.zeros(9, int)), "a.npz", ["10 images but 9 labels"]),
    (npz(pictures=images16, other=images16), "a.npz", ["vaelab reads `images`"]),
    (None, "missing", ["no such folder"]),
    (lambda root: pictures(root.parent, [root.name], size=(16, 16)), "one.png",
     ["one.png is a file", "a folder of images or an .npz/.npy"]),
    (npz(labels=np.zeros(10, int)), "a.npz", ["holds labels but no `images`"]),
    (npz(x_train=images16, x_test=np.zeros((4, 20, 20), np.uint8)), "a.npz",
     ["x_train holds (16, 16, 1) images but x_test (20, 20, 1)"]),
    (npz(images=np.zeros((10, 16, 16, 4), np.uint8)), "a.npz", ["RGBA", "images[..., :3]"]),
    (npz(images=images16, classes=np.array(["a", 1], dtype=object)), "a.npz",
     ["`classes` is an object array", "dtype=str"]),
    (npz(images=images16, labels=np.repeat([1, 2], 5)), "a.npz",
     ["class '0' has no images", "without gaps"]),
])
def test_bad_data_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, make, name,
                                                 words):
    cache = tmp_path / "cache"  # an empty image cache of this case's own
    cache.mkdir()
    monkeypatch.setenv("VAELAB_CACHE_DIR", str(cache))
    data = tmp_path / "data" / name
    if make:
        make(data)
    before = sorted(p.name for p in (tmp_path / "data").rglob("*")) \
        if (tmp_path / "data").exists() else []
    code, out, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "run")
    errors = [line for line in err.splitlines() if not line.startswith("vaelab: decoding")]
    assert code == 1 and len(errors) == 1 and errors[0].startswith("vaelab: error:"), err
    assert all(word in err for word in words), err
    assert not (tmp_path / "run").exists()
    after = sorted(p.name for p in (tmp_path / "data").rglob("*")) \
        if (tmp_path / "data").exists() else []
    assert after == before
    assert list(cache.iterdir()) == []  # no cache of images that were refused


def test_data_larger_than_memory_is_refused_before_allocating(capsys, tmp_path, monkeypatch):
    pictures(tmp_path / "d", [f"{i}.png" for i in range(4)], size=(16, 16))
    monkeypatch.setattr(vaelab.images, "available_memory", lambda: 4 * 3 * 16 * 16)
    monkeypatch.setattr(torch, "empty", lambda *a, **k: pytest.fail("allocated"))
    code, _, err = cli(capsys, "train", "--data", tmp_path / "d", "--out", tmp_path / "run")
    assert code == 1 and "take 0.0 GB as uint8, more than half" in err
    assert "--image-size" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, words", [
    (["--image-size", "30"], ["30x30 cannot be taken", "multiple of 4"]),
    (["--val-fraction", "1.5"], ["val_fraction = 1.5", "between 0 and 1"]),
    (["--dataset", "kmnist"], ["--data and --dataset name two sources"]),
    (["--channels", "2"], ["invalid choice: 2"]),
])
def test_impossible_image_settings_are_refused(capsys, tmp_path, flags, words):
    pictures(tmp_path / "d", [f"{i}.png" for i in range(4)], size=(16, 16))
    code, _, err = cli(capsys, "train", "--data", tmp_path / "d", "--out", tmp_path / "run",
                       *flags)
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert all(word in err for word in words), err
