"""One typed, validated object holding every setting of a run.

Defaults are the reference notebook's (the VAE vaelab reproduces; see the docs' home page):
LATENT_DIM 20, BATCH_SIZE 64, LEARNING_RATE 1e-3, NUM_EPOCHS 10. The CLI generates its flags
from these fields, so a flag and its default can never drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch is imported where it is used, so the CLI's help starts at once
    import torch

# Named presets: a recipe fills in the fields the user did not set.
RECIPES: dict[str, dict[str, Any]] = {
    "reference": {},  # the reference notebook's own settings, which are the defaults
    # Aims at the reference's final validation loss in 2 epochs (bench/speed.py measures it):
    # its batch with a 10x peak learning rate, one-cycle annealed over 2 epochs, bf16 on CPUs
    # that compute it natively. No torch.compile: at batch 64 this small model is launch-bound
    # on a GPU, where compiling (and bf16) cost more than they saved (bench/gpu_check.sh).
    "fast": dict(lr=1e-2, schedule="onecycle", epochs=2, precision="auto"),
    # The hierarchy at a GPU's size: wider blocks, more and larger latent groups.
    "hvae-large": dict(model="hvae", hvae_channels=128, hvae_latent_channels=16, hvae_groups=4),
}
# Old names that still work, with a line saying the new one ("seed" read like --seed).
RENAMED_RECIPES = {"seed": "reference"}


def setting(default: Any, why: str, flag: bool = True) -> Any:
    """A config field whose help text (the reason for its default) travels with it; a field
    with flag=False is recorded from the data, not set by the user."""
    return field(default=default, metadata={"help": why, "flag": flag})


@dataclass(frozen=True)
class Config:
    dataset: Literal["mnist", "fashion-mnist", "kmnist"] = setting(
        "mnist", "the reference's data; fashion-mnist and kmnist are drop-in 28x28 IDX sets")
    data: str | None = setting(
        None, "your own images instead of --dataset: a folder (searched recursively; class "
        "subfolders become labels; train/ and val/ (or test/) subfolders are used as given) or "
        "an .npz/.npy file of uint8 images (N, H, W[, C])")
    image_size: int | None = setting(
        None, "resize the shorter side to S and centre-crop to SxS; unset = the images' own "
        "size (they must then all share it)")
    channels: Literal[1, 3] | None = setting(
        None, "1 = grey, 3 = colour, converting as needed; unset = the images' own")
    val_fraction: float = setting(
        0.1, "share of each class held out for validation, chosen with --seed, when the data "
        "bring no val/ (or test/) split; 10% keeps most images for training")
    model: Literal["vae", "hvae", "beta-tcvae", "factorvae", "capacity", "vqvae", "fsq"] = setting(
        "vae", "the model family: vae, the reference's single-level VAE (with --beta, the "
        "beta-VAE); hvae, a top-down hierarchy of latent groups at several resolutions; "
        "beta-tcvae, factorvae, capacity: disentangling VAEs that penalize the total "
        "correlation or hold the KL to a rising capacity; vqvae, fsq: discrete codes, sampled "
        "through a prior trained afterwards (vaelab train-prior) (models/)")
    arch: Literal["conv", "resnet", "locatello"] = setting(
        "conv", "conv: the reference's network (other sizes get one stride-2 stage per halving); "
        "resnet: a wider residual network, for colour images; locatello: the disentanglement "
        "literature's (4 convs of 32-64 channels, dense 256), whose scores compare")
    conditional: bool = setting(
        False, "a conditional VAE: the label enters the encoder q(z|x, y) and the decoder "
        "p(x|z, y), so samples can be asked for by class (needs labelled data)")
    classes: int | None = setting(
        None, "number of classes, recorded from the data for conditional runs", flag=False)
    train_images: int | None = setting(
        None, "number of training images, recorded from the data (beta-tcvae's estimate of "
        "the aggregate posterior needs it)", flag=False)
    height: int | None = setting(None, "image height, recorded from the data", flag=False)
    width: int | None = setting(None, "image width, recorded from the data", flag=False)
    likelihood: Literal["bernoulli", "logistic", "logistic-mixture"] = setting(
        "bernoulli", "p(x|z): bernoulli (the reference's; a cross-entropy on grey values); "
        "logistic or logistic-mixture: discretized on the 256 levels, a probability of 8-bit "
        "images (bits/dim compare with the literature)")
    mixture_components: int = setting(
        10, "logistics per sub-pixel in --likelihood logistic-mixture: 10, as PixelCNN++")
    latent_dim: int = setting(20, "vae: size of z, the reference's LATENT_DIM")
    batch_size: int = setting(64, "images per step: the reference's BATCH_SIZE")
    lr: float = setting(1e-3, "Adam learning rate: the reference's LEARNING_RATE")
    epochs: int = setting(10, "passes over the training set: the reference's NUM_EPOCHS")
    beta: float = setting(
        1.0, "weight on the KL term; 1 optimizes the true ELBO, as the reference does")
    binarize: Literal["none", "dynamic", "static"] = setting(
        "none", "none: grayscale targets, the reference's; dynamic/static: the binarized-MNIST "
        "likelihood protocol (resampled each batch / fixed once)")
    kl_warmup: int = setting(
        0, "epochs over which the KL weight rises linearly from 0 to beta; 0 = none, the "
        "reference's")
    iw_train: int = setting(
        1, "importance samples per image in the training bound: 1 = the ELBO (the reference's), "
        "K > 1 = the IWAE bound")
    schedule: Literal["constant", "onecycle"] = setting(
        "constant", "learning rate over the run: constant (the reference's), or one-cycle: a "
        "warm-up to lr over the first 30% of steps, then a cosine decay to ~0 by the last "
        "epoch")
    memory_format: Literal["channels_last", "contiguous"] = setting(
        "channels_last", "layout of the convolutions' tensors (same maths); channels_last "
        "suits the CPU's convolution kernels (bench/speed.py measures it)")
    precision: Literal["fp32", "bf16", "auto"] = setting(
        "fp32", "fp32 (the reference's); bf16 autocasts convolutions and matmuls (the loss "
        "stays fp32); auto = bf16 on a CPU that computes it natively, else fp32 (this small "
        "model is launch-bound on a GPU, where bf16 does not pay)")
    compile: Literal["off", "on", "auto"] = setting(
        "off", "torch.compile the model: slow to start; auto = on for CUDA (off by default: "
        "this small model is launch-bound on a GPU, where compiling did not pay)")
    hvae_channels: int = setting(
        64, "hvae: channels of the residual blocks of both paths; 64 trains on a laptop's CPU "
        "in minutes per epoch at 28x28 (--recipe hvae-large: a GPU's)")
    hvae_latent_channels: int = setting(
        8, "hvae: channels of each latent group (its units: these x the group's resolution)")
    hvae_groups: int = setting(
        2, "hvae: latent groups at each resolution, from the image's half size down to 7x7 or "
        "4x4 (28x28: 14 and 7, so 4 groups at the default)")
    tcvae_alpha: float = setting(
        1.0, "beta-tcvae: weight on the index-code mutual information; 1, as Chen et al.")
    tcvae_beta: float = setting(
        6.0, "beta-tcvae: weight on the total correlation; 6, within the 1-10 that Chen et al. "
        "and Locatello et al. swept on dSprites")
    tcvae_gamma: float = setting(
        1.0, "beta-tcvae: weight on the dimension-wise KL; 1, as Chen et al.")
    factorvae_gamma: float = setting(
        35.0, "factorvae: weight on the discriminator's total correlation estimate; 35, "
        "within the 10-100 that Kim & Mnih and Locatello et al. swept on dSprites")
    factorvae_hidden: int = setting(
        1000, "factorvae: units in each of the discriminator's 6 layers; 1000, as Kim & Mnih")
    capacity_max: float = setting(
        25.0, "capacity: the KL's target at the end of its rise, nats; 25, Burgess et al.'s "
        "for dSprites")
    capacity_steps: int = setting(
        100_000, "capacity: optimizer steps over which the target rises linearly from 0; "
        "100,000, Burgess et al.'s")
    capacity_gamma: float = setting(
        1000.0, "capacity: weight on |KL - target|; 1000, Burgess et al.'s")
    discrete_channels: int = setting(
        64, "vqvae, fsq: channels of the encoder's and decoder's convolutions")
    codebook_size: int = setting(
        512, "vqvae: entries of the codebook, K; 512, as van den Oord et al.'s CIFAR-10 model")
    code_dim: int = setting(64, "vqvae: channels of each code vector, D")
    vqvae_dead_codes: Literal["reseed", "keep"] = setting(
        "reseed", "vqvae: what happens to a codebook entry the encoder stopped using: reseed "
        "it with the worst-quantized encoder output (the cure for codebook collapse), or keep "
        "it, unused (the paper's training, for contrast)")
    levels: str = setting(
        "8,5,5,5", "fsq: the levels of each code channel, comma-separated; 8,5,5,5 gives "
        "1,000 codes, Mentzer et al.'s choice for about 2^10")
    grad_skip: float | None = setting(
        None, "skip an update whose gradient norm (of the per-image loss) exceeds this, as "
        "VDVAE does; unset = never. An epoch whose every update is skipped stops the run")
    grad_clip: float | None = setting(
        None, "clip the gradient's total norm to this; unset = no clipping, as the reference")
    seed: int = setting(0, "seeds Python, NumPy and torch, shuffling and sampling included")
    device: str = setting("auto", "auto = cuda, then mps, then cpu; or name one (cpu, cuda:1)")
    threads: int | None = setting(
        None, "CPU threads for training; unset = measured at the start: one thread or every "
        "usable core, whichever trains faster (when another program keeps a core busy, all "
        "cores can be many times slower). Changes only the order of float additions")
    ddp_backend: Literal["auto", "nccl", "gloo"] = setting(
        "auto", "under torchrun, how the processes talk: auto = nccl on CUDA, gloo on CPU")
    ddp_timeout: float = setting(
        600.0, "under torchrun, seconds a process waits for the others (joining, each exchange, "
        "rank 0 building a decode cache) before it gives up: no wait is unbounded")
    logger: Literal["none", "tensorboard"] = setting(
        "none", "tensorboard: also log each step's terms, learning rate and gradient norm, and "
        "each epoch's metrics and pictures, into RUN/tensorboard/ (needs vaelab[tensorboard]); "
        "metrics.csv is written either way. (Not --log: torchrun would read that as an "
        "abbreviation of its own --log-dir)")
    data_dir: str | None = setting(
        None, "folder with the IDX files; unset: $VAELAB_DATA_DIR, else ./data")
    limit_train: int | None = setting(None, "use only the first N training images (quick runs)")
    limit_val: int | None = setting(None, "use only the first N validation images (quick runs)")

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Rebuild from `to_dict()` output (config.json, checkpoints); unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; "
                              f"known fields are {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model takes. The IDX sets are 1x28x28 (unless resized);
        for --data the shape is recorded from the data when training starts."""
        if self.data is None:
            side = self.image_size or 28
            return self.channels or 1, self.height or side, self.width or side
        if None in (self.channels, self.height, self.width):
            raise RuntimeError("the shape of --data images is known once they are loaded; "
                               "use data.with_data_shape(config, split)")
        return self.channels, self.height, self.width

    @property
    def torch_memory_format(self) -> torch.memory_format:
        import torch

        return torch.channels_last if self.memory_format == "channels_last" else \
            torch.contiguous_format


