"""Downloads against a local HTTP server on 127.0.0.1 serving copies of the shared files."""

import functools
import http.server
import shutil
import tempfile
import threading

import pytest

from vaelab.data import load_split
from vaelab.errors import DataError


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
