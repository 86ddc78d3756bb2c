"""Files that carry the SHA-256 of their own bytes, so that any flipped byte is caught on load.

A sealed file is exactly what `torch.save` wrote, followed by a trailer: MARK, then the 32-byte
SHA-256 of everything before it. Every byte is covered: one in the body or in the digest
changes the comparison, and one in MARK makes the trailer unrecognisable, which the caller
catches because the payload inside says it was sealed (checkpoint.py). `torch.load` still reads
a sealed file as it is (a zip reader finds its directory from the end and skips what follows),
so plain torch, and vaelab versions from before the seal, keep reading these files.
"""

from __future__ import annotations

import hashlib
from typing import IO, Any

import torch

MARK = b"\nvaelab-sha256\n"
DIGEST_BYTES = 32
TRAILER_BYTES = len(MARK) + DIGEST_BYTES


class ChecksumMismatch(Exception):
    """The bytes before the trailer are not the ones it vouches for."""


class _Hashing:
    """A write-only file that hashes what passes through it. torch.save writes its zip in
    one forward pass (no seeks), so the digest is that of the bytes on disk; a save that tried
    to seek would fail here, loudly, rather than seal the wrong bytes."""

    def __init__(self, file: IO[bytes]):
        self.file, self.hash = file, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()


def save(obj: Any, file: IO[bytes]) -> None:
    """torch.save `obj` into the open binary `file`, then append the trailer."""
    hashing = _Hashing(file)
    torch.save(obj, hashing)
    file.write(MARK + hashing.hash.digest())


def unseal(data: bytes) -> tuple[bytes, bool]:
    """(body, sealed): the bytes torch.save wrote, and whether a trailer vouched for them.
    A file without a recognisable trailer comes back whole with sealed False; a trailer whose
    digest does not match raises ChecksumMismatch."""
    if len(data) < TRAILER_BYTES or data[-TRAILER_BYTES:-DIGEST_BYTES] != MARK:
        return data, False
    body = data[:-TRAILER_BYTES]
    if hashlib.sha256(body).digest() != data[-DIGEST_BYTES:]:
        raise ChecksumMismatch
    return body, True