def from_recipe(recipe: str | None = None, **changes: Any) -> Config:
    """A new run's config: the named recipe's settings, overridden by `changes`."""
    if recipe in RENAMED_RECIPES:
        log.warning("--recipe %s is now called --recipe %s; the old name will go", recipe,
                    RENAMED_RECIPES[recipe])
        recipe = RENAMED_RECIPES[recipe]
    if recipe is not None and recipe not in RECIPES:
        raise ConfigError(f"recipe {recipe!r} is unknown: choose one of {', '.join(RECIPES)}")
    return Config(**{**RECIPES[recipe or "reference"], **changes})


DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; a named device must be one vaelab knows and exist."""
    import torch

    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ConfigError(f"device {name!r} is not one vaelab can use (--device): "
                          "auto, cpu, mps, cuda or cuda:N")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    available = {"cpu": True, "cuda": torch.cuda.is_available() and
                 (device.index or 0) < torch.cuda.device_count(),
                 "mps": torch.backends.mps.is_available()}[device.type]
    if not available:
        raise ConfigError(f"device {name!r} is not available on this machine; "
                          "use --device auto (or cpu)")
    return device


SMALLEST_FEATURE_MAP = 4  # halving stops before a side would drop below this
FEWEST_STAGES = 2  # as the reference's network: fewer leaves the linear layers doing the work


def stages(side: int) -> int:
    """How many times a side can be halved while it stays even and >= SMALLEST_FEATURE_MAP."""
    count = 0
    while side % 2 ** (count + 1) == 0 and side // 2 ** (count + 1) >= SMALLEST_FEATURE_MAP:
        count += 1
    return count


def check_shape(shape: tuple[int, int, int], network: str,
                fix: str = "resize them with --image-size") -> int:
    """The number of stride-2 stages for images of `shape` (C, H, W); a one-line error naming
    the `network` (e.g. "--arch conv") if it cannot take them."""
    channels, height, width = shape
    if channels not in (1, 3):
        raise ConfigError(f"images with {channels} channels cannot be modelled: use --channels "
                          "1 (grey) or 3 (colour)")
    count = min(stages(height), stages(width))
    if count < FEWEST_STAGES:
        raise ConfigError(f"images of {height}x{width} cannot be taken by {network}: each "
                          f"side must be a multiple of 4 and at least 16 (e.g. 28, 32, 64); {fix}")
    return count


# The options only some families take (the rest of Config applies to every family): setting
# one for another family is refused rather than silently ignored.
SINGLE_LEVEL = ("vae", "beta-tcvae", "factorvae", "capacity")  # one Gaussian z, vae.py's nets
FAMILY_OPTIONS = {"vae": ("iw_train",),
                  SINGLE_LEVEL: ("latent_dim", "arch"),
                  "hvae": ("hvae_channels", "hvae_latent_channels", "hvae_groups"),
                  "beta-tcvae": ("tcvae_alpha", "tcvae_beta", "tcvae_gamma"),
                  "factorvae": ("factorvae_gamma", "factorvae_hidden"),
                  "capacity": ("capacity_max", "capacity_steps", "capacity_gamma"),
                  ("vqvae", "fsq"): ("discrete_channels",),
                  "vqvae": ("codebook_size", "code_dim", "vqvae_dead_codes"),
                  "fsq": ("levels",)}


def _check_family_options(c: Config) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for families, names in FAMILY_OPTIONS.items():
        families = (families,) if isinstance(families, str) else families
        for name in names:
            if c.model not in families and getattr(c, name) != defaults[name]:
                _fail(name, getattr(c, name), f"an option of --model {' or '.join(families)}, "
                      f"and this run is --model {c.model}: drop it, or choose --model "
                      f"{families[0]}")


def _check_discrete(c: Config) -> None:
    if c.discrete_channels < 2:
        _fail("discrete_channels", c.discrete_channels, "must be at least 2")
    if c.codebook_size < 2:
        _fail("codebook_size", c.codebook_size, "must be at least 2 codes")
    parse_levels(c.levels)
    if c.model != "vqvae" or c.train_images is None or c.height is None:
        return
    vectors = c.train_images * (c.height // 4) * (c.width // 4)  # a code map is a quarter
    if c.codebook_size > vectors:
        _fail("codebook_size", c.codebook_size, f"larger than the {vectors:,} code vectors the "
              "training images give (a code per image position), so most entries could never "
              "be used: choose a smaller codebook, or train on more images")


def parse_levels(text: str) -> tuple[int, ...]:
    """--levels "8,5,5,5" -> (8, 5, 5, 5); a one-line error for anything else."""
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        _fail("levels", text, "the levels of each channel as integers separated by commas, "
              "e.g. 8,5,5,5")
    if min(levels) < 2:
        _fail("levels", text, "every channel needs at least 2 levels, e.g. 8,5,5,5")
    return levels


def network_of(config: Config) -> str:
    """How a one-line error names the network a config builds."""
    return f"--arch {config.arch}" if config.model in SINGLE_LEVEL else \
        f"--model {config.model}"


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _fail(name: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"{name} = {value!r} is not allowed ({flag_name(name)}): {allowed}")


def field_kind(name: str) -> tuple[type, tuple | None, bool]:
    """A field's base type (bool, int, float or str), its Literal choices (or None), and whether
    it may be None: what the CLI needs to make its flag."""
    hint = _type_hints()[name]
    base = next(t for t in (bool, int, float, str) if _admits(hint, t))
    literal = next((a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is Literal),
                   None)
    choices = typing.get_args(literal) if literal is not None else None
    return base, choices, type(None) in typing.get_args(hint)


@functools.cache
def _type_hints() -> dict[str, Any]:
    """Config's field annotations, resolved once: resolving them (typing.get_type_hints) took
    about 1 ms a field, and every Config checks each of its fields' types when it is built."""
    return typing.get_type_hints(Config)


