import gzip
import hashlib
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import refused

from vaelab.data import load_split, to_float
from vaelab.errors import DataError
from vaelab.idx import SPLIT_FILES, find_files, read_idx, resolve_data_dir

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant

RAW = "MNIST/raw"
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
VAL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def listing(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_real_mnist_statistics_and_label_counts(data_dir):
    before = listing(data_dir)
    train, val = load_split("mnist", "train", data_dir), load_split("mnist", "val", data_dir)
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert val.images.shape == (10_000, 1, 28, 28)
    pixels = to_float(train.images)
    assert pixels.min() == 0 and pixels.max() == 1
    assert abs(pixels.mean().item() - 0.1307) < 5e-5
    assert abs(pixels.std().item() - 0.3081) < 5e-5
    assert torch.bincount(train.labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(val.labels).tolist() == VAL_COUNTS
    assert listing(data_dir) == before  # nothing extracted or written beside the files


def test_limit_takes_the_first_images(data_dir):
    full, head = load_split("mnist", "val", data_dir), load_split("mnist", "val", data_dir, 100)
    assert len(head) == 100 and torch.equal(head.images, full.images[:100])


def copy_files(data_dir: Path, target: Path, names=None, gunzip=False) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted((data_dir / RAW).glob("*.gz")):
        if names and source.name not in names:
            continue
        if gunzip:
            (target / source.stem).write_bytes(gzip.decompress(source.read_bytes()))
        else:
            shutil.copy(source, target / source.name)
    return target


def test_flat_folder_of_uncompressed_files(data_dir, tmp_path):
    copy_files(data_dir, tmp_path, gunzip=True)
    val = load_split("mnist", "val", tmp_path, download=False)
    assert torch.equal(val.images, load_split("mnist", "val", data_dir).images)


def test_data_dir_comes_from_argument_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("VAELAB_DATA_DIR", str(tmp_path))
    assert resolve_data_dir("elsewhere") == Path("elsewhere")
    assert resolve_data_dir() == tmp_path
    monkeypatch.delenv("VAELAB_DATA_DIR")
    assert resolve_data_dir() == Path("data")


def write_idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> Path:
    header = magic or bytes([0, 0, 8, array.ndim])
    path.write_bytes(header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())
    return path


def test_read_idx_round_trip_gzipped_or_not(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    plain = write_idx(tmp_path / "a", array)
    zipped = tmp_path / "a.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    assert np.array_equal(read_idx(plain), array) and np.array_equal(read_idx(zipped), array)


# README "Data": "Every file is checked on load (magic number, dimensions, length, images
# and labels agreeing, labels 0-9)": this test and the four after it.
@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:-100], "truncated"),
    (lambda b: b + b"\0", "bytes after"),
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "magic number 00000903"),
    (lambda b: b[:4] + struct.pack(">I", 2**31) + b[8:], "more than the file can hold"),
    (lambda b: b[:3], "truncated"),
])
def test_damaged_idx_files_name_the_file(tmp_path, damage, words):
    array = np.zeros((3, 28, 28), dtype=np.uint8)
    good = write_idx(tmp_path / "train-images-idx3-ubyte", array).read_bytes()
    for path in (tmp_path / "bad", tmp_path / "bad.gz"):
        data = damage(good)
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
        with pytest.raises(DataError, match=words) as caught:
            read_idx(path)
        assert str(path) in str(caught.value)


def test_corrupt_gzip_is_a_data_error(data_dir, tmp_path):
    folder = copy_files(data_dir, tmp_path / RAW)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte fails gzip's CRC or its inflate
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: unreadable"):
        load_split("mnist", "val", tmp_path, download=False)


def test_images_and_labels_must_agree(data_dir, tmp_path):
    copy_files(data_dir, tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(9_999, dtype=np.uint8))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="10000 images but .* has 9999 labels"):
        load_split("mnist", "val", tmp_path, download=False)


def test_labels_outside_0_to_9_are_refused(data_dir, tmp_path):
    copy_files(data_dir, tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(10_000, 11, dtype=np.uint8))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="label 11, expected digits 0-9"):
        load_split("mnist", "val", tmp_path, download=False)


