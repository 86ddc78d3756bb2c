import argparse
import dataclasses
import functools
import math

import pytest

from vaelab import Config
from vaelab.cli_parser import build_parser
from vaelab.errors import ConfigError

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant


def test_defaults_are_the_seeds():
    config = Config()
    assert (config.latent_dim, config.batch_size, config.lr, config.epochs) == (20, 64, 1e-3, 10)
    assert (config.seed, config.device, config.dataset, config.beta) == (0, "auto", "mnist", 1.0)


@pytest.mark.parametrize("field, value, words", [
    ("batch_size", 0, "at least 1"),
    ("latent_dim", 0, "at least 1"),
    ("epochs", -3, "at least 1"),
    ("lr", -1.0, "> 0"),
    ("lr", math.nan, "finite"),
    ("lr", math.inf, "finite"),
    ("beta", -0.5, ">= 0"),
    ("dataset", "cifar", "mnist, fashion-mnist, kmnist"),
    ("device", "gpu", "auto, cpu"),
    ("limit_train", 0, "at least 1"),
    ("batch_size", "64", "expected an int"),
    ("batch_size", True, "expected an int"),
])
def test_impossible_values_name_field_value_and_rule(field, value, words):
    with pytest.raises(ConfigError) as caught:
        Config(**{field: value})
    message = str(caught.value)
    assert field in message and repr(value) in message and words in message
    assert "--" + field.replace("_", "-") in message


def test_int_is_accepted_for_a_float_field():
    assert Config(lr=1).lr == 1.0 and isinstance(Config(lr=1).lr, float)


def test_dict_round_trip_and_unknown_keys():
    config = Config(latent_dim=2, limit_val=100)
    assert Config.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown config field.*hidden"):
        Config.from_dict({**config.to_dict(), "hidden": 400})


def test_every_field_has_a_train_flag_with_its_reason():
    """The reasons are checked in the rendered help, which is what breaks on a stray %."""
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {option: action for action in train._actions for option in action.option_strings}
    train.formatter_class = functools.partial(argparse.HelpFormatter, width=10_000)
    rendered = train.format_help()
    for f in dataclasses.fields(Config):
        if not f.metadata["flag"]:  # recorded from the data (height, width): no flag
            assert "--" + f.name not in flags
            continue
        action = flags["--" + f.name.replace("_", "-")]
        assert action.dest == f.name
        assert f"{f.metadata['help']} (default: {f.default})" in rendered, f.name


@pytest.mark.parametrize("field, value, rule", [
    ("kl_warmup", -1, "must be >= 0 epochs"),
    ("grad_clip", 0.0, "must be a finite number > 0, or unset"),
    ("grad_clip", -1.0, "must be a finite number > 0, or unset"),
    ("grad_clip", math.inf, "must be a finite number > 0, or unset"),
    ("seed", -1, "must be >= 0"),
    ("lr", 0.0, "must be a finite number > 0, e.g. 1e-3"),
    ("beta", math.inf, "must be a finite number >= 0"),
    ("iw_train", 0, "must be at least 1"),
    ("limit_val", 0, "must be at least 1, or unset for all images"),
    ("device", "cuda:x", "auto, cpu, mps, cuda or cuda:N"),
    ("lr", "fast", "expected a float"),
    ("latent_dim", 2.0, "expected an int"),
    ("schedule", "linear", "one of constant, onecycle"),
])
def test_each_rule_gives_the_whole_one_line_message(field, value, rule):
    with pytest.raises(ConfigError) as caught:
        Config(**{field: value})
    flag = "--" + field.replace("_", "-")
    assert str(caught.value) == f"{field} = {value!r} is not allowed ({flag}): {rule}"


@pytest.mark.parametrize("field, value", [
    ("kl_warmup", 0), ("grad_clip", 0.5), ("grad_clip", None), ("seed", 0), ("beta", 0.0),
    ("limit_train", 1), ("limit_val", 1), ("iw_train", 1), ("device", "cuda:1"),
    ("data_dir", None), ("lr", 1e-300),
])
def test_boundary_values_are_accepted(field, value):
    assert getattr(Config(**{field: value}), field) == value


