"""`make mutation` can run at this commit: every module and test file that [tool.mutmut] names
exists, the selection collects (as mutmut collects it), every listed file gives it tests, and no
test marked `mutation` lies in a file the selection leaves out."""

import re
import subprocess
import sys

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
