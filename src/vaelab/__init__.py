"""vaelab: train, evaluate and explore variational autoencoders on MNIST-like images.

The public names are imported on first use (PEP 562), so `import vaelab` and `vaelab --help`
do not pay for importing torch.
"""

from importlib import import_module

from .version import __version__

_PUBLIC = {"Config": "config", "VAE": "models.vae", "Run": "runs", "load_run": "runs",
           "train": "training", "resume": "training", "from_pretrained": "export"}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
