"""report.html: self-contained, opened in headless Chromium, every image loaded."""

import base64
import re
from html.parser import HTMLParser

from helpers import cli

from vaelab import train
from vaelab.cli import main
from vaelab.report import write_report


def test_report_is_self_contained_and_renders_in_chromium(trained_run, browser):
    report = write_report(trained_run)
    assert report == trained_run / "report.html"
    html = report.read_text()
    assert not re.search(r"src=['\"](?!data:)", html)  # nothing loaded from elsewhere
    for heading in ("Against the reference notebook", "Per epoch", "Config"):
        assert heading in html
    page = browser.new_page()
    page.goto(report.as_uri())
    widths = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
    page.close()
    # curves, reconstructions, samples, interpolation, latent, traversal, unit_kl
    assert len(widths) == 7 and all(w > 0 for w in widths), widths


def test_train_writes_the_report_and_prints_its_path(capsys, tiny_config, tmp_path):
    code = main(["train", "--out", str(tmp_path / "run"), "--data-dir", tiny_config.data_dir,
                 "--limit-train", "256", "--limit-val", "128", "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.strip().splitlines()[-1] == f"report: {tmp_path / 'run' / 'report.html'}"
    assert (tmp_path / "run" / "figures" / "samples.png").is_file()


def test_train_with_no_report_writes_none_and_the_report_command_writes_it_later(
        capsys, tiny_config, tmp_path):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--data-dir", tiny_config.data_dir, "--no-report",
                 "--limit-train", "256", "--limit-val", "128", "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1] == f"run saved in {run}"
    assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()
    assert not (run / "report.html").exists() and not (run / "figures").exists()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and (run / "figures" / "samples.png").is_file()


class Sources(HTMLParser):
    """Every <img> (alt, src), and every attribute that loads something."""

    def __init__(self):
        super().__init__()
        self.images, self.loads = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append((attrs.get("alt"), attrs.get("src")))
        self.loads += [attrs[key] for key in ("src", "href") if key in attrs]


def test_report_command_embeds_every_figure_as_a_data_uri(capsys, tiny_config, tmp_path):
    run = train(tiny_config.replace(limit_train=128, limit_val=64), tmp_path / "run")
    assert not (run / "report.html").exists()
    code, out, err = cli(capsys, "report", run)
    assert code == 0, err
    assert out == f"report: {run / 'report.html'}\n"
    page = Sources()
    page.feed((run / "report.html").read_text())
    figures = {path.stem: path for path in (run / "figures").glob("*.png")}
    assert set(figures) == {"curves", "reconstructions", "samples", "interpolation", "latent",
                            "traversal", "unit_kl"}
    assert sorted(alt for alt, _ in page.images) == sorted(figures)
    for alt, src in page.images:
        encoded = base64.b64encode(figures[alt].read_bytes()).decode()
        assert src == f"data:image/png;base64,{encoded}"
    assert len(page.loads) == len(page.images)  # nothing else is loaded
