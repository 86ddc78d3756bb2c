"""report.html: self-contained, opened in headless Chromium, every image loaded."""

import re

from vaelab.cli import main
from vaelab.report import write_report


def test_report_is_self_contained_and_renders_in_chromium(trained_run, browser):
    report = write_report(trained_run)
    assert report == trained_run / "report.html"
    html = report.read_text()
    assert not re.search(r"src=['\"](?!data:)", html)  # nothing loaded from elsewhere
    for heading in ("Against the seed", "Per epoch", "Config"):
        assert heading in html
    page = browser.new_page()
    page.goto(report.as_uri())
    widths = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
    page.close()
    assert len(widths) == 5 and all(w > 0 for w in widths), widths


def test_train_writes_the_report_and_prints_its_path(capsys, tiny_config, tmp_path):
    code = main(["train", "--out", str(tmp_path / "run"), "--data-dir", tiny_config.data_dir,
                 "--limit-train", "256", "--limit-val", "128", "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.strip().splitlines()[-1] == f"report: {tmp_path / 'run' / 'report.html'}"
    assert (tmp_path / "run" / "figures" / "samples.png").is_file()
