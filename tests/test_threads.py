"""The training threads: chosen once (measured, or as given), recorded, and never a change in
what a seeded run computes beyond the order of float additions; the probe draws nothing."""

import logging
import os
import random
import time

import numpy as np
import pytest
import torch
from helpers import cli
from test_train import without_timings

import vaelab.threads as threads
from vaelab import load_run, resume, train
from vaelab.checkpoint import load_checkpoint
from vaelab.config import Config
from vaelab.data import load_data, with_data_shape
from vaelab.errors import ConfigError
from vaelab.training_state import TrainingState


@pytest.fixture()
def unset_launch(monkeypatch):
    """As a plain `vaelab train` on a machine of at least 2 cores: no torchrun, no
    OMP_NUM_THREADS (make targets set it), so that the probe runs."""
    for name in ("OMP_NUM_THREADS", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    cores = threads.usable_cores()
    monkeypatch.setattr(threads, "usable_cores", lambda: max(2, cores))
    return max(2, cores)


# ---- the decision -------------------------------------------------------------------------

def slow_at(slow_count: int, seconds: float):
    """A step that takes `seconds` when torch runs `slow_count` threads, almost nothing else:
    what a busy core does to a parallel region."""
    def step():
        time.sleep(seconds if torch.get_num_threads() == slow_count else 0.0005)
    return step


@pytest.mark.parametrize("slow", ["all", "one"])
def test_the_faster_count_is_kept(unset_launch, caplog, slow):
    cores = unset_launch
    slow_count = cores if slow == "all" else 1
    before = torch.get_num_threads()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        choice = threads.choose(None, torch.device("cpu"), lambda: slow_at(slow_count, 0.02))
    assert choice.threads == (1 if slow == "all" else cores) and choice.reason == "measured"
    assert set(choice.seconds_per_step) == {1, cores}
    assert choice.seconds_per_step[slow_count] >= 0.02
    assert torch.get_num_threads() == before  # measuring does not apply it
    assert caplog.text.count("training with") == 1  # said once


def test_a_slow_count_is_not_timed_for_long(unset_launch):
    """A count whose steps take seconds (a busy core under all-core training) gets its
    warm-up and one timed step, not three."""
    calls = {1: 0, unset_launch: 0}

    def step():
        calls[torch.get_num_threads()] += 1
        time.sleep(threads.STEP_BUDGET_SECONDS if torch.get_num_threads() > 1 else 0)

    threads.choose(None, torch.device("cpu"), lambda: step)
    assert calls == {1: 1 + threads.TIMED_STEPS, unset_launch: 2}


def test_what_is_given_is_kept_and_nothing_is_measured(unset_launch, monkeypatch):
    def no_probe():
        raise AssertionError("measured although the count was given")

    cpu = torch.device("cpu")
    assert threads.choose(3, cpu, no_probe) == threads.ThreadChoice(3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose(None, cpu, no_probe).reason == "OMP_NUM_THREADS"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert threads.choose(None, cpu, no_probe) == threads.ThreadChoice(
        torch.get_num_threads(), "torchrun")  # torchrun's one thread per process, untouched
    monkeypatch.delenv("RANK")
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    assert threads.choose(None, cpu, no_probe) == threads.ThreadChoice(1, "one usable core")


@pytest.mark.parametrize("files, cores", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads can use them
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({}, None),
])
def test_a_cgroup_quota_caps_the_usable_cores(tmp_path, files, cores):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert threads.usable_cores(tmp_path) == min(affinity, cores or affinity)


def test_threads_is_validated_and_a_flag():
    with pytest.raises(ConfigError, match=r"threads = 0 .*--threads.*at least 1"):
        Config(threads=0)
    assert Config(threads=2).threads == 2 and Config().threads is None


def test_a_bad_threads_flag_is_one_line(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--out", tmp_path / "run", "--threads", "0")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--threads" in err
    assert not (tmp_path / "run").exists()


# ---- the probe draws nothing and changes nothing ------------------------------------------

def rng_states(state):
    return (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state(),
            state.shuffle.get_state(), state.noise.get_state(), state.binarizer.get_state())


@pytest.mark.parametrize("changes", [{}, {"binarize": "dynamic", "iw_train": 3},
                                     {"conditional": True}])
def test_the_probe_draws_no_random_number_and_leaves_the_model(tiny_config, changes):
    config = tiny_config.replace(**changes)
    train_split, _ = load_data(config)
    config = with_data_shape(config, train_split)
    state = TrainingState.fresh(config, torch.device("cpu"))
    before = rng_states(state)
    weights = {name: p.detach().clone() for name, p in state.model.named_parameters()}
    labels = train_split.labels if config.conditional else None
    step = threads.probe_step(state, train_split.images, labels)
    for _ in range(3):
        step()
    after = rng_states(state)
    assert before[:2] == after[:2]
    assert all(torch.equal(a, b) for a, b in zip(before[2:], after[2:]))
    assert all(torch.equal(p, weights[name]) and p.grad is None
               for name, p in state.model.named_parameters())


def history(run) -> list[dict]:
    """The epochs' rows as the checkpoint keeps them, the thread count with them."""
    return load_checkpoint(run / "last.pt")["history"]


def test_a_measured_run_equals_the_run_given_its_choice(unset_launch, tiny_config, tmp_path,
                                                        caplog):
    """The probe's choice is recorded per epoch; a run given that count with --threads is
    the same run, number for number (same CPU, same count: the same float additions)."""
    config = tiny_config.replace(epochs=2)
    with caplog.at_level(logging.INFO, logger="vaelab"):
        measured = load_run(train(config, tmp_path / "measured"), "last")
    chosen = {row["threads"] for row in history(measured.path)}
    assert len(chosen) == 1 and "training with" in caplog.text
    given = load_run(train(config.replace(threads=chosen.pop()), tmp_path / "given"), "last")
    assert without_timings(measured.metrics) == without_timings(given.metrics)
    for (name, a), b in zip(measured.model.state_dict().items(),
                            given.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_training_leaves_torchs_thread_count_as_it_found_it(unset_launch, tiny_config,
                                                            tmp_path):
    before = torch.get_num_threads()
    train(tiny_config.replace(threads=1 if before > 1 else 2), tmp_path / "run")
    assert torch.get_num_threads() == before


def test_the_cli_leaves_torchs_thread_count_as_it_found_it(capsys, tiny_config, tmp_path):
    """`vaelab train` draws its report with the threads training used, then puts torch's own
    count back: main may run inside a longer program (as in these tests)."""
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    code, _, err = cli(capsys, "train", "--out", tmp_path / "run", "--threads", other,
                       "--data-dir", tiny_config.data_dir, "--limit-train", 256,
                       "--limit-val", 128, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert history(tmp_path / "run")[0]["threads"] == other
    assert torch.get_num_threads() == before


def test_resume_may_change_the_threads(tiny_config, tmp_path):
    run = train(tiny_config.replace(threads=1), tmp_path / "run")
    resume(run, epochs=2, threads=2)
    assert [row["threads"] for row in history(run)] == [1, 2]
    assert "threads" not in load_run(run).metrics[0]  # metrics.csv keeps its columns
