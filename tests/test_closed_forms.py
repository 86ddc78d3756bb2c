"""The estimators against log p(x) in closed form (tests/closed_form.py): the importance-weighted
estimate at any K, the ELBO, the quadrature over z and the evaluation summary must all give the
number computed from the pixels alone, to float precision."""

import math

import pytest
import torch
from closed_form import (
    QUADRATURE_ERROR,
    closed_form_log_px,
    closed_form_model,
    float32_tolerance,
    use_small_grids,
)

from vaelab.data import load_split, to_float
from vaelab.errors import VaelabError
from vaelab.evaluate import evaluate_elbo, evaluate_run, log_likelihood_iw
from vaelab.quadrature import compare_with_estimate, log_marginal

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant

@pytest.fixture(autouse=True)
def small_grids(monkeypatch):
    use_small_grids(monkeypatch)


@pytest.fixture(scope="module")
def images(data_dir):
    return load_split("mnist", "val", data_dir, limit=6).images


def test_the_reference_is_what_the_pixels_say(images):
    """The closed form itself, checked on a 2-pixel image by hand: x = (1, 0) with
    p = sigmoid(a) gives log p + log(1 - p)."""
    two = torch.tensor([[[[255, 0]]]], dtype=torch.uint8)
    p = 1 / (1 + math.exp(1.25))
    assert closed_form_log_px(two) == pytest.approx([math.log(p) + math.log(1 - p)],
                                                    rel=1e-15)
    assert len(set(closed_form_log_px(images))) == len(images)  # images tell apart


@pytest.mark.parametrize("samples", [1, 7, 50])
def test_the_iw_estimate_is_log_px_at_any_k(images, samples):
    estimates = log_likelihood_iw(closed_form_model(3), images, samples, seed=samples)
    tolerance = float32_tolerance(images)
    for got, exact in zip(estimates["log_px"].tolist(), closed_form_log_px(images)):
        assert abs(got - exact) <= tolerance
    for got, exact in zip(estimates["recon"].tolist(), closed_form_log_px(images)):
        assert abs(got + exact) <= tolerance
    assert estimates["kl"].abs().max().item() == 0  # q = p(z) exactly
    # equal weights: the effective sample size is K, to float64 rounding of log-sums
    assert estimates["ess"].sub(samples).abs().max().item() <= \
        samples * 8 * torch.finfo(torch.float64).eps * 1e3
    assert estimates["mu"].abs().max().item() == 0


def test_the_elbo_is_log_px(images):
    totals = evaluate_elbo(closed_form_model(4), images, seed=0, batch_size=4)
    loss, recon, kl = totals.sums.tolist()
    exact = -sum(closed_form_log_px(images))
    tolerance = len(images) * float32_tolerance(images)
    assert totals.images == len(images) and kl == 0
    assert abs(loss - exact) <= tolerance and abs(recon - exact) <= tolerance


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_the_quadrature_is_log_px(images, latent_dim):
    model = closed_form_model(latent_dim)
    tolerance = float32_tolerance(images) + QUADRATURE_ERROR
    chosen = images[:2]
    for image, exact in zip(chosen, closed_form_log_px(chosen)):
        x = to_float(image[None])
        mu, logvar = (t[0] for t in model.encode(x))
        assert abs(log_marginal(model, x, mu, logvar) - exact) <= tolerance


def test_the_exact_comparison_finds_no_gap_and_the_summary_is_the_closed_form(images):
    model = closed_form_model(1)
    exact = torch.tensor(closed_form_log_px(images[:3]), dtype=torch.float64)
    tolerance = float32_tolerance(images) + QUADRATURE_ERROR
    compared = compare_with_estimate(model, images[:3], exact)
    assert abs(compared["exact_nll"] + exact.mean().item()) <= tolerance
    assert abs(compared["exact_nll_stderr"] - exact.std().item() / math.sqrt(3)) <= 2 * tolerance
    for key in ("exact_gap_mean", "exact_gap_median", "exact_gap_worst"):
        assert abs(compared[key]) <= tolerance, key
    assert compared["exact_share_off"] == 0 and 0 <= compared["exact_gap_worst_image"] < 3
    off = compare_with_estimate(model, images[:3], exact - torch.tensor([0.0, 0.2, 0.06]))
    assert off["exact_share_off"] == pytest.approx(2 / 3) and off["exact_gap_worst_image"] == 1
    assert off["exact_gap_worst"] == pytest.approx(0.2, abs=tolerance)
    assert off["exact_gap_median"] == pytest.approx(0.06, abs=tolerance)


