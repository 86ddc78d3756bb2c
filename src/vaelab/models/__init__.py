"""The model families, behind one interface (interface.py), and their registry.

    vae    the single-level VAE (vae.py), the reference notebook's model and its options
    hvae   a top-down hierarchical VAE (hvae.py): groups of latents at several resolutions
    beta-tcvae, factorvae, capacity
           disentangling VAEs (disentangling.py): the vae's model, objectives that push its
           units towards independent factors
    vqvae, fsq
           discrete autoencoders (discrete.py): a grid of codes, sampled through a PixelCNN
           prior over them (pixelcnn.py) trained afterwards

`--model NAME` chooses one; config.json records it, so `load_run` rebuilds the model from the
run folder alone. Adding a family: its module here, its name below, its options as Config
fields listed in config.FAMILY_OPTIONS, and its tests.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .interface import Objective, count_parameters, learns_prior

if TYPE_CHECKING:
    from torch import nn

    from ..config import Config

# name -> (module, class): imported only when a run of that family is built
FAMILIES = {"vae": ("vae", "VAE"), "hvae": ("hvae", "HVAE"),
            "beta-tcvae": ("disentangling", "BetaTCVAE"),
            "factorvae": ("disentangling", "FactorVAE"),
            "capacity": ("disentangling", "CapacityVAE"),
            "vqvae": ("discrete", "VQVAE"), "fsq": ("discrete", "FSQ")}

__all__ = ["FAMILIES", "Objective", "build_model", "count_parameters", "family_class",
           "learns_prior"]


def family_class(name: str) -> type:
    module, cls = FAMILIES[name]  # Config has already refused an unknown name
    return getattr(import_module(f".{module}", __name__), cls)


def build_model(config: Config) -> nn.Module:
    """The network a config describes: its family, image shape, likelihood (whose parameters
    set the decoder's outputs), the family's own options and, for a conditional run, its
    number of classes."""
    return family_class(config.model).from_config(config)
