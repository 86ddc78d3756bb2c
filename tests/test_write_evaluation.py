"""write_evaluation and evaluate_run on an untrained model saved as a run: what is measured,
written and refused, in seconds (no training); then `vaelab evaluate --checkpoint` and
`--split` on small trained runs."""

import json
import math
import sys
import time

import pytest
import torch
from closed_form import (
    QUADRATURE_ERROR,
    closed_form_log_px,
    closed_form_model,
    float32_tolerance,
    use_small_grids,
)
from helpers import cli, sha256

import vaelab.evaluate
import vaelab.training as training
from vaelab import load_run, train
from vaelab.data import (
    TEST_BINARIZATION_SEED,
    binarize,
    load_split,
    to_float,
    training_images,
)
from vaelab.evaluate import summarize
from vaelab.likelihoods import Bernoulli

REAL_STEP = training._step


# ---- fast unit tests of write_evaluation / evaluate_run on an untrained model (no training):
# they pin what an evaluation reads, computes and writes, in well under a second each.

def untrained_run(path, closed_form=False, **changes):
    """A run directory holding an untrained model's checkpoint as best.pt (epoch 3) and
    last.pt (epoch 4), as training writes them, without training. With `closed_form`, the
    model is tests/closed_form.py's, whose log p(x) is known from the pixels alone."""
    from vaelab.checkpoint import save_checkpoint
    from vaelab.config import Config
    from vaelab.training_state import TrainingState

    config = Config(device="cpu", **changes)
    state = TrainingState.fresh(config, torch.device("cpu"))
    if closed_form:
        state.model.load_state_dict(closed_form_model(config.latent_dim).state_dict())
    path.mkdir()
    for name, epoch in (("best.pt", 3), ("last.pt", 4)):
        state.epoch = epoch
        save_checkpoint(path / name, state.checkpoint(), "test")
    return path


def assert_closed_form_summary(result, images, samples):
    """An evaluation of a closed-form run measured exactly these images (N, C, H, W): its
    numbers are their log p(x) from the pixels alone, within float32 rounding (a mean's and
    a standard deviation's error are at most those of the values themselves, twice)."""
    log_px = torch.tensor(closed_form_log_px(images), dtype=torch.float64)
    tolerance = 2 * float32_tolerance(images)
    nll, n = -log_px.mean().item(), len(images)
    stderr = log_px.std().item() / math.sqrt(n) if n > 1 else math.nan
    expected = {"nll": nll, "neg_elbo": nll, "recon": nll, "kl": 0.0,
                "nll_bits_per_dim": nll / (784 * math.log(2)), "nll_stderr": stderr,
                "neg_elbo_stderr": stderr, "effective_samples_median": samples}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=tolerance, nan_ok=True), key
    assert (result["iw_samples"], result["images"], result["active_units"]) == (samples, n, 0)




@pytest.mark.mutation
def test_write_evaluation_writes_what_it_measured(data_dir, tmp_path):
    """Same model, images, K and seed: the same deterministic computation, so equality."""
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", True, data_dir=str(data_dir), latent_dim=3)
    result, path = write_evaluation(str(run), samples=3, limit=6, seed=5, progress=False)
    assert path.read_text() == json.dumps(result, indent=2) + "\n"
    images = load_split("mnist", "val", data_dir, limit=6).images
    assert path == run / "eval.json" and json.loads(path.read_text()) == result
    assert path.read_text().endswith("}\n")
    assert_closed_form_summary(result, images, 3)
    assert result["images"] == 6 and result["latent_dim"] == 3
    assert (result["split"], result["checkpoint"], result["epoch"]) == ("test", "best", 3)
    assert result["checkpoint_sha256"] == sha256(run / "best.pt")
    assert (result["dataset"], result["binarize"]) == ("mnist", "none")
    assert (result["model"], result["likelihood"], result["density_of_8bit"]) == (
        "vae", "bernoulli", False)
    assert result["pixel_entropy"] == Bernoulli().floor(to_float(images))
    assert result["seconds"] > 0
    random = untrained_run(tmp_path / "random", data_dir=str(data_dir), latent_dim=3)
    seeds = [write_evaluation(str(random), samples=3, limit=6, seed=seed, progress=False)[0]
             for seed in (5, 6)]
    assert seeds[0]["nll"] != seeds[1]["nll"]  # the seed reaches the sampler