def test_an_optional_field_set_is_still_type_checked_after_unset_ones():
    """data_dir (optional, unset) comes before limit_train: the check goes on past it."""
    with pytest.raises(ConfigError, match="limit_val = '5' is not allowed"):
        Config(limit_val="5")
    with pytest.raises(ConfigError, match="data_dir = 3 is not allowed"):
        Config(data_dir=3)


def test_unknown_keys_are_listed_with_the_known_ones():
    with pytest.raises(ConfigError) as caught:
        Config.from_dict({"zeta": 1, "alpha": 2})
    known = ", ".join(sorted(f.name for f in dataclasses.fields(Config)))
    assert str(caught.value) == (f"unknown config field(s) alpha, zeta; known fields are {known}")


def test_replace_changes_only_the_named_fields():
    config = Config(latent_dim=3)
    assert config.replace(epochs=2) == Config(latent_dim=3, epochs=2)
    assert config.replace() == config


def test_recipes_fill_in_what_is_not_set():
    from vaelab.config import RECIPES, from_recipe

    assert from_recipe() == Config() == from_recipe("reference")
    fast = from_recipe("fast", epochs=5)
    assert fast == Config(**{**RECIPES["fast"], "epochs": 5}) and fast.lr == 1e-2
    with pytest.raises(ConfigError) as caught:
        from_recipe("slow")
    assert str(caught.value) == ("recipe 'slow' is unknown: choose one of reference, fast, "
                                 "hvae-large")


def test_the_old_recipe_name_still_works_with_a_line_naming_the_new_one(caplog):
    """`--recipe seed` read like `--seed`: it is now `reference`, and the old name says so."""
    from vaelab.config import from_recipe

    with caplog.at_level("WARNING", logger="vaelab"):
        assert from_recipe("seed", epochs=3) == Config(epochs=3)
    assert [r.getMessage() for r in caplog.records] == [
        "--recipe seed is now called --recipe reference; the old name will go"]


def test_field_kinds_for_the_cli():
    from vaelab.config import field_kind

    assert field_kind("dataset") == (str, ("mnist", "fashion-mnist", "kmnist"), False)
    assert field_kind("grad_clip") == (float, None, True)
    assert field_kind("limit_val") == (int, None, True)
    assert field_kind("epochs") == (int, None, False)


def test_resolve_device_on_a_cpu_only_machine(monkeypatch):
    import torch

    from vaelab.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ConfigError) as caught:
            resolve_device(name)
        assert str(caught.value) == (f"device {name!r} is not available on this machine; "
                                     "use --device auto (or cpu)")
    with pytest.raises(ConfigError) as caught:
        resolve_device("gpu")
    assert str(caught.value) == ("device 'gpu' is not one vaelab can use (--device): "
                                 "auto, cpu, mps, cuda or cuda:N")


def test_resolve_device_prefers_cuda_then_mps_and_checks_the_index(monkeypatch):
    import torch

    from vaelab.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("mps") == torch.device("mps")
    with pytest.raises(ConfigError, match="'cuda:2' is not available"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")  # no index: device 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")
    with pytest.raises(ConfigError, match="'cuda' is not available"):
        resolve_device("cuda")


def test_a_setting_carries_its_default_its_reason_and_whether_it_is_a_flag():
    """Config's fields are built by setting() while the module loads; the CLI reads its
    metadata for every flag's help and for which fields are recorded from the data."""
    from vaelab.config import setting

    flag = setting(3, "why three")
    assert (flag.default, dict(flag.metadata)) == (3, {"help": "why three", "flag": True})
    recorded = setting(None, "from the data", flag=False)
    assert (recorded.default, dict(recorded.metadata)) == (None, {"help": "from the data",
                                                                  "flag": False})
    from_data = {f.name for f in dataclasses.fields(Config) if not f.metadata["flag"]}
    assert {"classes", "train_images", "height", "width"} <= from_data


