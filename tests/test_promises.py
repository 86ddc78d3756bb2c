"""What a new user meets first: help at once, one-line failures, and nothing written where it
should not be (issue: "Keep every promise to a new user")."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli

from vaelab import train
from vaelab.cli import build_parser, log_to_stderr
from vaelab.generate import pick_pairs
from vaelab.runs import PRIOR, RUN_FILES

HOOK = Path(__file__).with_name("signal_hook.py")
COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)
RUN_COMMANDS = [c for c in COMMANDS if c != "train"]  # those that take a RUN




def one_line_error(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- help ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_renders(capsys, command):
    """argparse %-formats help strings when it renders them, so a stray % breaks only then."""
    code, out, err = cli(capsys, *([command] if command else []), "--help")
    assert code == 0 and err == "" and out.startswith("usage: vaelab")


HEAVY = ("torch", "torchvision", "matplotlib")
PROBE = """
import sys
from vaelab.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted({name.split(".")[0] for name in sys.modules} & set(%r)))
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["sample", "--help"],
                                  ["evaluate", "--help"], ["train", "--batch-size", "many"],
                                  ["interpolate"], ["no-such-command"]])
def test_help_and_argument_errors_import_no_torch(args):
    result = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


# ---- --force and the evaluation shown in the report ------------------------------------

def test_force_removes_every_file_of_the_previous_run(capsys, tiny_config, tmp_path):
    """The exact sequence of the issue: evaluate, then train --force with another latent size;
    the new run's report must not show the old run's evaluation."""
    run = tmp_path / "run"
    quick = ["--data-dir", tiny_config.data_dir, "--limit-train", "256", "--limit-val", "128",
             "--device", "cpu", "--quiet"]
    assert cli(capsys, "train", "--out", run, *quick)[0] == 0
    assert cli(capsys, "evaluate", run, "--iw-samples", 2, "--limit", 10, "--quiet")[0] == 0
    assert cli(capsys, "evaluate", run, "--iw-samples", 2, "--limit", 10, "--split", "train",
               "--quiet")[0] == 0
    # every file a run of the vae writes (prior.pt is a discrete autoencoder's)
    assert {p.name for p in run.iterdir()} >= set(RUN_FILES) - {PRIOR} | {"figures"}
    code, _, err = cli(capsys, "train", "--out", run, "--force", "--latent-dim", 2,
                       "--epochs", 1, *quick)
    assert code == 0, err
    assert not (run / "eval.json").exists() and not (run / "eval-train.json").exists()
    assert "Evaluation" not in (run / "report.html").read_text()


def test_the_report_shows_an_evaluation_only_of_the_checkpoint_it_measured(
        capsys, tiny_config, tmp_path):
    run = train(tiny_config, tmp_path / "run")
    assert cli(capsys, "evaluate", run, "--iw-samples", 3, "--limit", 20, "--quiet")[0] == 0
    result = json.loads((run / "eval.json").read_text())
    assert cli(capsys, "report", run)[0] == 0
    html = (run / "report.html").read_text()
    assert "20 test images" in html and "K = 3 importance samples" in html
    assert f"{result['nll']:.2f}" in html and f"{result['nll_stderr']:.2f}" in html
    assert "nll 9" not in html  # no raw dump of eval.json's fields
    from vaelab import resume
    resume(run, epochs=2)  # best.pt changes: eval.json now describes another checkpoint
    assert cli(capsys, "report", run)[0] == 0
    html = (run / "report.html").read_text()
    assert "measured a checkpoint this run no longer has" in html
    assert f"{result['nll']:.2f}" not in html


def test_report_out_writes_everything_there_and_nothing_into_the_run(capsys, trained_run,
                                                                     tmp_path):
    before = snapshot(trained_run)
    code, out, err = cli(capsys, "report", trained_run, "--out", tmp_path / "elsewhere")
    assert code == 0, err
    assert out.strip() == f"report: {tmp_path / 'elsewhere' / 'report.html'}"
    assert (tmp_path / "elsewhere" / "report.html").is_file()
    assert (tmp_path / "elsewhere" / "samples.png").is_file()
    assert snapshot(trained_run) == before