@pytest.mark.mutation
def test_write_evaluation_of_the_last_checkpoint_with_the_default_seed(data_dir, tmp_path):
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", True, data_dir=str(data_dir), latent_dim=2)
    result, _ = write_evaluation(str(run), samples=2, limit=4, checkpoint="last",
                                 device="cpu", progress=False)
    assert (result["checkpoint"], result["epoch"]) == ("last", 4)
    assert result["checkpoint_sha256"] == sha256(run / "last.pt")
    assert_closed_form_summary(result, load_split("mnist", "val", data_dir, limit=4).images, 2)


@pytest.mark.mutation
def test_write_evaluation_data_dir_overrides_the_runs_own(data_dir, tmp_path, monkeypatch):
    """Neither the run's folder nor $VAELAB_DATA_DIR holds the files: only the argument does.
    (Also the defaults: 5000 importance samples, on the test split.)"""
    from vaelab.evaluate import write_evaluation

    monkeypatch.setenv("VAELAB_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("VAELAB_MIRRORS", "http://127.0.0.1:9/")  # no download either
    run = untrained_run(tmp_path / "run", data_dir=str(tmp_path / "moved-away"))
    result, _ = write_evaluation(str(run), limit=2, data_dir=str(data_dir), progress=False)
    assert (result["images"], result["iw_samples"], result["split"]) == (2, 5000, "test")


@pytest.mark.mutation
def test_write_evaluation_train_split_of_a_static_run(
        data_dir, tmp_path):
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", True, data_dir=str(data_dir), latent_dim=2,
                        binarize="static", seed=4)
    result, path = write_evaluation(str(run), samples=2, limit=5, split="train",
                                    progress=False)
    config = load_run(run).config
    images = training_images(config, load_split("mnist", "train", data_dir, limit=5))
    assert path == run / "eval-train.json" and json.loads(path.read_text()) == result
    assert_closed_form_summary(result, images, 2)  # the one binarization it trained on
    assert (result["split"], result["binarize"]) == ("train", "static")
    assert "pixel_entropy" not in result


@pytest.mark.mutation
def test_write_evaluation_train_split_of_a_dynamic_run(
        data_dir, tmp_path):
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", True, data_dir=str(data_dir), latent_dim=2,
                        binarize="dynamic", seed=4)
    result, _ = write_evaluation(str(run), samples=2, limit=5, split="train", progress=False)
    images = binarize(load_split("mnist", "train", data_dir, limit=5).images,
                      TEST_BINARIZATION_SEED)
    assert_closed_form_summary(result, images, 2)  # the shared test binarization


@pytest.mark.mutation
@pytest.mark.parametrize("kwargs, words", [
    ({"samples": 0}, "--iw-samples 0 is not allowed: it must be at least 1"),
    ({"limit": 0}, "--limit 0 is not allowed: it must be at least 1"),
    ({"exact": True}, "latent sizes 1 and 2; this run has 20"),
])
def test_write_evaluation_refuses_impossible_requests_before_writing(
        data_dir, tmp_path, kwargs, words):
    from vaelab.errors import VaelabError
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", data_dir=str(data_dir))
    with pytest.raises(VaelabError) as caught:
        write_evaluation(str(run), **{"samples": 1, "limit": 1, **kwargs})
    assert str(caught.value) == words or words in str(caught.value)
    assert not (run / "eval.json").exists()


@pytest.mark.mutation
def test_write_evaluation_accepts_one_sample_and_one_image(data_dir, tmp_path):
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", data_dir=str(data_dir), latent_dim=1)
    result, _ = write_evaluation(str(run), samples=1, limit=1, progress=False, exact=True)
    assert result["images"] == 1 and result["iw_samples"] == 1
    assert "exact_nll" in result  # --exact reaches evaluate_run


@pytest.mark.mutation
def test_write_evaluation_reports_an_unwritable_run_folder(data_dir, tmp_path, monkeypatch):
    import errno

    from vaelab.errors import VaelabError
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", data_dir=str(data_dir), latent_dim=2)

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(vaelab.evaluate, "atomic_open", refuse)
    with pytest.raises(VaelabError, match=r"^cannot write .*eval.json \(Permission denied\); "
                                          r"is the run folder writable\?$"):
        write_evaluation(str(run), samples=1, limit=1, progress=False)


