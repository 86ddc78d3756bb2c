import argparse
import dataclasses
import functools
import math

import pytest

from vaelab import Config
from vaelab.cli import build_parser
from vaelab.errors import ConfigError


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
        action = flags["--" + f.name.replace("_", "-")]
        assert action.dest == f.name
        assert f"{f.metadata['help']} (default: {f.default})" in rendered, f.name