# ---- one-line failures -----------------------------------------------------------------

@pytest.mark.parametrize("device", ["gpu", "xpu", "cuda:x"])
@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_device_is_one_line_in_every_command(capsys, trained_run, tmp_path, command,
                                                        device):
    where = {"train": ["--out", tmp_path / "new"], "export": [trained_run, tmp_path / "new"]
             }.get(command, [trained_run])
    code, _, err = cli(capsys, command, *where, "--device", device)
    assert code == 1
    one_line_error(err, repr(device), "--device")
    assert not (tmp_path / "new").exists()


def hooked(target, action, *args, timeout=120):
    """`vaelab ARGS` in a real process that sends itself ACTION at the first call of TARGET."""
    return subprocess.run([sys.executable, str(HOOK), target, "1", action, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_ctrl_c_in_evaluate_is_one_line_and_writes_nothing(trained_run):
    before = snapshot(trained_run)
    result = hooked("vaelab.evaluate:log_likelihood_iw", "INT", "evaluate", trained_run,
                    "--limit", 10, "--quiet")
    assert result.returncode == 130
    lines = [line for line in result.stderr.splitlines() if "vaelab: evaluating" not in line]
    one_line_error("\n".join(lines), "evaluate interrupted")
    assert snapshot(trained_run) == before


def test_ctrl_c_while_explore_starts_is_one_line(trained_run):
    pytest.importorskip("gradio")
    result = hooked("vaelab.explore:Explorer.__init__", "INT", "explore", trained_run,
                    "--port", 0)
    assert result.returncode == 130
    lines = [line for line in result.stderr.splitlines() if "encoding the validation" not in line]
    one_line_error("\n".join(lines), "explore interrupted")


def test_a_failed_download_for_a_figure_leaves_the_data_folder_empty(capsys, trained_run,
                                                                    tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_MIRRORS", "http://127.0.0.1:9/")  # nothing listens on port 9
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "reconstruct", trained_run, "--data-dir", empty)
    assert code == 1
    one_line_error(err, "t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]")
    assert "train-images" not in err  # a figure needs only the test files
    assert list(empty.iterdir()) == []


def test_a_refused_resume_prints_nothing_first(capsys, tiny_config, tmp_path):
    run = train(tiny_config, tmp_path / "run")
    code, out, err = cli(capsys, "train", "--resume", run, "--lr", "0.1")
    assert code == 1 and out == ""
    one_line_error(err, "cannot change lr")
    code, out, err = cli(capsys, "train", "--resume", run, "--recipe", "fast")
    assert code == 1 and out == ""
    one_line_error(err, "--recipe is for new runs")


def test_third_party_loggers_stay_quiet(capsys):
    log_to_stderr()
    logging.getLogger("httpx").info('HTTP Request: GET http://127.0.0.1 "HTTP/1.1 200 OK"')
    logging.getLogger("vaelab.idx").info("downloaded a file")
    err = capsys.readouterr().err
    assert err == "vaelab: downloaded a file\n"


def test_slow_steps_say_so_first(caplog):
    import torch

    from vaelab.generate import project_2d
    pytest.importorskip("sklearn")
    with caplog.at_level(logging.INFO, logger="vaelab"):
        project_2d(torch.randn(60, 3, generator=torch.Generator().manual_seed(0)), "tsne")
    assert "t-SNE of 60 codes" in caplog.text


def test_evaluate_says_what_it_is_about_to_do(capsys, trained_run):
    code, _, err = cli(capsys, "evaluate", trained_run, "--iw-samples", 4, "--limit", 7,
                       "--quiet")
    assert code == 0 and "vaelab: evaluating 7 images with K=4" in err


def test_interpolating_a_class_with_itself_pairs_different_images(trained_run, data_dir):
    from vaelab.data import load_split
    val = load_split("mnist", "val", data_dir, limit=500)
    pairs = pick_pairs(val, 6, 6, 4)
    assert len(pairs) == 4 and all(i != j for i, j in pairs)
    assert all(val.labels[i] == val.labels[j] == 6 for i, j in pairs)
    assert len({index for pair in pairs for index in pair}) == 8
