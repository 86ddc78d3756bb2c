"""`vaelab compare`: one self-contained page for runs of different families and data, opened
in headless Chromium; what cannot be compared is said on the page; bad input is one line and
writes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import cli

from vaelab import Config, load_run, train
from vaelab.compare import compare_runs


def opened(browser, page_file: Path) -> tuple[list[int], str, list[list[str]]]:
    """The page in Chromium: each image's natural width (0 if it did not load), the text,
    and each table's cells row by row."""
    page = browser.new_page()
    page.goto(page_file.as_uri())
    widths = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
    text = page.inner_text("body")
    tables = page.evaluate("Array.from(document.querySelectorAll('table')).map(t => "
                           "Array.from(t.rows).map(r => Array.from(r.cells).map(c => "
                           "c.innerText.trim())))")
    page.close()
    return widths, text, tables


def test_two_families_side_by_side_in_chromium(trained_run, small_hvae_run, browser,
                                               tmp_path):
    page_file = compare_runs([str(trained_run), str(small_hvae_run)], tmp_path / "page.html")
    html = page_file.read_text()
    assert not re.search(r"src=['\"](?!data:)", html)  # self-contained
    widths, text, (who, differ, metrics) = opened(browser, page_file)
    # curves; the same validation images through both; the priors differ: one draw each
    assert len(widths) == 4 and all(width > 0 for width in widths), widths
    assert [row[:3] for row in who[1:]] == [["A", str(trained_run), "vae"],
                                            ["B", str(small_hvae_run), "hvae"]]
    assert ["model", "vae", "hvae"] in differ
    vae, hvae = load_run(trained_run), load_run(small_hvae_run)
    assert metrics[1][2] == f"{vae.metrics[-1]['val_loss']:.2f}"
    assert metrics[2][2] == f"{hvae.metrics[-1]['val_loss']:.2f}"
    assert "kl_1" in metrics[2][6] and metrics[1][6] == "—"  # the terms only hvae names
    noise = hvae.model.noise_size
    assert f"The priors take noise of different sizes (A: 20, B: {noise} numbers per sample)" \
        in text
    assert "different data" not in text


def test_runs_that_share_a_prior_decode_the_same_noise(trained_run, conditional_run,
                                                       browser, tmp_path):
    page_file = compare_runs([str(trained_run), str(conditional_run)], tmp_path / "page.html")
    widths, text, _ = opened(browser, page_file)
    assert len(widths) == 3 and all(width > 0 for width in widths)  # one samples grid
    assert "The same prior noise decoded by each run" in text


def test_runs_on_different_data_are_shown_each_on_its_own(trained_run, data_dir, browser,
                                                         tmp_path):
    small = train(Config(data_dir=str(data_dir), image_size=16, limit_train=128, limit_val=64,
                         epochs=1, device="cpu"), tmp_path / "small", progress=False)
    page_file = compare_runs([str(trained_run), str(small)], tmp_path / "page.html")
    widths, text, _ = opened(browser, page_file)
    # curves, two reconstruction figures and two sample figures
    assert len(widths) == 5 and all(width > 0 for width in widths)
    assert "These runs trained on different data" in text
    assert "The runs hold different validation images" in text
    assert "The runs' images differ in shape (A: 1x28x28, B: 1x16x16)" in text


def test_the_default_page_is_compare_html_here(capsys, trained_run, small_hvae_run, tmp_path,
                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "compare", trained_run, small_hvae_run)
    assert code == 0, err
    assert out == "comparison: compare.html\n" and (tmp_path / "compare.html").is_file()


@pytest.mark.parametrize("runs, message", [
    (lambda run, tmp: [run], "at least two runs"),
    (lambda run, tmp: [run, tmp / "missing"], "no run directory"),
    (lambda run, tmp: [run, tmp], "no checkpoint"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, trained_run, tmp_path, runs,
                                                  message):
    (tmp_path / "notes.txt").write_text("not a run")
    code, out, err = cli(capsys, "compare", *runs(trained_run, tmp_path), "--out",
                         tmp_path / "page.html")
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err, err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
