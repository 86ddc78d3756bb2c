"""Downloads against a local HTTP server on 127.0.0.1 serving copies of the shared files."""

import functools
import http.server
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from test_data import RAW, md5

from vaelab.data import load_split
from vaelab.errors import DataError

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant


@pytest.fixture()
def mirror(data_dir, tmp_path, monkeypatch):
    """Serves a good copy under /good/ and one with a corrupted byte under /bad/."""
    served = tmp_path / "served"
    for name in ("good", "bad"):
        shutil.copytree(data_dir / "MNIST" / "raw", served / name)
    corrupt = served / "bad" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# README: missing files are "downloaded ... and MD5-checked", "moved into place only once
# verified": this test and the next.
def test_missing_files_are_downloaded_and_checked(mirror, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_MIRRORS", f"{mirror}/good/")
    target = tmp_path / "fresh"
    val = load_split("mnist", "val", target)
    raw = target / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [  # the split's own files, nothing else
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for path in raw.iterdir():
        assert path.read_bytes() == (data_dir / "MNIST" / "raw" / path.name).read_bytes()
    assert len(val) == 10_000


def test_a_corrupt_download_is_refused_and_never_kept(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_MIRRORS", f"{mirror}/bad/")
    staging = tmp_path / "system-tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # where downloads are staged
    target = tmp_path / "fresh"
    with pytest.raises(DataError, match="download of t10k-labels-idx1-ubyte.gz failed: "
                                        "127.0.0.1:[0-9]+: MD5 mismatch"):
        load_split("mnist", "val", target)
    raw = target / "MNIST" / "raw"
    assert not (raw / "t10k-labels-idx1-ubyte.gz").exists()
    assert [p.name for p in raw.iterdir() if p.name.startswith(".")] == []  # no temp left
    assert list(staging.iterdir()) == []


def test_a_bad_mirror_falls_through_to_the_next(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_MIRRORS", f"{mirror}/bad/,{mirror}/good/")
    assert len(load_split("mnist", "val", tmp_path / "fresh")) == 10_000


# ---- the download logic against a fake torchvision download (no server) --------------

def fake_downloads(monkeypatch, data_dir, outcomes):
    """Replace torchvision's download_url: each call takes the next outcome (an exception to
    raise, or None to copy the real file) and records its arguments and the socket timeout."""
    import socket

    from torchvision.datasets import utils

    calls = []

    def download_url(url, root, filename, md5):
        calls.append((url, Path(root), filename, md5, socket.getdefaulttimeout()))
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        shutil.copy(data_dir / RAW / filename, Path(root) / filename)

    monkeypatch.setattr(utils, "download_url", download_url)
    return calls


def test_downloads_try_mirrors_in_order_under_a_timeout_then_restore_it(
        data_dir, tmp_path, monkeypatch):
    import socket
    import urllib.error

    monkeypatch.setenv("VAELAB_MIRRORS", "http://a.example/MNIST-X/,http://b.example")
    calls = fake_downloads(monkeypatch, data_dir,
                              [urllib.error.URLError("refused"), None, None])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(7.5)
    try:
        val = load_split("mnist", "val", tmp_path / "fresh")
        assert socket.getdefaulttimeout() == 7.5  # put back after the downloads
    finally:
        socket.setdefaulttimeout(previous)
    assert len(val) == 10_000
    assert [call[0] for call in calls] == [
        "http://a.example/MNIST-X/t10k-images-idx3-ubyte.gz",
        "http://b.example/t10k-images-idx3-ubyte.gz",
        "http://a.example/MNIST-X/t10k-labels-idx1-ubyte.gz"]  # each file starts at the first
    assert all(call[4] == 30.0 for call in calls)  # fetch's default timeout, in seconds
    assert [call[2] for call in calls] == ["t10k-images-idx3-ubyte.gz"] * 2 + [
        "t10k-labels-idx1-ubyte.gz"]
    assert calls[0][3] == md5(data_dir / RAW / "t10k-images-idx3-ubyte.gz")
    assert calls[0][1].name.startswith("vaelab-download-")


def test_when_every_mirror_fails_each_reason_is_given(data_dir, tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("VAELAB_MIRRORS", "http://a.example,http://b.example,http://c.example")
    fake_downloads(monkeypatch, data_dir, [urllib.error.URLError("refused"),
                                           RuntimeError("File not found or corrupted."),
                                           TimeoutError("timed out")])
    with pytest.raises(DataError) as caught:
        load_split("mnist", "val", tmp_path / "fresh")
    assert ("(download of t10k-images-idx3-ubyte.gz failed: a.example: refused; b.example: "
            "MD5 mismatch (corrupt copy); c.example: timed out)") in str(caught.value)


def test_a_download_that_cannot_be_saved_names_the_folder(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_MIRRORS", "http://a.example")
    fake_downloads(monkeypatch, data_dir, [None])
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the data folder should be")
    with pytest.raises(DataError) as caught:
        load_split("mnist", "val", blocked)
    assert str(caught.value).startswith("cannot save the downloaded t10k-images-idx3-ubyte.gz "
                                        f"into {blocked / RAW} (")
    assert str(caught.value).endswith(" (Not a directory); point --data-dir at a writable folder")


def test_without_vaelab_mirrors_torchvisions_own_are_used(data_dir, tmp_path, monkeypatch):
    from torchvision import datasets

    monkeypatch.delenv("VAELAB_MIRRORS", raising=False)
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://own.example/mnist/"])
    calls = fake_downloads(monkeypatch, data_dir, [None, None])
    assert len(load_split("mnist", "val", tmp_path / "fresh")) == 10_000
    assert calls[0][0] == "http://own.example/mnist/t10k-images-idx3-ubyte.gz"