def test_an_error_names_the_network_by_the_flag_that_chose_it():
    from vaelab.config import network_of

    assert network_of(Config(arch="resnet")) == "--arch resnet"
    assert network_of(Config(model="hvae")) == "--model hvae"


def test_a_shape_is_halved_while_it_stays_even_and_four_or_more_and_refused_word_for_word():
    from vaelab.config import check_shape, stages

    assert [stages(side) for side in (28, 32, 12, 7, 64, 96)] == [2, 3, 1, 0, 4, 4]
    assert check_shape((3, 28, 32), "--arch conv") == 2  # the fewer of the two sides
    with pytest.raises(ConfigError) as channels:
        check_shape((2, 28, 28), "--arch conv")
    assert str(channels.value) == ("images with 2 channels cannot be modelled: use --channels 1 "
                                   "(grey) or 3 (colour)")
    with pytest.raises(ConfigError) as small:
        check_shape((1, 12, 28), "--model hvae")
    assert str(small.value) == (
        "images of 12x28 cannot be taken by --model hvae: each side must be a multiple of 4 and "
        "at least 16 (e.g. 28, 32, 64); resize them with --image-size")


def refusal_of(**changes) -> str:
    with pytest.raises(ConfigError) as caught:
        Config(**changes)
    return str(caught.value)


def test_discrete_settings_are_refused_word_for_word_at_their_edges():
    from vaelab.config import parse_levels

    assert refusal_of(model="vqvae", discrete_channels=1) == (
        "discrete_channels = 1 is not allowed (--discrete-channels): must be at least 2")
    assert refusal_of(model="vqvae", codebook_size=1) == (
        "codebook_size = 1 is not allowed (--codebook-size): must be at least 2 codes")
    Config(model="vqvae", discrete_channels=2, codebook_size=2)  # the edges themselves: fine
    assert parse_levels("8,5,5,5") == (8, 5, 5, 5) and parse_levels("2") == (2,)
    assert refusal_of(model="fsq", levels="8,x") == (
        "levels = '8,x' is not allowed (--levels): the levels of each channel as integers "
        "separated by commas, e.g. 8,5,5,5")
    assert refusal_of(model="fsq", levels="8,1") == (
        "levels = '8,1' is not allowed (--levels): every channel needs at least 2 levels, e.g. "
        "8,5,5,5")
    shape = dict(model="vqvae", train_images=1000, channels=1, height=28, width=24)
    assert refusal_of(codebook_size=42_001, **shape) == (  # 1000 code maps of 7 x 6
        "codebook_size = 42001 is not allowed (--codebook-size): larger than the 42,000 code "
        "vectors the training images give (a code per image position), so most entries could "
        "never be used: choose a smaller codebook, or train on more images")
    Config(codebook_size=42_000, **shape)  # one code per position: allowed
    Config(codebook_size=42_001, **dict(shape, train_images=None))  # not yet known: allowed
    Config(codebook_size=42_001, **dict(shape, height=None, width=None, channels=None))


def test_an_option_of_another_family_is_refused_naming_the_families_that_take_it():
    assert refusal_of(model="hvae", latent_dim=5) == (
        "latent_dim = 5 is not allowed (--latent-dim): an option of --model vae or beta-tcvae "
        "or factorvae or capacity, and this run is --model hvae: drop it, or choose --model vae")
    assert refusal_of(model="hvae", iw_train=5) == (
        "iw_train = 5 is not allowed (--iw-train): an option of --model vae, and this run is "
        "--model hvae: drop it, or choose --model vae")
    Config(model="hvae", latent_dim=Config().latent_dim)  # the default is no choice: fine


@pytest.mark.parametrize("model, name", [
    ("beta-tcvae", "tcvae_alpha"), ("beta-tcvae", "tcvae_beta"), ("beta-tcvae", "tcvae_gamma"),
    ("factorvae", "factorvae_gamma"), ("capacity", "capacity_max"), ("capacity", "capacity_gamma")])