def test_evaluate_run_reports_the_closed_form(images):
    images = images[:3]
    result = evaluate_run(closed_form_model(1), images, samples=5, seed=3, exact=True)
    exact = torch.tensor(closed_form_log_px(images), dtype=torch.float64)
    tolerance = float32_tolerance(images) + QUADRATURE_ERROR
    bits = 784 * math.log(2)
    expected = {"nll": -exact.mean().item(), "neg_elbo": -exact.mean().item(),
                "recon": -exact.mean().item(), "exact_nll": -exact.mean().item(),
                "nll_bits_per_dim": -exact.mean().item() / bits,
                "nll_stderr": exact.std().item() / math.sqrt(len(exact)),
                "neg_elbo_stderr": exact.std().item() / math.sqrt(len(exact)),
                "exact_gap_mean": 0.0, "kl": 0.0}
    for key, value in expected.items():
        assert abs(result[key] - value) <= 2 * tolerance, key
    assert (result["images"], result["iw_samples"], result["active_units"],
            result["latent_dim"], result["conditional"]) == (3, 5, 0, 1, False)
    assert result["effective_samples_median"] == pytest.approx(5, rel=1e-12)


def test_a_conditional_exact_comparison_takes_each_images_label_quietly(images, capsys):
    """Each image is integrated with its own label; two images give a standard error, one
    gives none (NaN); no progress bar unless asked."""
    model = closed_form_model(1, classes=10)
    exact = torch.tensor(closed_form_log_px(images[:2]), dtype=torch.float64)
    tolerance = float32_tolerance(images) + QUADRATURE_ERROR
    both = compare_with_estimate(model, images[:2], exact, labels=torch.tensor([7, 2]))
    assert abs(both["exact_nll"] + exact.mean().item()) <= tolerance
    assert abs(both["exact_nll_stderr"] - exact.std().item() / math.sqrt(2)) <= 2 * tolerance
    one = compare_with_estimate(model, images[:1], exact[:1], labels=torch.tensor([7]))
    assert math.isnan(one["exact_nll_stderr"]) and one["exact_gap_worst_image"] == 0
    assert "%|" not in capsys.readouterr().err  # no bar: progress is off by default
    compare_with_estimate(model, images[:1], exact[:1], progress=True, labels=torch.tensor([7]))
    bar = capsys.readouterr().err  # counts images, and is wiped when done (leaves no line)
    assert "0/1 [" in bar and "image/s" in bar
    assert bar.split("\r")[-2].strip() == "" and bar.endswith("\r")  # blanked, no newline


def test_exact_is_refused_word_for_word_where_no_grid_can_integrate():
    from vaelab import Config
    from vaelab.models import build_model
    from vaelab.quadrature import check_exact_possible

    with pytest.raises(VaelabError) as three:
        check_exact_possible(closed_form_model(3))
    assert str(three.value) == (
        "--exact integrates over z on a grid, which is possible for latent sizes 1 and 2; "
        "this run has 3. Drop --exact (the importance-weighted estimate is the measure for "
        "larger sizes)")
    hvae = build_model(Config(model="hvae", hvae_channels=8, channels=1, height=28, width=28))
    with pytest.raises(VaelabError) as groups:
        check_exact_possible(hvae)
    assert str(groups.value) == (
        f"--exact integrates over z on a grid, which needs a single latent of size 1 or 2; "
        f"this {hvae.summary} has {len(hvae.group_sizes)} latent groups of {hvae.noise_size} "
        "units in all. Drop --exact (the importance-weighted estimate is the measure here)")


# ---- the quadrature's own steps, on an integrand known in closed form -------------------------

def gaussian_bump(monkeypatch, centre: float, sd: float, log_mass: float, label: int = 4):
    """Stand in for log p(x|z, y) + log p(z) with log_mass + log N(z; centre, sd^2) on every
    axis: its integral over z is exp(log_mass), and all of its mass lies within a known box.
    The label must reach it, as a conditional model's would."""
    import vaelab.quadrature as quadrature

    def log_joint(model, x, z, y=None):
        assert y is not None and y.tolist() == [label], "the label did not reach log_joint"
        per_axis = -0.5 * ((z - centre) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))
        return log_mass + per_axis.sum(1)

    monkeypatch.setattr(quadrature, "log_joint", log_joint)
    return torch.tensor([label])


