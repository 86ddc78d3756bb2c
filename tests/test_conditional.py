"""The conditional VAE (`--conditional`): the label in q(z|x, y) and p(x|z, y), sampling by class,
analogies, and every way to ask for a label wrongly."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image
from test_robustness import assert_stop_at_step_5_then_resume_is_exact

from vaelab import VAE, load_run, train
from vaelab.data import load_split
from vaelab.errors import VaelabError
from vaelab.evaluate import log_likelihood_iw
from vaelab.models import count_parameters
from vaelab.plots import NAMES_PX, grid_figure_size

SEED_PARAMETERS = 258_025


def test_the_label_adds_its_inputs_and_modulations_and_nothing_else():
    # The unconditional network is the reference's; the conditional one adds a column per class to
    # the encoder's mu and log sigma^2 layers (D outputs each) and to the decoder's first layer
    # (3136 outputs), an input plane per class to the encoder's first conv (32 filters of 4x4),
    # and per class a gain and a shift for each channel of the decoder's two hidden stages
    # (64 and 32 channels): nothing else changes.
    assert count_parameters(VAE(20)) == SEED_PARAMETERS
    assert count_parameters(VAE(20, classes=10)) == (SEED_PARAMETERS + 10 * (2 * 20 + 3136)
                                                     + 10 * 32 * 4 * 4 + 10 * 2 * (64 + 32))


def test_a_new_conditional_decoder_starts_unmodulated():
    # FiLM starts as the identity: the labels then act only through the first layer's columns,
    # so zeroing those makes the decoder ignore the label entirely. Each label decodes the same
    # batch, so every image goes through the same kernels and the comparison can be exact.
    torch.manual_seed(0)
    model = VAE(3, classes=4)
    with torch.no_grad():
        model.decoder.net[0].weight[:, 3:] = 0
        z = torch.randn(5, 3)
        drawn = [model.decode(z, torch.full((5,), label)) for label in range(4)]
    assert all(torch.equal(images, drawn[0]) for images in drawn)


@pytest.mark.parametrize("arch, shape, stages", [("conv", (1, 28, 28), 2),
                                                 ("resnet", (3, 16, 16), 3)])
def test_each_stages_modulation_changes_its_own_class_alone(arch, shape, stages):
    # One FiLM per hidden decoder stage. A gain and shift given to class 2 at any one stage
    # change every image decoded as a 2, and no image of another class.
    torch.manual_seed(0)
    model = VAE(3, shape, arch, classes=4)
    assert len(model.decoder.film) == stages
    z, y = torch.randn(5, 3).repeat(4, 1), torch.arange(4).repeat_interleave(5)
    with torch.no_grad():
        before = model.decode(z, y).view(4, 5, -1)
        for film in model.decoder.film.values():
            film.gain[2], film.shift[2] = 0.5, 0.1
            changed = (model.decode(z, y).view(4, 5, -1) != before).any(2)
            film.gain[2], film.shift[2] = 0.0, 0.0
            assert changed.tolist() == [[False] * 5, [False] * 5, [True] * 5, [False] * 5]


@pytest.mark.parametrize("arch, shape", [("conv", (1, 28, 28)), ("resnet", (3, 16, 16))])
def test_shapes_and_gradients_reach_the_label_weights_of_the_classes_seen(arch, shape):
    torch.manual_seed(0)
    model = VAE(4, shape, arch, classes=5)
    x, y = torch.rand(6, *shape), torch.tensor([0, 1, 1, 3, 3, 3])
    out = model(x, torch.Generator().manual_seed(0), labels=y)
    assert out.params.shape == (6, *shape) and out.mu.shape == out.z.shape == (6, 4)
    out.params.sum().backward()
    for layer, first_label_column in ((model.encoder.mu, -5), (model.decoder.net[0], 4)):
        grad = layer.weight.grad[:, first_label_column:][:, :5]  # the one-hot columns
        assert torch.isfinite(grad).all()
        seen = grad.abs().sum(0) > 0
        assert seen.tolist() == [True, True, False, True, False]  # classes 2 and 4 not in y
    planes = model.encoder.features[0].weight.grad[:, shape[0]:]  # (out, class, kh, kw)
    assert (planes.abs().sum((0, 2, 3)) > 0).tolist() == [True, True, False, True, False]
    for film in model.decoder.film.values():  # every stage's gain and shift, (class, channels)
        for part in (film.gain, film.shift):
            assert (part.grad.abs().sum(1) > 0).tolist() == [True, True, False, True, False]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_model_refuses_to_guess_a_missing_label():
    with pytest.raises(VaelabError, match="conditional: it needs the images' labels"):
        VAE(2, classes=3).decode(torch.zeros(1, 2))


@pytest.fixture(scope="module")
def digit_classifier(data_dir):
    """An independent judge of which digit an image shows: a logistic regression on 2,000 real
    validation images (scikit-learn; 89% right on the next 1,000), sharing nothing with the
    VAE."""
    from sklearn.linear_model import LogisticRegression

    val = load_split("mnist", "val", data_dir, limit=2000)
    pixels = val.images.flatten(1).double().numpy() / 255
    return LogisticRegression(max_iter=100, C=0.1).fit(pixels, val.labels.numpy())


def class_probabilities(classifier, images):
    return torch.tensor(classifier.predict_proba(images.flatten(1).double().numpy()))


def test_each_label_raises_the_probability_of_its_own_class(conditional_run, digit_classifier):
    """30 draws z ~ N(0, I), each decoded as every class. For every class c, the classifier's
    probability of c is higher when z is decoded as c than, on average, as the other classes:
    the mean paired difference over the 30 draws exceeds 3 of its standard errors (a model
    that ignored the label would give a difference of zero). Measured: 4.7 to 10.7."""
    from vaelab.generate import class_grid

    model = load_run(conditional_run).model
    draws = 30
    images = class_grid(model, draws, seed=3)  # row c: the 30 draws decoded as class c
    p = class_probabilities(digit_classifier, images).view(10, draws, 10)  # label, z, class
    for c in range(10):
        others = torch.stack([p[k, :, c] for k in range(10) if k != c]).mean(0)
        difference = p[c, :, c] - others
        assert difference.mean() > 3 * difference.std() / math.sqrt(draws), c


def test_the_true_label_explains_an_image_better_than_a_wrong_one(conditional_run, data_dir):
    # log p(x|y) with the image's own label against the next class's, per image: the mean
    # difference is many standard errors above zero.
    model = load_run(conditional_run).model
    val = load_split("mnist", "val", data_dir, limit=200)
    right = log_likelihood_iw(model, val.images, 20, labels=val.labels)["log_px"]
    wrong = log_likelihood_iw(model, val.images, 20, labels=(val.labels + 1) % 10)["log_px"]
    gain = right - wrong
    assert gain.mean() > 5 * gain.std() / len(gain) ** 0.5


def test_a_conditional_run_lowers_its_loss_on_real_mnist(tiny_config, tmp_path):
    run = load_run(train(tiny_config.replace(limit_train=2048, epochs=2, conditional=True),
                         tmp_path / "run"), "last")
    assert run.config.conditional and run.config.classes == 10 and run.model.conditional
    first, second = run.metrics
    assert second["train_loss"] < first["train_loss"] and second["val_loss"] < first["val_loss"]


def test_a_conditional_run_stopped_mid_epoch_resumes_exactly(tiny_config, tmp_path):
    config = tiny_config.replace(conditional=True, epochs=2, batch_size=32)
    assert_stop_at_step_5_then_resume_is_exact(config, tmp_path)


def png_size(path):
    with Image.open(path) as image:
        return image.size


def test_the_figure_commands_on_a_conditional_run(capsys, conditional_run, tmp_path):
    out = tmp_path / "figures"
    for command in (["sample"], ["sample", "--label", "7", "--n", "9"], ["analogy", "--n", "4"],
                    ["interpolate", "--from", "3", "--to", "5"], ["latent"], ["reconstruct"]):
        code, printed, err = cli(capsys, command[0], conditional_run, *command[1:], "--out", out)
        assert code == 0, err
    sides = grid_figure_size(10, 10)
    grid = png_size(out / "samples.png")  # the last sample command wrote the 3x3 of sevens
    assert grid == grid_figure_size(3, 3)
    cli(capsys, "sample", conditional_run, "--out", out)
    assert png_size(out / "samples.png") == (sides[0] + NAMES_PX, sides[1])  # names the rows
    analogies = grid_figure_size(4, 11)  # each image, then its code as each of the 10 classes
    assert png_size(out / "analogies.png") == (analogies[0], analogies[1] + NAMES_PX // 3)
    report = conditional_run / "report.html"
    cli(capsys, "report", conditional_run)
    assert "Analogies" in report.read_text() and "one row per class" in report.read_text()


def test_sampling_a_class_draws_that_class(conditional_run, digit_classifier):
    """20 samples of each class, judged by the independent classifier: if the label did
    nothing, the classifier would agree with it on 1/10 of them whatever it predicts (each
    label is asked equally often); it agrees far more often than 1/10 plus 5 binomial
    standard errors. Measured: half of them after 3 short epochs."""
    from vaelab.generate import class_grid, sample_prior

    model = load_run(conditional_run).model
    columns = 20
    grid = class_grid(model, columns, seed=3)
    asked = torch.arange(10).repeat_interleave(columns)
    judged = class_probabilities(digit_classifier, grid).argmax(1)
    agreement = (judged == asked).double().mean().item()
    chance, n = 0.1, len(asked)
    assert agreement > chance + 5 * math.sqrt(chance * (1 - chance) / n)
    sevens = sample_prior(model, columns, seed=3, label=7)  # `sample --label 7`: row 7's z
    assert torch.equal(grid[7 * columns:8 * columns], sevens)


def test_evaluate_says_it_is_conditional(capsys, conditional_run):
    code, out, err = cli(capsys, "evaluate", conditional_run, "--iw-samples", 4, "--limit", 20,
                         "--quiet")
    assert code == 0, err
    assert "conditional model" in out and "-log p(x|y)" in out
    assert json.loads((conditional_run / "eval.json").read_text())["conditional"] is True


def test_the_explorer_changes_the_digit_with_the_class(conditional_run, data_dir):
    from vaelab.explore import Explorer

    explorer = Explorer(load_run(conditional_run), load_split("mnist", "val", data_dir,
                                                              limit=300))
    z = explorer.code(0)
    assert explorer.label_of(0) == int(load_split("mnist", "val", data_dir, limit=1).labels[0])
    assert not np.array_equal(explorer.decode(z, 1), explorer.decode(z, 8))
    drawn = np.zeros((28, 28), np.uint8)
    drawn[4:24, 13:16] = 255
    assert explorer.encode_image(drawn, 1)["reconstruction"].shape == (224, 224)


# ---- bad input: one line each ---------------------------------------------------------------

def test_label_out_of_range_or_unknown_is_one_line(capsys, conditional_run):
    for label in ("10", "seven"):
        code, _, err = cli(capsys, "sample", conditional_run, "--label", label)
        assert code == 1 and err.count("\n") == 1
        assert f"class '{label}' is not one of this run's classes: 0, 1" in err


def test_an_unconditional_run_refuses_labels_and_analogies(capsys, trained_run):
    code, _, err = cli(capsys, "sample", trained_run, "--label", "3")
    assert code == 1 and "is not conditional" in err and "--conditional" in err
    assert err.count("\n") == 1
    code, _, err = cli(capsys, "analogy", trained_run)
    assert code == 1 and "is not conditional: analogies" in err and err.count("\n") == 1


def test_conditional_on_unlabelled_data_is_one_line(capsys, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", images=images)
    code, _, err = cli(capsys, "train", "--data", tmp_path / "plain.npz", "--conditional",
                       "--out", tmp_path / "run", "--quiet")
    assert code == 1 and err.count("\n") == 1
    assert "--conditional needs labelled images" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_conditional_is_a_switch_a_resume_cannot_flip(capsys, tiny_config, tmp_path):
    run = train(tiny_config, tmp_path / "run")
    code, _, err = cli(capsys, "train", "--resume", run, "--conditional")
    assert code == 1 and "cannot change conditional" in err
    from vaelab import Config

    with pytest.raises(VaelabError, match="expected a bool"):
        Config(conditional=1)
    with pytest.raises(VaelabError, match="recorded for conditional runs only"):
        Config(classes=10)
