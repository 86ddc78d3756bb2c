"""What a bench leaves behind: `bench/results/NAME.json`, from which the documentation's
benchmark pages are built (docs/gen_pages.py), so that no number in the docs is copied by hand.

A Record prints what the bench reports, as it goes, and keeps it: its tables (header and rows,
as printed), named numbers, figures, the printed output verbatim, the command line, and where
and when it ran (CPU, cores, GPU, load average, torch and vaelab versions, the git commit and
whether the working tree differed from it).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


class Record:
    """One bench run's report. `say` and `table` print and keep; `save` writes the JSON."""

    def __init__(self, name: str, doc: str | None):
        self.name = name
        self.doc = (doc or "").strip()
        self.started = datetime.now(timezone.utc)
        self.load_at_start = _load_average()
        self.output: list[str] = []
        self.tables: list[dict[str, Any]] = []
        self.numbers: dict[str, Any] = {}
        self.figures: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.output.append(text)

    def table(self, header: list[str], rows: list[list[Any]], caption: str = "") -> None:
        """A Markdown table, printed (after its caption) and kept as data."""
        self.tables.append({"caption": caption, "header": header,
                            "rows": [[_cell(value) for value in row] for row in rows]})
        if caption:
            self.say(caption)
            self.say()
        self.say("| " + " | ".join(header) + " |")
        self.say("|" + "---|" * len(header))
        for row in self.tables[-1]["rows"]:
            self.say("| " + " | ".join(row) + " |")
        self.say()

    def number(self, key: str, value: Any) -> None:
        self.numbers[key] = value

    def figure(self, path: str | os.PathLike) -> None:
        """A picture the bench wrote: shown on its page if it lies in docs/."""
        path = Path(path).resolve()
        self.figures.append(path.relative_to(REPO).as_posix() if path.is_relative_to(REPO)
                            else str(path))

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the JSON (default bench/results/NAME.json) whole, via a temporary file."""
        target = Path(path) if path else RESULTS / f"{self.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "bench": self.name, "doc": self.doc,
            "command": shlex.join(["python", _script(), *sys.argv[1:]]),
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": _git("rev-parse", "HEAD"), "changed_files": _changed_files(),
            "machine": machine(self.load_at_start), "versions": _versions(),
            "tables": self.tables, "numbers": self.numbers, "figures": self.figures,
            "output": "\n".join(self.output),
        }
        temporary = target.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        os.replace(temporary, target)
        print(f"results: {target}", flush=True)
        return target


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:,}" if isinstance(value, int) else \
        str(value)


def _script() -> str:
    script = Path(sys.argv[0]).resolve()
    return script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else str(script)


def machine(load_at_start: float | None = None) -> dict[str, Any]:
    """Where a bench ran: CPU model and features, cores, GPU, memory, load average."""
    import torch

    flags = _cpu_flags()
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_features": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "load_average_at_start": load_at_start, "load_average_at_end": _load_average(),
        "platform": platform.platform(),
    }


def _versions() -> dict[str, str]:
    import torch

    import vaelab

    return {"python": platform.python_version(), "torch": torch.__version__,
            "vaelab": vaelab.__version__}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return set(next((line for line in cpuinfo if line.startswith("flags")), "").split())
    except OSError:
        return set()


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _changed_files() -> list[str]:
    """Tracked code that differs from the commit: a result from uncommitted code says so
    (other benches' results and figures are outputs, not code)."""
    changed = _git("status", "--porcelain", "--untracked-files=no")
    paths = [line[3:] for line in changed.splitlines()] if changed else []
    return [path for path in paths if not path.startswith(("bench/results/", "docs/"))]