def test_images_must_be_28_by_28(data_dir, tmp_path):
    copy_files(data_dir, tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10_000, 32, 32), dtype=np.uint8))
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"\(10000, 32, 32\), expected N x 28 x 28"):
        load_split("mnist", "val", tmp_path, download=False)


@pytest.mark.parametrize("split, names", [
    ("train", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]),
    ("val", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
])
def test_missing_files_offline_say_what_where_and_how(tmp_path, monkeypatch, split, names):
    """Only the split's own files are asked for, in one short line, and a failed download
    creates nothing in the data folder (not even MNIST/raw/)."""
    monkeypatch.setenv("VAELAB_MIRRORS", "http://127.0.0.1:9/")  # nothing listens on port 9
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(DataError) as caught:
        load_split("mnist", split, data)
    message = str(caught.value)
    wanted = [name for names_of_split in SPLIT_FILES.values() for name in names_of_split]
    for name in wanted:
        assert (f"{name}[.gz]" in message) == (name in names), name
    assert f"{data} or its MNIST/raw/" in message and "--data-dir" in message
    assert "download of" in message and "failed" in message and "VAELAB_DATA_DIR" in message
    assert len(message) < 400 and "\n" not in message
    assert list(data.iterdir()) == []


def test_find_files_prefers_torchvision_layout(data_dir, tmp_path):
    copy_files(data_dir, tmp_path / RAW)
    copy_files(data_dir, tmp_path, names=["t10k-images-idx3-ubyte.gz"])
    found = find_files("mnist", tmp_path)
    assert found["t10k-images-idx3-ubyte"] == tmp_path / RAW / "t10k-images-idx3-ubyte.gz"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_binarize_keeps_black_and_white_and_samples_gray_by_intensity():
    """0 stays 0 and 255 stays 255; a pixel of intensity p is 255 with probability p, so the
    share of 255s among N gray pixels is within 5 standard errors sqrt(p(1-p)/N) of p."""
    from vaelab.data import binarize

    images = torch.tensor([0, 255, 64], dtype=torch.uint8).repeat_interleave(20_000)
    out = binarize(images.view(-1, 1, 1, 1), seed=3).flatten()
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) == {0, 255}
    assert (out[:20_000] == 0).all() and (out[20_000:40_000] == 255).all()
    p, n = 64 / 255, 20_000
    share = (out[40_000:] == 255).double().mean().item()
    assert abs(share - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(out, binarize(images.view(-1, 1, 1, 1), seed=3).flatten())
    assert not torch.equal(out, binarize(images.view(-1, 1, 1, 1), seed=4).flatten())


def test_training_and_validation_images_by_binarization_mode(data_dir):
    from vaelab import Config
    from vaelab.data import TEST_BINARIZATION_SEED, binarize, training_images, validation_images

    split = load_split("mnist", "val", data_dir, limit=20)
    gray, static, dynamic = (Config(binarize=mode, seed=6) for mode in ("none", "static",
                                                                       "dynamic"))
    assert training_images(gray, split) is split.images
    assert training_images(dynamic, split) is split.images  # binarized per batch instead
    assert torch.equal(training_images(static, split), binarize(split.images, 7))
    assert validation_images(gray, split) is split.images
    shared = binarize(split.images, TEST_BINARIZATION_SEED)
    assert torch.equal(validation_images(static, split), shared)
    assert torch.equal(validation_images(dynamic, split), shared)


def test_load_data_and_validation_split_follow_the_config(data_dir, tmp_path, monkeypatch):
    from vaelab import Config
    from vaelab.data import load_data, validation_split

    monkeypatch.setenv("VAELAB_DATA_DIR", str(tmp_path / "elsewhere"))  # the config's wins
    monkeypatch.setenv("VAELAB_MIRRORS", "http://127.0.0.1:9/")  # and nothing is downloaded

    config = Config(data_dir=str(data_dir), limit_train=7, limit_val=5)
    train, val = load_data(config)
    assert torch.equal(train.images, load_split("mnist", "train", data_dir, 7).images)
    assert torch.equal(val.images, load_split("mnist", "val", data_dir, 5).images)
    assert len(validation_split(config)) == 10_000
    moved = config.replace(data_dir=str(tmp_path / "gone"))
    assert torch.equal(validation_split(moved, data_dir).labels,
                       load_split("mnist", "val", data_dir).labels)
    copy_files(data_dir, tmp_path / "fashion" / "FashionMNIST" / "raw",
               names=["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
    fashion = Config(dataset="fashion-mnist", data_dir=str(tmp_path / "fashion"))
    assert len(validation_split(fashion)) == 10_000  # found under FashionMNIST/raw


def test_offline_with_downloads_off_names_the_missing_files(tmp_path):
    with pytest.raises(DataError) as caught:
        load_split("mnist", "val", tmp_path, download=False)
    assert str(caught.value) == (
        f"mnist: t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] not found in "
        f"{tmp_path} or its MNIST/raw/ (downloads are off); point --data-dir or "
        "$VAELAB_DATA_DIR at the folder holding them")


def test_find_files_looks_in_raw_for_plain_and_gzipped_names(data_dir, tmp_path):
    copy_files(data_dir, tmp_path / RAW, gunzip=True)
    found = find_files("mnist", tmp_path)
    assert found["t10k-labels-idx1-ubyte"] == tmp_path / RAW / "t10k-labels-idx1-ubyte"
    copy_files(data_dir, tmp_path / RAW, names=["t10k-labels-idx1-ubyte.gz"])
    found = find_files("mnist", tmp_path)
    assert found["t10k-labels-idx1-ubyte"] == tmp_path / RAW / "t10k-labels-idx1-ubyte.gz"


def test_label_9_is_accepted_and_errors_name_the_right_file(data_dir, tmp_path):
    copy_files(data_dir, tmp_path, names=["t10k-images-idx3-ubyte.gz"])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(10_000, 9, dtype=np.uint8))
    assert (load_split("mnist", "val", tmp_path, download=False).labels == 9).all()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(10_000, 10, dtype=np.uint8))
    with pytest.raises(DataError) as caught:
        load_split("mnist", "val", tmp_path, download=False)
    assert str(caught.value).startswith(f"{tmp_path / 't10k-labels-idx1-ubyte'}: holds label 10")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((10_000, 1, 1), dtype=np.uint8))
    with pytest.raises(DataError) as caught:
        load_split("mnist", "val", tmp_path, download=False)
    assert str(caught.value) == (f"{tmp_path / 't10k-labels-idx1-ubyte'}: holds shape "
                                 "(10000, 1, 1), expected a list of labels")


