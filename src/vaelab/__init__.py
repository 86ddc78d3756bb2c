"""vaelab: train, evaluate and explore variational autoencoders on MNIST-like images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vaelab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .config import Config  # noqa: E402
from .model import VAE  # noqa: E402
from .runs import Run, load_run  # noqa: E402
from .train import resume, train  # noqa: E402

__all__ = ["Config", "VAE", "Run", "load_run", "train", "resume", "__version__"]