@pytest.mark.mutation
def test_evaluate_run_exact_adds_the_quadrature(data_dir, tmp_path, capsys, monkeypatch):
    from vaelab.evaluate import evaluate_run

    use_small_grids(monkeypatch)
    run = untrained_run(tmp_path / "run", True, data_dir=str(data_dir), latent_dim=1)
    model = load_run(run).model
    images = load_split("mnist", "val", data_dir, limit=2).images
    started = time.perf_counter()
    result = evaluate_run(model, images, samples=4, seed=1, exact=True)
    took = time.perf_counter() - started
    assert_closed_form_summary(result, images, 4)
    # the quadrature's log p(x) is the closed form too, so the estimate misses it by nothing
    exact = -torch.tensor(closed_form_log_px(images), dtype=torch.float64).mean().item()
    tolerance = 2 * float32_tolerance(images) + QUADRATURE_ERROR
    assert result["exact_nll"] == pytest.approx(exact, abs=tolerance)
    for key in ("exact_gap_mean", "exact_gap_median", "exact_gap_worst"):
        assert abs(result[key]) <= tolerance, key
    assert result["exact_share_off"] == 0 and result["exact_gap_worst_image"] in (0, 1)
    assert set(result) == {"iw_samples", "conditional", "images", "nll", "nll_stderr",
                           "nll_bits_per_dim", "nll_bits_per_dim_stderr", "neg_elbo",
                           "neg_elbo_stderr", "neg_elbo_bits_per_dim", "recon", "kl",
                           "active_units", "effective_samples_median", "latent_dim",
                           "exact_nll", "exact_nll_stderr", "exact_gap_mean",
                           "exact_gap_median", "exact_share_off", "exact_gap_worst",
                           "exact_gap_worst_image", "seconds"}
    assert 0 < result["seconds"] <= took
    capsys.readouterr()
    plain = evaluate_run(model, images, samples=4)
    assert capsys.readouterr().err == ""  # no progress bar unless asked
    evaluate_run(model, images, samples=4, progress=True)
    assert "image" in capsys.readouterr().err  # tqdm's bar, counting images
    assert "exact_nll" not in plain
    assert_closed_form_summary(plain, images, 4)


@pytest.mark.mutation
def test_summary_of_one_image_and_the_active_unit_threshold():
    """n = 1: no spread to estimate (nan); a unit needs a variance above 0.01 to be active,
    computed with 1/n over the images (0.0081 with 1/n, inactive; 0.0162 with 1/(n-1))."""
    one = {"log_px": torch.tensor([-90.0], dtype=torch.float64),
           "recon": torch.tensor([70.0], dtype=torch.float64),
           "kl": torch.tensor([30.0], dtype=torch.float64),
           "ess": torch.tensor([2.0], dtype=torch.float64), "mu": torch.zeros(1, 4)}
    result = summarize(one, 784)
    assert math.isnan(result["nll_stderr"]) and math.isnan(result["neg_elbo_stderr"])
    assert result == {**result, "images": 1, "nll": 90.0, "neg_elbo": 100.0, "recon": 70.0,
                      "kl": 30.0, "active_units": 0, "latent_dim": 4}
    two = {name: values.repeat(2) for name, values in one.items() if name != "mu"}
    two["mu"] = torch.tensor([[0.09, 0.0, 0.2, 0.3], [-0.09, 0.0, -0.2, -0.3]],
                             dtype=torch.float64)
    two["recon"] = torch.tensor([70.0, 72.0], dtype=torch.float64)
    result = summarize(two, 784)
    assert result["neg_elbo_stderr"] == pytest.approx(math.sqrt(2) / math.sqrt(2))
    assert result["nll_stderr"] == 0.0
    assert result["active_units"] == 2  # per-unit variances 0.0081, 0, 0.04 and 0.09


# ---- through the CLI: --checkpoint and --split --------------------------------------------

def spy_on_evaluation(monkeypatch):
    seen = []
    real = vaelab.evaluate.log_likelihood_iw

    def spy(model, images, *args, **kwargs):
        seen.append((model.state_dict(), images.clone()))
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(vaelab.evaluate, "log_likelihood_iw", spy)
    return seen