def test_a_changed_file_is_read_again(tmp_path):
    """The cache is keyed by the file's size and mtime: rewriting it is seen at once."""
    from vaelab.idx import _cached_idx

    path = write_idx(tmp_path / "labels", np.zeros(4, dtype=np.uint8))
    assert _cached_idx(path).tolist() == [0, 0, 0, 0]
    stat = path.stat()
    write_idx(path, np.ones(4, dtype=np.uint8))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _cached_idx(path).tolist() == [1, 1, 1, 1]
    write_idx(path, np.full(5, 2, dtype=np.uint8))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same mtime, new size
    assert _cached_idx(path).tolist() == [2] * 5


def test_an_uncompressed_file_may_declare_exactly_its_own_size(tmp_path):
    """The allocation budget of a plain file is its size: a header declaring no more than
    the payload reads; one extra byte of payload is refused as trailing bytes."""
    path = write_idx(tmp_path / "f", np.arange(6, dtype=np.uint8))
    assert read_idx(path).tolist() == list(range(6))
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes(4))
    with pytest.raises(DataError, match="has bytes after its declared shape"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + bytes(3))
    with pytest.raises(DataError, match="has bytes after its declared shape"):
        read_idx(path)


def header(*dims: int) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_a_plain_file_may_declare_at_most_its_own_size(tmp_path):
    """Uncompressed, the budget is the file's size: one byte more is refused before reading;
    exactly the file's size (impossible with the header in it) is read and found short."""
    path = tmp_path / "f"
    path.write_bytes(header(19) + bytes(10))  # an 18-byte file declaring 19 bytes
    with pytest.raises(DataError, match="more than the file can hold"):
        read_idx(path)
    path.write_bytes(header(18) + bytes(10))  # declaring exactly the file's 18 bytes
    with pytest.raises(DataError, match=r"truncated \(10 of 18 expected bytes\)"):
        read_idx(path)