def test_the_disentangling_weights_are_finite_and_at_least_0(model, name):
    flag = "--" + name.replace("_", "-")
    for value in (-0.5, math.inf, math.nan):
        assert refusal_of(model=model, **{name: value}) == (
            f"{name} = {value!r} is not allowed ({flag}): must be a finite number >= 0")
    assert getattr(Config(model=model, **{name: 0.0}), name) == 0.0  # the edge is allowed


def test_a_thread_count_is_at_least_1_or_unset():
    assert refusal_of(threads=0) == (
        "threads = 0 is not allowed (--threads): must be at least 1, or unset to measure the best")
    assert Config(threads=1).threads == 1 and Config().threads is None


def test_the_data_settings_are_refused_word_for_word():
    for fraction in (0.0, 1.0):
        assert refusal_of(val_fraction=fraction) == (
            f"val_fraction = {fraction} is not allowed (--val-fraction): must be between 0 and 1, "
            "e.g. 0.1")
    assert Config(val_fraction=0.5).val_fraction == 0.5
    assert refusal_of(classes=3) == (
        "classes = 3 is not allowed (--classes): recorded for conditional runs only")
    assert Config(classes=3, conditional=True).classes == 3
    assert refusal_of(data="x", dataset="kmnist") == (
        "dataset = 'kmnist' is not allowed (--dataset): --data and --dataset name two sources of "
        "images: give one")


@pytest.mark.parametrize("changes, message", [
    ({"height": 28}, "height = 28 is not allowed (--height): height and width are recorded "
     "together from the data"),
    ({"height": 28, "width": 28, "image_size": 32}, "height = 28 is not allowed (--height): "
     "height and width are recorded together from the data"),
    ({"likelihood": "logistic", "binarize": "dynamic"}, "likelihood = 'logistic' is not "
     "allowed (--likelihood): --binarize dynamic makes images of 0s and 1s, not 8-bit ones: use "
     "--binarize none, or --likelihood bernoulli"),
    ({"image_size": 30}, "images of 30x30 cannot be taken by --arch conv: each side must be a "
     "multiple of 4 and at least 16 (e.g. 28, 32, 64); choose another --image-size"),
    ({"lr": 0.0}, "lr = 0.0 is not allowed (--lr): must be a finite number > 0, e.g. 1e-3"),
    ({"lr": math.nan}, "lr = nan is not allowed (--lr): must be a finite number > 0, e.g. 1e-3"),
    ({"beta": -1.0}, "beta = -1.0 is not allowed (--beta): must be a finite number >= 0"),
    ({"grad_clip": 0.0}, "grad_clip = 0.0 is not allowed (--grad-clip): must be a finite "
     "number > 0, or unset"),
    ({"grad_skip": math.inf}, "grad_skip = inf is not allowed (--grad-skip): must be a finite "
     "number > 0, or unset"),
    ({"ddp_timeout": 0.0}, "ddp_timeout = 0.0 is not allowed (--ddp-timeout): must be a finite "
     "number of seconds > 0"),
    ({"seed": -1}, "seed = -1 is not allowed (--seed): must be >= 0"),
    ({"device": "gpu"}, "device = 'gpu' is not allowed (--device): auto, cpu, mps, cuda or "
     "cuda:N"),
])
def test_each_impossible_setting_is_refused_word_for_word(changes, message):
    assert refusal_of(**changes) == message


def test_the_edges_of_the_settings_are_allowed():
    recorded = Config(height=32, width=32, image_size=32, channels=1)
    assert (recorded.height, recorded.beta) == (32, 1.0)
    assert Config(beta=0.0, seed=0, likelihood="logistic", binarize="none").beta == 0.0
    assert Config(device="cuda:1", grad_clip=0.5, grad_skip=None).device == "cuda:1"
    assert Config(ddp_timeout=0.5).ddp_timeout == 0.5  # any time above 0, below a second too
