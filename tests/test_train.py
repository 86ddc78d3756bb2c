import csv

import pytest
import torch
import torch.nn.functional as F

from vaelab import VAE, Config, load_run, resume, train
from vaelab.checkpoint import load_checkpoint
from vaelab.data import load_split
from vaelab.evaluate import evaluate_elbo


def without_timings(rows):
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in rows]


def test_training_lowers_the_loss_on_real_mnist(tiny_config, tmp_path):
    config = tiny_config.replace(limit_train=2048, epochs=2)
    val = load_split("mnist", "val", config.data_dir, config.limit_val)
    torch.manual_seed(config.seed)
    untrained = evaluate_elbo(VAE(config.latent_dim), val.images, seed=0).means("val", 64)
    run = load_run(train(config, tmp_path / "run"), checkpoint="last")
    first, second = run.metrics
    assert second["train_loss"] < first["train_loss"]
    assert second["val_loss"] < first["val_loss"] < 0.5 * untrained["val_loss"]


def test_run_directory_holds_config_metrics_and_checkpoints(tiny_config, tmp_path):
    run_dir = train(tiny_config.replace(epochs=2), tmp_path / "run")
    assert Config.from_dict(__import__("json").loads((run_dir / "config.json").read_text())) \
        == tiny_config.replace(epochs=2, channels=1, height=28, width=28,  # shape recorded
                               train_images=tiny_config.limit_train)
    with (run_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert list(rows[0]) == [  # the header every release has written for the VAE
        "epoch", "step", "train_loss", "val_loss", "train_recon", "train_kl", "val_recon",
        "val_kl", "train_batch_loss", "val_batch_loss", "beta", "lr", "train_seconds",
        "epoch_seconds"]
    row = rows[-1]
    # 512 images in batches of 64 = 8 batches; 256 validation images = 4 batches. The CSV
    # keeps every digit of the float64 figures, and batch_loss = sum / batches and loss =
    # sum / images divide the same sum: equal after * images / batches to a few ulps.
    ulps = 4 * torch.finfo(torch.float64).eps
    values = {key: float(value) for key, value in row.items()}
    assert values["train_batch_loss"] == pytest.approx(values["train_loss"] * 512 / 8, rel=ulps)
    assert values["val_batch_loss"] == pytest.approx(values["val_loss"] * 256 / 4, rel=ulps)
    # loss_i = recon_i + kl_i in float32 (one rounding each), then the three are summed over
    # the 256 validation images in one float32 batch (ceil(log2 256) = 8 eps32 of each sum's
    # magnitude); recon + kl = loss, so the sums' magnitudes add to 2 loss: 17 eps32 loss.
    val_rounding = 17 * torch.finfo(torch.float32).eps * values["val_loss"]
    assert abs(values["val_loss"] - values["val_recon"] - values["val_kl"]) <= val_rounding
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 16 and last["vaelab_version"]
    assert set(last["rng"]) >= {"python", "numpy", "torch", "shuffle", "noise"}
    assert load_checkpoint(run_dir / "best.pt")["best_val_loss"] == min(
        float(r["val_loss"]) for r in rows)


def test_load_run_rebuilds_the_same_model(tiny_config, tmp_path):
    run_dir = train(tiny_config.replace(latent_dim=3), tmp_path / "run")
    run = load_run(run_dir, checkpoint="last")
    assert run.config.latent_dim == 3 and run.epoch == 1 and not run.model.training
    state = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, state[name])
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    mu, logvar = run.model.encode(x)
    expected_mu, expected_logvar = seed_encoder(state, x)
    # the same sums of at most 3136 terms by other kernels (channels-last against plain
    # layout): within ceil(log2 3136) + 1 = 13 ulps of the largest |output|, layer by layer
    for got, expected in ((mu, expected_mu), (logvar, expected_logvar)):
        tolerance = 3 * 13 * torch.finfo(torch.float32).eps * expected.abs().max().item()
        assert (got - expected).abs().max().item() <= tolerance


def seed_encoder(state, x):
    """The reference notebook's encoder written out with torch.nn.functional on the checkpoint's own
    tensors: an independent forward pass (no vaelab.model)."""
    h = F.relu(F.conv2d(x, state["encoder.features.0.weight"], state["encoder.features.0.bias"],
                        stride=2, padding=1))
    h = F.relu(F.conv2d(h, state["encoder.features.2.weight"], state["encoder.features.2.bias"],
                        stride=2, padding=1)).flatten(1)
    return (F.linear(h, state["encoder.mu.weight"], state["encoder.mu.bias"]),
            F.linear(h, state["encoder.logvar.weight"], state["encoder.logvar.bias"]))


# README "Use it from Python": "On a CPU a resumed run equals an uninterrupted one bit for bit
# (tested)". Mid-epoch stops: tests/test_robustness.py.
def test_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path):
    config = tiny_config.replace(batch_size=48)  # 512 = 10 full batches + one of 32
    straight = train(config.replace(epochs=2), tmp_path / "straight")
    interrupted = train(config.replace(epochs=1), tmp_path / "resumed")
    resume(interrupted, epochs=2)
    assert_same_run(straight, interrupted)


def assert_same_run(straight, interrupted):
    """Two runs of two epochs: equal metrics (but timings), weights and Adam state."""
    a, b = load_run(straight, "last"), load_run(interrupted, "last")
    assert len(a.metrics) == len(b.metrics) == 2
    assert without_timings(a.metrics) == without_timings(b.metrics)
    for (name, ta), tb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(ta, tb), name
    opt_a = load_checkpoint(straight / "last.pt")["optimizer"]["state"]
    opt_b = load_checkpoint(interrupted / "last.pt")["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"]) for k in opt_a)


def test_seed_changes_the_run_and_repeats_it(tiny_config, tmp_path):
    runs = [train(tiny_config.replace(seed=s), tmp_path / f"r{i}")
            for i, s in enumerate((0, 0, 1))]
    losses = [load_run(r, "last").metrics[0]["val_loss"] for r in runs]
    assert losses[0] == losses[1] != losses[2]
