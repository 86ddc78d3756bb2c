import csv

import torch

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
        == tiny_config.replace(epochs=2, channels=1, height=28, width=28)  # shape recorded
    with (run_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert list(rows[0]) == [  # the header every release has written for the VAE
        "epoch", "step", "train_loss", "val_loss", "train_recon", "train_kl", "val_recon",
        "val_kl", "train_batch_loss", "val_batch_loss", "beta", "lr", "train_seconds",
        "epoch_seconds"]
    row = rows[-1]
    # 512 images in batches of 64 = 8 batches; 256 validation images = 4 batches.
    assert abs(float(row["train_batch_loss"]) - float(row["train_loss"]) * 512 / 8) < 1e-3
    assert abs(float(row["val_batch_loss"]) - float(row["val_loss"]) * 256 / 4) < 1e-3
    assert abs(float(row["val_loss"]) - float(row["val_recon"]) - float(row["val_kl"])) < 1e-4
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
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(run.model.encode(x)[0], load_run(run_dir, "last").model.encode(x)[0])


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