@pytest.mark.parametrize("dim", [1, 2])
def test_the_box_holds_the_mass_padded_by_two_coarse_cells_and_q_within_6_sd(monkeypatch, dim):
    """The mass (within MASS_WINDOW nats of the peak, which lies on a coarse point) of
    N(0, 0.1^2) reaches 0.1 sqrt(2 MASS_WINDOW) from 0; the box ends at the last coarse point
    inside, plus two cells: between one and two cells beyond that reach. q(z|x)'s mean +- 6 sd
    widens it, and the prior's box [-RADIUS, RADIUS] bounds it."""
    import vaelab.quadrature as quadrature

    y = gaussian_bump(monkeypatch, 0.0, 0.1, -50.0)
    cell = 2 * quadrature.RADIUS / (quadrature.COARSE_POINTS[dim] - 1)
    reach = 0.1 * math.sqrt(2 * quadrature.MASS_WINDOW)
    narrow_q = (torch.zeros(dim), torch.full((dim,), 2 * math.log(0.01)))  # inside the mass
    lows, highs = quadrature.integration_box(None, None, *narrow_q, y)
    # The peak (0) is a coarse point, so the last one inside the mass is a whole number of
    # cells out (reach is 77.5 cells in 1-D, 5.8 in 2-D: far from a cell's edge). The box ends
    # two cells beyond it, to float64 rounding (1e-12 on numbers below 1).
    last_inside = math.floor(reach / cell) * cell
    for low, high in zip(lows.tolist(), highs.tolist()):
        assert low == pytest.approx(-last_inside - 2 * cell, abs=1e-12)
        assert high == pytest.approx(last_inside + 2 * cell, abs=1e-12)
    sd_half = torch.full((dim,), 2 * math.log(0.5), dtype=torch.float64)
    lows, highs = quadrature.integration_box(None, None, torch.full((dim,), -1.0), sd_half, y)
    assert lows.tolist() == pytest.approx([-1.0 - 6 * 0.5] * dim, abs=1e-12)
    assert highs.tolist() == pytest.approx([-1.0 + 6 * 0.5] * dim, abs=1e-12)
    beyond_q = (torch.full((dim,), 5.0), torch.full((dim,), 2 * math.log(2.0)))  # to 17
    assert quadrature.integration_box(None, None, *beyond_q, y)[1].tolist() == \
        [quadrature.RADIUS] * dim


@pytest.mark.parametrize("dim", [1, 2])
def test_the_quadrature_integrates_a_narrow_bump_to_its_mass(monkeypatch, dim):
    """Its integral is exp(-50) whatever the width: the grid's error on a Gaussian is far
    below TOLERANCE once refinement stops (see closed_form.py), so within 2 TOLERANCE."""
    import vaelab.quadrature as quadrature

    y = gaussian_bump(monkeypatch, 1.0, 0.05, -50.0)
    mu, logvar = torch.ones(dim), torch.full((dim,), 2 * math.log(0.05))
    estimate = quadrature.log_marginal(None, None, mu, logvar, y)
    assert abs(estimate + 50.0) <= 2 * quadrature.TOLERANCE


def test_a_bump_too_narrow_for_the_finest_grid_is_refused_at_that_grid(monkeypatch):
    """Grids of 5, 9, 17 and 33 points (each doubling the last's resolution: 2n - 1) over a
    box 200 times the bump's width never settle, and the refusal names the last grid."""
    import vaelab.quadrature as quadrature

    y = gaussian_bump(monkeypatch, 0.0, 1e-4, -50.0)
    monkeypatch.setattr(quadrature, "FINE_POINTS", {1: (5, 33)})
    monkeypatch.setattr(quadrature, "integration_box",
                        lambda *args: (torch.tensor([-0.01]), torch.tensor([0.01])))
    with pytest.raises(VaelabError) as caught:
        quadrature.log_marginal(None, None, torch.zeros(1), torch.zeros(1), y)
    assert str(caught.value) == (
        f"the quadrature did not settle within {quadrature.TOLERANCE} nats at 33 points per "
        "axis; the posterior is too narrow for --exact")


def test_evaluate_run_of_a_conditional_model_with_exact_takes_the_labels(images):
    from vaelab.evaluate import evaluate_run

    chosen = images[:2]
    exact = torch.tensor(closed_form_log_px(chosen), dtype=torch.float64)
    tolerance = float32_tolerance(images) + QUADRATURE_ERROR
    result = evaluate_run(closed_form_model(1, classes=10), chosen, samples=3, seed=1,
                          exact=True, labels=torch.tensor([3, 8]))
    assert result["conditional"] is True
    for key in ("nll", "exact_nll"):
        assert abs(result[key] + exact.mean().item()) <= 2 * tolerance, key


def test_evaluate_run_shows_the_quadratures_progress_only_when_asked(images, monkeypatch):
    import tqdm.auto  # the quadrature imports its tqdm when called; evaluate.py has its own

    shown, real_tqdm = [], tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *args, **kwargs:
                        shown.append(not kwargs["disable"]) or real_tqdm(*args, **kwargs))
    for progress in (True, False):
        evaluate_run(closed_form_model(1), images[:1], samples=2, exact=True, progress=progress)
    assert shown == [True, False]


def test_the_iw_estimate_is_log_px_when_samples_come_in_several_chunks(images, monkeypatch):
    """7 samples decoded 3 at a time (chunks of 3, 3 and 1): every per-image figure still
    averages over all 7."""
    import vaelab.evaluate

    monkeypatch.setattr(vaelab.evaluate, "DECODES_PER_PASS", 3)
    estimates = log_likelihood_iw(closed_form_model(2), images[:2], 7, seed=0)
    tolerance = float32_tolerance(images)
    for key, sign in (("log_px", 1), ("recon", -1)):
        for got, exact in zip(estimates[key].tolist(), closed_form_log_px(images[:2])):
            assert abs(got - sign * exact) <= tolerance, key
    assert estimates["ess"].tolist() == pytest.approx([7.0, 7.0], rel=1e-12)