def test_evaluate_checkpoint_last_measures_last_pt(tiny_config, tmp_path, capsys, monkeypatch):
    """A run whose second epoch scored worse keeps epoch 1 in best.pt and epoch 2 in last.pt."""
    real = training.evaluate_elbo
    epochs = []

    def worse_after_the_first(model, images, seed, **labels):
        totals = real(model, images, seed, **labels)
        totals.sums = totals.sums * (1 + len(epochs))
        epochs.append(1)
        return totals

    monkeypatch.setattr(training, "evaluate_elbo", worse_after_the_first)
    run = train(tiny_config.replace(epochs=2, limit_train=128, limit_val=64), tmp_path / "run")
    seen = spy_on_evaluation(monkeypatch)
    assert sha256(run / "best.pt") != sha256(run / "last.pt")
    for checkpoint, epoch in (("last", 2), ("best", 1)):
        code, out, err = cli(capsys, "evaluate", run, "--checkpoint", checkpoint, "--iw-samples",
                             2, "--limit", 20, "--quiet")
        assert code == 0, err
        assert f"{checkpoint}.pt (epoch {epoch})" in out
        result = json.loads((run / "eval.json").read_text())
        assert (result["checkpoint"], result["epoch"]) == (checkpoint, epoch)
        assert result["checkpoint_sha256"] == sha256(run / f"{checkpoint}.pt")
        weights = torch.load(run / f"{checkpoint}.pt", weights_only=True)["model"]
        assert all(torch.equal(weights[name], value) for name, value in seen[-1][0].items())


def test_evaluate_split_train_writes_eval_train_json(tiny_config, tmp_path, capsys,
                                                    monkeypatch):
    run = train(tiny_config.replace(limit_train=128, limit_val=64), tmp_path / "run")
    seen = spy_on_evaluation(monkeypatch)
    code, out, err = cli(capsys, "evaluate", run, "--split", "train", "--iw-samples", 2,
                         "--limit", 30, "--quiet")
    assert code == 0, err
    assert out.startswith("30 train images") and out.strip().endswith(
        f"written to {run / 'eval-train.json'}")
    result = json.loads((run / "eval-train.json").read_text())
    assert result["split"] == "train" and result["images"] == 30
    assert not (run / "eval.json").exists()
    expected = load_split("mnist", "train", tiny_config.data_dir, limit=30).images
    assert torch.equal(seen[0][1], expected)




@pytest.mark.mutation
def test_write_evaluation_defaults_to_seed_0_and_shows_progress_when_asked(
        data_dir, tmp_path, capsys, monkeypatch):
    """The default seed is 0 (a model whose q(z|x) is not p(z): the seed shows); the bar
    appears when asked, or by default on a terminal, never when told not to."""
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", data_dir=str(data_dir), latent_dim=3)

    def nll(**options):
        return write_evaluation(str(run), samples=3, limit=4, **options)[0]["nll"]

    assert nll(progress=False) == nll(seed=0, progress=False) != nll(seed=1, progress=False)

    def bar_shown() -> bool:  # tqdm's bar, not a log line
        return "%|" in capsys.readouterr().err

    assert not bar_shown()
    nll(progress=True)
    assert bar_shown()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: shown by default
    nll()
    assert bar_shown()
    nll(progress=False)
    assert not bar_shown()


@pytest.mark.mutation
def test_write_evaluation_reads_an_own_folder_from_where_it_lies_now(tmp_path):
    """A run on a folder of images that has since moved: --data says where."""
    from PIL import Image

    from vaelab.evaluate import write_evaluation

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(8):
        Image.fromarray((torch.arange(784) % (i + 2) * 30).byte().view(28, 28).numpy()).save(
            folder / f"{i}.png")
    run = untrained_run(tmp_path / "run", True, data=str(folder), latent_dim=2,
                        val_fraction=0.5, channels=1, height=28, width=28)
    folder.rename(tmp_path / "moved")
    result, _ = write_evaluation(str(run), samples=2, data=str(tmp_path / "moved"),
                                 progress=False)
    assert result["images"] == 4 and result["dataset"] == str(folder)


@pytest.mark.mutation
def test_write_evaluation_of_a_conditional_run_gives_each_image_its_label(data_dir, tmp_path):
    from vaelab.evaluate import write_evaluation

    run = untrained_run(tmp_path / "run", data_dir=str(data_dir), latent_dim=2,
                        conditional=True, classes=10)
    result, _ = write_evaluation(str(run), samples=2, limit=3, progress=False)
    assert result["conditional"] is True and result["images"] == 3
