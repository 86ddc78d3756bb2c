"""vae_from_scratch.ipynb runs top to bottom (QUICK on) and shows every figure."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "vae_from_scratch.ipynb"


def test_notebook_executes_with_quick_on(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("VAELAB_DATA_DIR", str(data_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    settings = notebook.cells[1].source
    assert "LATENT_DIM = 20" in settings and "NUM_EPOCHS = 10" in settings
    notebook.cells[1].source = settings.replace("QUICK = False", "QUICK = True")
    assert notebook.cells[1].source != settings
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(images) == 7  # curves, reconstructions, samples, interpolation, 2-D map,
    # manifold, active units
    assert (tmp_path / "runs" / "notebook" / "best.pt").is_file()
