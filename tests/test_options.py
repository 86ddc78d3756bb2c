"""Options that change what training does, each checked where it takes effect: the one-cycle
lr, bf16, torch.compile, recipes and the other datasets. (evaluate's --checkpoint and --split
are tested in test_write_evaluation.py, the report command in test_report.py.)"""

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
from helpers import cli

import vaelab.evaluate
import vaelab.training as training
import vaelab.training_state
from vaelab import VAE, Config, train
from vaelab.config import RECIPES, from_recipe
from vaelab.data import load_split
from vaelab.errors import ConfigError, DataError
from vaelab.runs import read_metrics
from vaelab.training_state import TrainingState, uses_bf16

CPU = torch.device("cpu")




def spy_on_steps(monkeypatch, record):
    """Call record(state, x) after each real training step."""
    real = training._step

    def spy(state, x, *args):
        terms = real(state, x, *args)
        record(state, x)
        return terms

    monkeypatch.setattr(training, "_step", spy)




# ---- --schedule -----------------------------------------------------------------------------

def one_cycle(peak, step, total):
    """The documented schedule, written out here: a cosine rise from peak/25 to peak over the
    first 30% of the steps, then a cosine fall towards peak/10^4 at step `total`."""
    rise = 0.3 * total
    start, end, t = (peak / 25, peak, step / rise) if step < rise else \
        (peak, peak / 1e4, (step - rise) / (total - rise))
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def lr_per_step(config, tmp_path, monkeypatch):
    used = []
    spy_on_steps(monkeypatch, lambda state, x: used.append(
        [group["lr"] for group in state.optimizer.param_groups]))
    return used, train(config, tmp_path / config.schedule)


