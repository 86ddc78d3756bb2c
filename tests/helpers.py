"""Helpers shared by the test files (tests/ is on sys.path when pytest runs them)."""

import hashlib
from pathlib import Path

from vaelab.cli import main


def cli(capsys, *args):
    """Run `vaelab ARGS` in this process: (exit code, stdout, stderr). argparse's own exits
    (--help, usage errors) count as the exit code they carry."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def sha256(path: Path) -> str:
    """The file's SHA-256, computed here independently of vaelab's own."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(call, *args) -> str:
    """The message of the DataError that call(*args) raises (it must raise one)."""
    import pytest

    from vaelab.errors import DataError

    with pytest.raises(DataError) as caught:
        call(*args)
    return str(caught.value)
