#!/usr/bin/env python3
"""Write docs/mutation.md from mutmut's own records (mutants/**/*.py.meta), so that no number in
it is copied by hand: per module the mutants, killed, survived, timeouts and test time, the
commit measured, and each survivor with its change and the one-line reason it is kept
(docs/mutation-survivors.toml, written by hand, keyed by mutant name).

    python scripts/mutation_report.py [--seconds WALL] [--min-killed 90]

Exits 1 (after writing the file) if a module kills fewer than --min-killed percent (killed
and timeouts count as killed, as mutmut's own score does) or a survivor has no reason."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "mutation.md"
REASONS = REPO / "docs" / "mutation-survivors.toml"
# mutmut's exit-code meanings (mutmut.stats.status_by_exit_code), as counted here
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          34: "skipped", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
          255: "timeout", -11: "segfault", -9: "segfault", None: "not checked"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def module_records(module: str) -> dict:
    meta = REPO / "mutants" / f"{module}.meta"
    if not meta.is_file():
        raise SystemExit(f"{meta} is missing: run `make mutation` first")
    return json.loads(meta.read_text())


def diff_of(name: str, module: str) -> str:
    """The mutated line(s), from mutmut's own diff of the mutant against the original."""
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        lines = get_diff_for_mutant(name, path=module).splitlines()
    except Exception as err:  # noqa: BLE001 - the table matters more than the diff
        return f"(no diff: {type(err).__name__})"
    changed = [line for line in lines[2:] if line[:1] in "+-"]
    return " / ".join(line[0] + " " + line[1:].strip() for line in changed)


def main() -> int:
    os.chdir(REPO)  # mutmut's diffs read mutants/ relative to the working folder
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="wall time of the whole mutmut run")
    parser.add_argument("--min-killed", type=float, default=90.0)
    parser.add_argument("--commit", help="the commit mutmut copied (default: HEAD, as `make "
                        "mutation` runs it)")
    parser.add_argument("--note", action="append", default=[],
                        help="a line to add under the header (e.g. how a run was cut short)")
    args = parser.parse_args()

    modules = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"][
        "only_mutate"]
    reasons = tomllib.loads(REASONS.read_text()) if REASONS.is_file() else {}
    rows, survivors, failing = [], [], []
    for module in modules:
        records = module_records(module)
        counts = Counter(STATUS.get(code, "suspicious")
                         for code in records["exit_code_by_key"].values())
        total = sum(counts.values())
        killed = counts["killed"] + counts["timeout"]
        rate = 100 * killed / total if total else 100.0
        # mutmut's own timing of each mutant where it kept one, else its estimate from the
        # covering tests' durations (forkserver runs keep only the estimate)
        checked = [name for name, code in records["exit_code_by_key"].items() if code is not None]
        seconds = sum(records["durations_by_key"].get(name) or
                      records["estimated_durations_by_key"].get(name, 0.0) for name in checked)
        unchecked = counts["not checked"]
        rows.append((module, total, counts["killed"], counts["survived"], counts["timeout"],
                     total - killed - counts["survived"] - unchecked, unchecked, rate, seconds))
        if rate < args.min_killed:
            failing.append(f"{module}: {rate:.1f}% killed")
        survivors += [(module, name, STATUS.get(code, "suspicious"))
                      for name, code in sorted(records["exit_code_by_key"].items())
                      if STATUS.get(code, "suspicious") not in ("killed", "timeout",
                                                                 "not checked")]

    commit = git("rev-parse", args.commit or "HEAD")
    dirty = " (with uncommitted changes)" if not args.commit and git(
        "status", "--porcelain", "--", "src", "tests", "pyproject.toml") else ""
    lines = ["# Mutation testing", "",
             "Written by `make mutation` (scripts/mutation_report.py, from mutmut's records): "
             "do not edit by hand. Each mutant is run against the fast tests marked "
             "`mutation` that cover it ([tool.mutmut] in pyproject.toml).", "",
             f"Measured at commit `{commit}`{dirty}"
             + (f"; the whole run took {args.seconds / 60:.1f} min" if args.seconds else "")
             + ".", "", *[f"{note}\n" for note in args.note],
             "| module | mutants | killed | survived | timeouts | other | not checked | "
             "killed % | tests' time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for module, total, killed, survived, timeouts, other, unchecked, rate, seconds in rows:
        lines.append(f"| {module} | {total} | {killed} | {survived} | {timeouts} | {other} | "
                     f"{unchecked} | {rate:.1f} | {seconds:.0f} s |")
    all_total = sum(row[1] for row in rows)
    all_killed = sum(row[2] + row[4] for row in rows)
    not_checked = sum(row[6] for row in rows)
    lines += [f"| all | {all_total} | {sum(r[2] for r in rows)} | {sum(r[3] for r in rows)} | "
              f"{sum(r[4] for r in rows)} | {sum(r[5] for r in rows)} | {not_checked} | "
              f"{100 * all_killed / max(all_total, 1):.1f} | "
              f"{sum(r[8] for r in rows):.0f} s |", "",
              *([f"**This run stopped before it checked {not_checked} mutants**: their "
                 "modules' rates count them as not killed.", ""] if not_checked else []),
              "Timeouts count as killed (the mutant made a test hang), as in mutmut's score. "
              "Lines that only log (`log.info(...)` and the like) are not mutated "
              "(`do_not_mutate_patterns`).", "", "## Survivors", "",
              "Each is equivalent to the original or changes nothing a user can observe; the "
              "reason is kept in docs/mutation-survivors.toml.", ""]
    unexplained = []
    for module, name, status in survivors:
        reason = reasons.get(name)
        if reason is None:
            unexplained.append(name)
        lines.append(f"- `{name}` ({status}): `{diff_of(name, module)}` — "
                     f"{reason or '**NOT EXPLAINED**'}")
    if not survivors:
        lines.append("None.")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"mutation results: {OUT.relative_to(REPO)}")
    for line in lines[6:9 + len(rows)]:
        print(line)
    problems = failing + [f"unexplained survivor {name}" for name in unexplained] + \
        ([f"{not_checked} mutants not checked"] if not_checked else [])
    for problem in problems:
        print(f"mutation: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