def test_onecycle_sets_each_steps_lr_rising_then_decaying(tiny_config, tmp_path, monkeypatch):
    config = tiny_config.replace(schedule="onecycle", limit_train=320, batch_size=32, epochs=2,
                                 lr=3e-3)
    used, run = lr_per_step(config, tmp_path, monkeypatch)
    total = 2 * 320 // 32
    lrs = [groups[0] for groups in used]
    assert all(len(set(groups)) == 1 for groups in used) and len(lrs) == total
    assert lrs == [training.learning_rate(config, step, total) for step in range(total)]
    rounding = 4 * torch.finfo(torch.float64).eps
    assert lrs == pytest.approx([one_cycle(config.lr, step, total) for step in range(total)],
                                rel=rounding)
    peak = lrs.index(max(lrs))
    assert peak == 0.3 * total and lrs[peak] == pytest.approx(config.lr, rel=rounding)
    assert lrs[0] == pytest.approx(config.lr / 25, rel=rounding)
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rises
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then decays
    rows = read_metrics(run)
    assert [row["lr"] for row in rows] == [lrs[total // 2 - 1], lrs[-1]]  # each epoch's last


def test_constant_schedule_keeps_the_lr(tiny_config, tmp_path, monkeypatch):
    used, _ = lr_per_step(tiny_config.replace(lr=3e-3), tmp_path, monkeypatch)
    assert used == [[3e-3]] * (512 // 64)


# ---- --precision ----------------------------------------------------------------------------

def autocast_in_training_forwards(monkeypatch):
    """(enabled, dtype) of CPU autocast inside each training-mode forward of the VAE."""
    seen = []
    real = VAE.forward

    def forward(self, x, *args, **kwargs):
        if self.training:
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(VAE, "forward", forward)
    return seen


def test_bf16_autocasts_every_step_and_still_learns(tiny_config, tmp_path, monkeypatch):
    runs, autocast, flags = {}, {}, {}
    for precision in ("bf16", "fp32"):
        autocast[precision] = autocast_in_training_forwards(monkeypatch)
        flags[precision] = set()
        spy_on_steps(monkeypatch, lambda state, x, p=precision: flags[p].add(state.bf16))
        config = tiny_config.replace(precision=precision, epochs=2)
        runs[precision] = read_metrics(train(config, tmp_path / precision))
        monkeypatch.undo()
    steps = 2 * 512 // 64
    assert flags == {"bf16": {True}, "fp32": {False}}
    assert autocast["bf16"] == [(True, torch.bfloat16)] * steps
    assert [enabled for enabled, _ in autocast["fp32"]] == [False] * steps
    first, second = runs["bf16"]
    assert second["val_loss"] < first["val_loss"] and second["train_loss"] < first["train_loss"]
    assert first["val_loss"] != runs["fp32"][0]["val_loss"]  # bf16 really computed otherwise


@pytest.mark.parametrize("precision, native, expected", [
    ("auto", True, True), ("auto", False, False), ("bf16", False, True), ("fp32", True, False),
])
def test_precision_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch, precision, native,
                                                           expected):
    monkeypatch.setattr(vaelab.training_state, "_cpu_has_native_bf16", lambda: native)
    assert uses_bf16(precision, CPU) is expected
    assert TrainingState.fresh(Config(precision=precision, device="cpu"), CPU).bf16 is expected


@pytest.mark.parametrize("supported", [True, False])
def test_precision_auto_is_fp32_on_gpus(monkeypatch, supported):
    """bf16 measured slower for this model on an H100 (state.uses_bf16's docstring)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    monkeypatch.setattr(vaelab.training_state, "_cpu_has_native_bf16", lambda: True)
    assert uses_bf16("auto", torch.device("cuda")) is False
    assert uses_bf16("auto", torch.device("mps")) is False


# ---- --compile ------------------------------------------------------------------------------

class Network(torch.nn.Module):
    """Stands in for torch.compile(objective): the same training objective, each call
    recorded, and any training-mode call of the model that bypasses this wrapper counted."""

    def __init__(self, objective):
        super().__init__()
        self.objective, self.samples, self.inside, self.bypassed = objective, [], False, 0
        objective.model.register_forward_pre_hook(self.model_called)

    def model_called(self, module, args):
        self.bypassed += module.training and not self.inside

    def forward(self, x, noise, labels=None, kl_weight=1.0, samples=None):
        self.samples.append(samples)
        self.inside = True
        try:
            return self.objective(x, noise, labels, kl_weight, samples)
        finally:
            self.inside = False


def fake_compile(monkeypatch):
    compiled = []

    def compile(model, *args, **kwargs):
        compiled.append(Network(model))
        return compiled[-1]

    monkeypatch.setattr(vaelab.training_state.torch, "compile", compile)
    return compiled


@pytest.mark.parametrize("k", [1, 4])
def test_compile_on_trains_through_the_compiled_network(tiny_config, tmp_path, monkeypatch, k):
    """Every step, the ELBO's and the IWAE bound's alike, runs the compiled network."""
    compiled = fake_compile(monkeypatch)
    states = []
    spy_on_steps(monkeypatch, lambda state, x: states.append(state))
    train(tiny_config.replace(compile="on", iw_train=k), tmp_path / "run")
    (network,) = compiled
    assert isinstance(network.objective.model, VAE) and states[0].network is network
    assert states[0].model is network.objective.model
    assert network.samples == [None if k == 1 else k] * (512 // 64)
    assert network.bypassed == 0


@pytest.mark.parametrize("setting", ["off", "auto"])
def test_compile_off_and_auto_on_a_cpu_leave_the_model_alone(monkeypatch, setting):
    compiled = fake_compile(monkeypatch)
    state = TrainingState.fresh(Config(compile=setting, device="cpu"), CPU)
    assert compiled == [] and state.network.model is state.model  # models.Objective, bare


# ---- --recipe -------------------------------------------------------------------------------

def test_a_recipe_fills_in_what_the_user_did_not_set():
    assert from_recipe("fast") == Config(**RECIPES["fast"])
    assert from_recipe("fast") != Config() and from_recipe("reference") == from_recipe() == Config()
    mine = from_recipe("fast", lr=0.5, epochs=1, latent_dim=3)
    assert (mine.lr, mine.epochs, mine.latent_dim) == (0.5, 1, 3)
    for name, value in RECIPES["fast"].items():
        if name not in ("lr", "epochs"):
            assert getattr(mine, name) == value, name
    with pytest.raises(ConfigError, match="recipe 'slow' is unknown"):
        from_recipe("slow")


@pytest.fixture()
def quick(data_dir):
    return ["--data-dir", data_dir, "--limit-train", 128, "--limit-val", 64, "--device", "cpu",
            "--quiet"]


def test_train_recipe_fast_with_user_flags(capsys, quick, tmp_path):
    code, _, err = cli(capsys, "train", "--recipe", "fast", "--epochs", 1, "--out",
                       tmp_path / "run", *quick)
    assert code == 0, err
    saved = Config.from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    assert saved == from_recipe("fast", epochs=1, data_dir=str(quick[1]), limit_train=128,
                                limit_val=64, device="cpu", channels=1, height=28, width=28,
                                train_images=128)
    assert saved.schedule == "onecycle" and saved.lr == RECIPES["fast"]["lr"]


def test_resume_with_a_recipe_is_refused_in_one_line(capsys, quick, tmp_path):
    assert cli(capsys, "train", "--out", tmp_path / "run", *quick)[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    code, out, err = cli(capsys, "train", "--resume", tmp_path / "run", "--recipe", "fast")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--recipe" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


# ---- --dataset ------------------------------------------------------------------------------

def write_idx(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def fake_dataset(root, folder, seed, train=96, val=32):
    """Random images and labels in torchvision's layout and file names: ROOT/<folder>/raw."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", train), ("t10k", val)):
        arrays[prefix] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                          rng.integers(0, 10, n, dtype=np.uint8))
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte.gz", arrays[prefix][0])
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte.gz", arrays[prefix][1])
    return arrays


DATASETS = {"fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


def test_fashion_mnist_and_kmnist_load_their_own_files(tmp_path):
    written = {name: fake_dataset(tmp_path, folder, seed)
               for seed, (name, folder) in enumerate(DATASETS.items())}
    for name, arrays in written.items():
        for split, prefix in (("train", "train"), ("val", "t10k")):
            loaded = load_split(name, split, tmp_path, download=False)
            images, labels = arrays[prefix]
            assert torch.equal(loaded.images, torch.from_numpy(images).unsqueeze(1))
            assert torch.equal(loaded.labels, torch.from_numpy(labels).long())
    with pytest.raises(DataError, match="mnist: train-images"):  # no MNIST files there
        load_split("mnist", "train", tmp_path, download=False)


@pytest.mark.parametrize("dataset", DATASETS)
def test_a_tiny_epoch_trains_on_exactly_the_datasets_images(tmp_path, monkeypatch, dataset):
    monkeypatch.setenv("VAELAB_MIRRORS", "http://127.0.0.1:9/")  # never fetch the real files
    images = fake_dataset(tmp_path / "data", DATASETS[dataset], seed=3)["train"][0]
    batches = []
    spy_on_steps(monkeypatch, lambda state, x: batches.append(x.clone()))
    config = Config(dataset=dataset, data_dir=str(tmp_path / "data"), epochs=1, batch_size=32,
                    device="cpu")
    run = train(config, tmp_path / "run")
    seen = (torch.cat(batches) * 255).round().to(torch.uint8).flatten(1)
    assert torch.equal(torch.unique(seen, dim=0),
                       torch.unique(torch.from_numpy(images).flatten(1), dim=0))
    assert len(seen) == len(images)  # each image once
    assert json.loads((run / "config.json").read_text())["dataset"] == dataset
