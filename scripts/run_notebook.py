"""`make notebook`: run vae_from_scratch.ipynb in full (QUICK = False), save its outputs in the
notebook, and render it to docs/vae_from_scratch.html.

It runs in a temporary folder (its runs/ go there, not into the repository). Execution
timestamps are dropped and machine paths in outputs are replaced, so the committed notebook
changes only when its results do. MNIST is read from $VAELAB_DATA_DIR (else ../shared/data).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "vae_from_scratch.ipynb"
HTML = REPO / "docs" / "vae_from_scratch.html"


def scrub(notebook: nbformat.NotebookNode, paths: list[str]) -> None:
    """Drop timestamps and replace machine paths in every output."""
    pattern = re.compile("|".join(re.escape(path) for path in sorted(paths, key=len,
                                                                     reverse=True)))
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            if "text" in output:
                output.text = pattern.sub("…", output.text)
            for kind, value in output.get("data", {}).items():
                if kind.startswith("text/") and isinstance(value, str):
                    output.data[kind] = pattern.sub("…", value)


def main() -> None:
    os.environ.setdefault("VAELAB_DATA_DIR", str(REPO.parent / "shared" / "data"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    settings = notebook.cells[1].source
    if "QUICK = False" not in settings:
        sys.exit(f"{NOTEBOOK.name}: its second cell must set QUICK = False for the full run")
    with tempfile.TemporaryDirectory(prefix="vaelab-notebook-") as folder:
        NotebookClient(notebook, timeout=3600, kernel_name="python3",
                       resources={"metadata": {"path": folder}}).execute()
        scrub(notebook, [folder, str(REPO), os.environ["VAELAB_DATA_DIR"], str(Path.home())])
    nbformat.write(notebook, NOTEBOOK)
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(notebook)
    HTML.parent.mkdir(exist_ok=True)
    HTML.write_text(body)
    print(f"wrote {NOTEBOOK.name} (outputs of the full run) and {HTML.relative_to(REPO)}")


if __name__ == "__main__":
    main()