def test_a_truncated_header_names_the_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(header(3, 28, 28)[:9])
    with pytest.raises(DataError) as caught:
        read_idx(path)
    assert str(caught.value).startswith(f"{path}: truncated (5 of 12 expected bytes)")


def test_trailing_bytes_after_more_than_one_read_chunk(tmp_path):
    """The payload is read in 1 MiB chunks, each no larger than what is still declared."""
    size = (1 << 20) + 10
    path = tmp_path / "f"
    path.write_bytes(header(size) + bytes(size) + b"\1")
    with pytest.raises(DataError, match="has bytes after its declared shape"):
        read_idx(path)
    path.write_bytes(header(size) + bytes(size))
    assert read_idx(path).shape == (size,)


def test_wrong_image_shape_names_the_image_file(data_dir, tmp_path):
    copy_files(data_dir, tmp_path, names=["t10k-labels-idx1-ubyte.gz"])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10_000, 28, 27), dtype=np.uint8))
    with pytest.raises(DataError) as caught:
        load_split("mnist", "val", tmp_path, download=False)
    assert str(caught.value) == (f"{tmp_path / 't10k-images-idx3-ubyte'}: holds shape "
                                 "(10000, 28, 27), expected N x 28 x 28 images")


def test_a_runs_split_is_whole_and_resized_as_its_config_says(data_dir, tmp_path):
    """--image-size and --channels reach an IDX set as any other source: each image is
    Pillow's bilinear resize of the original, grey copied into three channels; the limits
    are the training's, not the split's (a run's figures use its whole validation set)."""
    from PIL import Image

    from vaelab import Config
    from vaelab.data import run_split

    original = load_split("mnist", "val", data_dir)
    config = Config(data_dir=str(data_dir), image_size=16, channels=3, limit_val=5)
    resized = run_split(config, "val")
    assert resized.images.shape == (10_000, 3, 16, 16)
    assert torch.equal(resized.labels, original.labels) and resized.classes == original.classes
    for i in (0, 9_999):
        picture = Image.fromarray(original.images[i, 0].numpy()).convert("RGB")
        expected = np.asarray(picture.resize((16, 16), Image.Resampling.BILINEAR))
        assert np.array_equal(resized.images[i].permute(1, 2, 0).numpy(), expected)
    assert run_split(Config(data_dir=str(data_dir)), "val").images.shape == (10_000, 1, 28, 28)
    for options, shape in (({"image_size": 16}, (1, 16, 16)), ({"channels": 3}, (3, 28, 28))):
        assert run_split(Config(data_dir=str(data_dir), **options), "val").images.shape[1:] \
            == shape, options  # either option alone converts
    grey = run_split(Config(data_dir=str(data_dir), channels=1, limit_val=5), "val")
    assert torch.equal(grey.images, original.images)  # nothing to convert: as read
    folder = tmp_path / "d"
    for i in range(10):
        (folder / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), i * 20, np.uint8)).save(folder / str(i % 2) / f"{i}.png")
    limited = Config(data=str(folder), limit_train=1, limit_val=1, val_fraction=0.4)
    assert (len(run_split(limited, "train")), len(run_split(limited, "val"))) == (6, 4)


def test_an_idx_set_too_large_once_resized_is_refused_naming_the_dataset(data_dir, monkeypatch):
    import vaelab.images
    from vaelab import Config
    from vaelab.data import run_split

    monkeypatch.setattr(vaelab.images, "available_memory", lambda: 10**6)
    assert refused(run_split, Config(data_dir=str(data_dir), image_size=64), "val") == (
        "mnist: 10,000 images of 1x64x64 take 0.0 GB as uint8, more than half the 0.0 GB of "
        "memory available; use --image-size to shrink them, or a subset")


def test_an_idx_split_is_named_by_its_classes_and_downloads_what_is_missing(
        data_dir, tmp_path, monkeypatch):
    """A split's class names are the dataset's; a missing file is fetched by default (the
    fetch itself is tests/test_download.py's: here a stand-in records the call)."""
    import vaelab.idx

    assert load_split("mnist", "val", data_dir, limit=2).classes == tuple("0123456789")
    calls = []
    monkeypatch.setattr(vaelab.idx, "fetch", lambda *args: calls.append(args) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        vaelab.idx.read_split("mnist", "val", tmp_path)
    assert calls == [("mnist", tmp_path, ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])]
