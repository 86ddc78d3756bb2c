"""The suite's own guards can run at this commit. `make mutation`: every module and test file
that [tool.mutmut] names exists, the selection collects (as mutmut collects it), every listed
file gives it tests, and no test marked `mutation` lies in a file the selection leaves out.
`make test-cpus`: every test file that compares floats within a tolerance is in its list."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib
from conftest import REPO

MUTMUT = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
SELECTION = MUTMUT["pytest_add_cli_args_test_selection"]
LISTED_FILES = [arg for arg in SELECTION if arg.startswith("tests/")]


def test_every_mutated_module_and_listed_test_file_exists():
    missing = [path for path in MUTMUT["only_mutate"] + LISTED_FILES
               if not (REPO / path).is_file()]
    assert missing == [], f"named in [tool.mutmut] of pyproject.toml but missing: {missing}"
    assert all(path.startswith("src/vaelab/") for path in MUTMUT["only_mutate"])


def test_the_selection_collects_tests_from_every_listed_file():
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                             "-p", "no:cacheprovider", *SELECTION], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    assert sorted(set(LISTED_FILES) - collected) == [], "listed files without marked tests"


def test_no_marked_test_is_left_out_of_the_selection():
    marked = {f"tests/{path.name}" for path in (REPO / "tests").glob("test_*.py")
              if re.search(r"pytest\.mark\.mutation\b", path.read_text())}
    assert sorted(marked - set(LISTED_FILES)) == [], \
        "files with tests marked `mutation` that [tool.mutmut] does not list"


# A comparison within a tolerance, as the suite writes them: pytest.approx, torch/numpy's
# allclose and isclose, an atol=/rtol= argument, `<= tolerance`, or abs(a - b) < bound.
TOLERANCE = re.compile(r"\b(approx|allclose|isclose)\(|\b[ar]tol=|[<>]=? *tolerance\b"
                       r"|\babs\(.*\) *<=? *[0-9(]")


def numeric_tests_of_the_makefile() -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    listing = re.search(r"^NUMERIC_TESTS = ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    return set(listing.group(1).replace("\\\n", " ").split())


def test_every_file_with_a_float_tolerance_runs_under_every_cpu():
    listed = numeric_tests_of_the_makefile()
    assert {"tests/test_losses.py", "tests/test_closed_forms.py"} <= listed  # the parse works
    assert sorted(path for path in listed if not (REPO / path).is_file()) == []
    with_tolerance = {f"tests/{path.name}" for path in (REPO / "tests").glob("test_*.py")
                      if TOLERANCE.search(path.read_text()) and path.name != Path(__file__).name}
    assert sorted(with_tolerance - listed) == [], \
        "files comparing floats within a tolerance that NUMERIC_TESTS in the Makefile leaves out"
