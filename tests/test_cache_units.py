"""cache.py without decoding a folder: where the cache lives, what its key covers, and that a
cache file is used only when it is whole, sealed and for exactly this key (fast: run for every
mutant)."""

import hashlib
import logging
import os
from pathlib import Path

import pytest
import torch

from vaelab import cache, sealed
from vaelab.version import __version__

pytestmark = pytest.mark.mutation

IMAGES = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)


@pytest.fixture
def cache_in(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


def test_the_cache_folder_is_the_variable_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(cache.CACHE_ENV, "~/mine")
    assert cache.cache_dir() == tmp_path / "home" / "mine"
    monkeypatch.setenv(cache.CACHE_ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "vaelab"
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "vaelab"


def folder_of_two(tmp_path) -> tuple[Path, list[Path], list[os.stat_result]]:
    root = tmp_path / "pictures"
    root.mkdir()
    files = [root / "a.png", root / "b.png"]
    for number, file in enumerate(files):
        file.write_bytes(bytes([number]) * (10 + number))
    return root, files, [file.stat() for file in files]


def test_the_key_is_the_sha256_of_everything_it_covers(tmp_path):
    """Written out independently: the JSON of format, version, options, root and each file's
    path, size and mtime in nanoseconds, in that order."""
    root, files, stats = folder_of_two(tmp_path)
    files_part = ", ".join(f'["{f}", {s.st_size}, {s.st_mtime_ns}]' for f, s in zip(files, stats))
    described = (f'{{"format": "vaelab-image-cache", "vaelab": "{__version__}", "size": 32, '
                 f'"channels": 3, "root": "{root.resolve()}", "files": [{files_part}]}}')
    assert cache.key(root, files, stats, 32, 3) == hashlib.sha256(described.encode()).hexdigest()


def test_the_key_changes_with_each_file_and_option(tmp_path):
    root, files, stats = folder_of_two(tmp_path)
    base = cache.key(root, files, stats, None, None)
    os.utime(files[1], ns=(stats[1].st_atime_ns, stats[1].st_mtime_ns + 1))
    touched = [file.stat() for file in files]
    files[0].write_bytes(b"longer than before")
    resized = [file.stat() for file in files]
    others = [cache.key(root, files, touched, None, None),
              cache.key(root, files, resized, None, None),
              cache.key(root, files[:1], stats[:1], None, None),
              cache.key(root, [files[1], files[0]], [stats[1], stats[0]], None, None),
              cache.key(tmp_path, files, stats, None, None),
              cache.key(root, files, stats, 28, None), cache.key(root, files, stats, None, 1)]
    assert len({base, *others}) == 1 + len(others)


def test_the_file_is_named_by_the_keys_first_24_characters(cache_in):
    assert cache.path("0123456789abcdef" * 4) == cache_in / "images-0123456789abcdef01234567.pt"


def test_what_is_written_is_read_back_for_its_key_only(tmp_path, monkeypatch):
    cache_in = tmp_path / "not" / "yet" / "there"  # made, parents and all
    monkeypatch.setenv(cache.CACHE_ENV, str(cache_in))
    cache.write("a" * 64, IMAGES)
    assert torch.equal(cache.read("a" * 64), IMAGES) and cache.read("a" * 64).dtype == torch.uint8
    assert cache.read("b" * 64) is None  # no file
    cache.path("b" * 64).write_bytes(cache.path("a" * 64).read_bytes())
    assert cache.read("b" * 64) is None  # a file, but of another key


@pytest.mark.parametrize("saved, why", [
    ({"format": "something-else", "key": "k" * 64, "images": IMAGES},
     "(ValueError: it does not match this folder and version)"),
    ({"format": cache.FORMAT, "key": "k" * 64, "images": IMAGES.float()},
     "(ValueError: it does not match this folder and version)"),
    ({"format": cache.FORMAT, "key": "k" * 64}, "KeyError"),
])
def test_a_foreign_or_odd_cache_file_is_not_used(cache_in, caplog, saved, why):
    cache_in.mkdir()
    with cache.path("k" * 64).open("wb") as file:
        sealed.save(saved, file)
    with caplog.at_level(logging.INFO, logger="vaelab.cache"):
        assert cache.read("k" * 64) is None
    assert "is unusable" in caplog.text and why in caplog.text and "decoding again" in caplog.text


def test_an_unsealed_or_damaged_cache_file_is_not_used_and_says_why(cache_in, caplog):
    cache_in.mkdir()
    file = cache.path("k" * 64)
    torch.save({"format": cache.FORMAT, "key": "k" * 64, "images": IMAGES}, file)
    with caplog.at_level(logging.INFO, logger="vaelab.cache"):
        assert cache.read("k" * 64) is None
    assert "is unusable (ValueError: it carries no checksum)" in caplog.text
    caplog.clear()
    cache.write("k" * 64, IMAGES)
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="vaelab.cache"):
        assert cache.read("k" * 64) is None
    assert "is damaged (its checksum does not match)" in caplog.text


def test_a_cache_that_cannot_be_written_is_a_warning_only(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="vaelab.cache"):
        cache.write("k" * 64, IMAGES)
    assert "cannot write the image cache" in caplog.text and "next run decodes again" in \
        caplog.text
    assert blocker.read_text() == "not a folder"


def test_weights_only_is_asked_for_explicitly(cache_in, monkeypatch):
    """Not left to torch's default, which was False before torch 2.6 (pyproject allows 2.4)."""
    cache.write("k" * 64, IMAGES)
    real, asked = torch.load, []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert cache.read("k" * 64) is not None and asked == [True]