def _check_types(config: Config) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        base, _, optional = field_kind(f.name)
        if value is None and optional:
            continue
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, f.name, float(value))  # 1 means 1.0
        elif isinstance(value, bool) != (base is bool) or not isinstance(value, base):
            _fail(f.name, value, f"expected {'an' if base is int else 'a'} {base.__name__}")


def _admits(hint: Any, kind: type) -> bool:
    """True if the annotation is `kind`, `kind | None` or a Literal of `kind` values."""
    if hint is kind:
        return True
    if typing.get_origin(hint) is Literal:
        return all(isinstance(v, kind) for v in typing.get_args(hint))
    return any(_admits(arg, kind) for arg in typing.get_args(hint))


def _check_values(c: Config) -> None:
    for f in dataclasses.fields(c):
        choices = field_kind(f.name)[1]
        value = getattr(c, f.name)
        if choices and value is not None and value not in choices:
            _fail(f.name, value, f"one of {', '.join(map(str, choices))}")
    if c.kl_warmup < 0:
        _fail("kl_warmup", c.kl_warmup, "must be >= 0 epochs")
    for name in ("latent_dim", "batch_size", "epochs", "iw_train", "mixture_components",
                 "hvae_channels", "hvae_latent_channels", "hvae_groups", "factorvae_hidden",
                 "capacity_steps", "code_dim"):
        if getattr(c, name) < 1:
            _fail(name, getattr(c, name), "must be at least 1")
    for name in ("tcvae_alpha", "tcvae_beta", "tcvae_gamma", "factorvae_gamma", "capacity_max",
                 "capacity_gamma"):
        if not (math.isfinite(getattr(c, name)) and getattr(c, name) >= 0):
            _fail(name, getattr(c, name), "must be a finite number >= 0")
    for name in ("limit_train", "limit_val", "image_size", "height", "width", "classes",
                 "train_images"):
        value = getattr(c, name)
        if value is not None and value < 1:
            _fail(name, value, "must be at least 1, or unset for all images")
    if c.threads is not None and c.threads < 1:
        _fail("threads", c.threads, "must be at least 1, or unset to measure the best")
    if not 0 < c.val_fraction < 1:
        _fail("val_fraction", c.val_fraction, "must be between 0 and 1, e.g. 0.1")
    if c.classes is not None and not c.conditional:
        _fail("classes", c.classes, "recorded for conditional runs only")
    if c.data is not None and c.dataset != "mnist":
        _fail("dataset", c.dataset, "--data and --dataset name two sources of images: give one")
    if (c.height is None) != (c.width is None) or (
            c.image_size is not None and c.height not in (None, c.image_size)):
        _fail("height", c.height, "height and width are recorded together from the data")
    if c.likelihood != "bernoulli" and c.binarize != "none":
        _fail("likelihood", c.likelihood, f"--binarize {c.binarize} makes images of 0s and 1s, "
              "not 8-bit ones: use --binarize none, or --likelihood bernoulli")
    if c.image_size is not None:
        check_shape((c.channels or 1, c.image_size, c.image_size), network_of(c),
                    "choose another --image-size")
    if not (math.isfinite(c.lr) and c.lr > 0):
        _fail("lr", c.lr, "must be a finite number > 0, e.g. 1e-3")
    if not (math.isfinite(c.beta) and c.beta >= 0):
        _fail("beta", c.beta, "must be a finite number >= 0")
    for name in ("grad_clip", "grad_skip"):
        value = getattr(c, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            _fail(name, value, "must be a finite number > 0, or unset")
    _check_family_options(c)
    _check_discrete(c)
    if not (math.isfinite(c.ddp_timeout) and c.ddp_timeout > 0):
        _fail("ddp_timeout", c.ddp_timeout, "must be a finite number of seconds > 0")
    if c.seed < 0:
        _fail("seed", c.seed, "must be >= 0")
    if not re.fullmatch(DEVICE_PATTERN, c.device):
        _fail("device", c.device, "auto, cpu, mps, cuda or cuda:N")
