"""Fuzzing the IDX reader: any bytes give the right array or a DataError, within bounded memory."""

import gzip
import math
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaelab.errors import DataError
from vaelab.idx import read_idx

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant

SLACK = 3 << 20  # the 1 MiB read chunk, gzip's buffers and the interpreter's own


def read_with_peak(path):
    tracemalloc.start()
    try:
        try:
            return read_idx(path), tracemalloc.get_traced_memory()[1]
        except DataError:
            return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def write(path, data, gzipped):
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return len(path.read_bytes()) * (1032 if gzipped else 1)  # what the file can justify


fuzz = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz
@given(data=st.binary(max_size=3000), gzipped=st.booleans())
def test_arbitrary_bytes(tmp_path, data, gzipped):
    justified = write(tmp_path / "f", data, gzipped)
    array, peak = read_with_peak(tmp_path / "f")
    assert peak < justified + SLACK
    if array is not None:
        assert array.dtype == np.uint8 and array.tobytes() == data[4 + 4 * array.ndim:]


# README "What happens when...": "a header is checked against what the file can hold before
# anything is allocated".
@fuzz
@given(ndim=st.sampled_from([1, 3]), dims=st.lists(st.integers(0, 2**32 - 1), min_size=3,
                                                   max_size=3),
       payload=st.binary(max_size=3000), gzipped=st.booleans())
def test_plausible_headers_with_any_sizes(tmp_path, ndim, dims, payload, gzipped):
    dims = dims[:ndim]
    data = bytes([0, 0, 8, ndim]) + struct.pack(f">{ndim}I", *dims) + payload
    justified = write(tmp_path / "f", data, gzipped)
    array, peak = read_with_peak(tmp_path / "f")
    assert peak < justified + SLACK  # a header claiming gigabytes allocates nothing
    # numpy refuses shapes whose nonzero sizes overflow its index type, even with a zero size
    holdable = np.prod([d for d in dims if d], dtype=object) <= np.iinfo(np.intp).max
    if np.prod(dims, dtype=object) == len(payload) and holdable:
        assert array is not None and array.shape == tuple(dims)
        assert array.tobytes() == payload
    else:
        assert array is None


@st.composite
def consistent_idx(draw):
    """A header of small sizes and a payload of exactly the bytes it declares."""
    dims = draw(st.lists(st.integers(0, 12), min_size=1, max_size=1).map(tuple) | st.lists(
        st.integers(0, 12), min_size=3, max_size=3).map(tuple))
    payload = draw(st.binary(min_size=math.prod(dims), max_size=math.prod(dims)))
    return dims, payload


def test_headers_matching_their_payload_give_that_array_byte_for_byte(tmp_path):
    sizes = []

    @fuzz
    @given(idx=consistent_idx(), gzipped=st.booleans())
    def check(idx, gzipped):
        dims, payload = idx
        data = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload
        justified = write(tmp_path / "f", data, gzipped)
        array, peak = read_with_peak(tmp_path / "f")
        assert peak < justified + SLACK
        assert array is not None and array.dtype == np.uint8 and array.shape == dims
        assert array.tobytes() == payload
        sizes.append(array.size)

    check()
    assert sum(size > 0 for size in sizes) > len(sizes) // 2  # mostly non-empty arrays


def test_an_empty_array_with_impossible_sizes_is_a_data_error(tmp_path):
    """Found by the fuzz test above: zero images of 3e9 x 3e9 pixels hold no bytes, so the
    size check passes, but no array can have that shape."""
    path = tmp_path / "f"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 0, 3_036_988_439, 3_037_012_561))
    array, _ = read_with_peak(path)
    assert array is None


def test_a_gzip_bomb_header_is_refused_quickly(tmp_path):
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60_000_000, 28, 28) + bytes(1000)
    justified = write(tmp_path / "f.gz", data, True)
    array, peak = read_with_peak(tmp_path / "f.gz")
    assert array is None and peak < justified + SLACK


def test_every_defect_of_an_idx_file_is_named_word_for_word(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"

    def refusal(content: bytes) -> str:
        path.write_bytes(content)
        with pytest.raises(DataError) as caught:
            read_idx(path)
        assert str(caught.value).startswith(f"{path}: ")
        return str(caught.value)[len(f"{path}: "):]

    fix = "; replace it with the official file"
    three = b"\x00\x00\x08\x01" + struct.pack(">I", 3)
    assert refusal(b"\x00\x00\x09\x01" + three[4:] + b"abc") == (
        "not an IDX file of uint8 images or labels (magic number 00000901)" + fix)
    assert refusal(three + b"ab") == "truncated (2 of 3 expected bytes)" + fix
    assert refusal(b"\x00\x00\x08\x01" + struct.pack(">I", 100) + b"ab") == (
        "header declares shape (100,) (100 bytes), more than the file can hold: truncated or "
        "damaged" + fix)
    assert refusal(three + b"abcd") == "has bytes after its declared shape (3,)" + fix
    assert refusal(b"\x00\x00\x08\x03" + struct.pack(">3I", 0, 4_000_000_000, 4_000_000_000)) \
        == "header declares shape (0, 4000000000, 4000000000), which no array can hold" + fix
    path.write_bytes(three + b"abc")  # the same header with its bytes: read as they are
    assert read_idx(path).tolist() == list(b"abc")
