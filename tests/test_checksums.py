"""Checkpoints and image caches carry the SHA-256 of their bytes: a byte flipped anywhere is
caught on load, in one line, with what to do; nothing is trained or overwritten. Checkpoints
from before the seal (the 2026-11-29 fixture) still load, evaluate, sample and resume."""

import logging
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli

import vaelab.cache as cache
from vaelab import load_run, resume, sealed, train
from vaelab.checkpoint import load_checkpoint
from vaelab.errors import CheckpointError

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "run-2026-11-29"
FLIPS = 200  # seeded positions spread over the whole file, besides its first and last bytes


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def flipped(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0xFF
    return bytes(damaged)


def positions(size: int) -> list[int]:
    """The first and last bytes, every byte of the trailer (mark and digest), and FLIPS seeded
    positions drawn from each of FLIPS equal stretches of the file (so all of it is visited:
    zip headers, pickled metadata, tensor data)."""
    rng = random.Random(25)
    stretch = size / FLIPS
    spread = [int(i * stretch) + rng.randrange(max(1, int(stretch))) for i in range(FLIPS)]
    trailer = range(size - sealed.TRAILER_BYTES, size)
    return sorted({0, size - 1, *trailer, *spread})


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def small_run(data_dir, tmp_path_factory):
    from vaelab import Config

    config = Config(data_dir=str(data_dir), limit_train=256, limit_val=128, epochs=2,
                    device="cpu", threads=1)
    return train(config, tmp_path_factory.mktemp("sealed") / "run", progress=False)


def test_a_byte_flipped_anywhere_in_a_checkpoint_is_caught(small_run, tmp_path):
    good = (small_run / "last.pt").read_bytes()
    path = tmp_path / "last.pt"
    places = positions(len(good))
    assert len(places) > FLIPS and places[-1] == len(good) - 1
    for position in places:
        path.write_bytes(flipped(good, position))
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message, (position, message)
        assert "damaged" in message and "weights_only" not in message, (position, message)
    path.write_bytes(good)
    assert load_checkpoint(path)["epoch"] == 2  # the same file unflipped loads


def test_a_sealed_checkpoint_is_still_a_plain_torch_file(small_run):
    """Plain torch (and vaelab from before the seal) read it as it is: the trailer follows the
    zip, whose reader starts from its own directory."""
    plain = torch.load(small_run / "last.pt", weights_only=True)
    checked = load_checkpoint(small_run / "last.pt")
    assert plain["sealed"] == "sha256" and plain["epoch"] == checked["epoch"] == 2
    assert all(torch.equal(plain["model"][name], tensor)
               for name, tensor in checked["model"].items())


def test_resume_on_a_damaged_last_pt_is_one_line_and_changes_nothing(capsys, small_run,
                                                                      tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    last = run / "last.pt"
    last.write_bytes(flipped(last.read_bytes(), last.stat().st_size // 2))  # in tensor data
    before = snapshot(run)
    code, out, err = cli(capsys, "train", "--resume", run, "--epochs", 3)
    assert code == 1 and out == ""  # not even the table of the epochs done
    line = one_line(err)
    assert f"{last} is damaged: its checksum does not match" in line
    assert f"{run / 'best.pt'} (epoch 2) is intact: copy it over {last}" in line
    assert f"vaelab train --out {run} --force" in line
    assert snapshot(run) == before


def test_the_advice_is_followed_to_a_resumed_run(capsys, small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "last.pt").write_bytes(flipped((run / "last.pt").read_bytes(), 100))
    shutil.copyfile(run / "best.pt", run / "last.pt")  # what the message says to do
    code, _, err = cli(capsys, "train", "--resume", run, "--epochs", 3, "--quiet")
    assert code == 0, err
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


@pytest.mark.parametrize("command", [["sample"], ["evaluate", "--iw-samples", 2, "--limit", 4],
                                     ["reconstruct"], ["report"]])
def test_commands_refuse_a_damaged_best_pt(capsys, small_run, tmp_path, command):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    best = run / "best.pt"
    best.write_bytes(flipped(best.read_bytes(), 3 * best.stat().st_size // 4))
    before = snapshot(run)
    code, out, err = cli(capsys, command[0], run, *command[1:])
    assert code == 1 and out == ""
    line = one_line(err)
    assert f"{best} is damaged" in line and "pass --checkpoint last" in line
    assert snapshot(run) == before


def test_both_checkpoints_damaged_says_to_start_again(capsys, small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    for name in ("best.pt", "last.pt"):
        (run / name).write_bytes(flipped((run / name).read_bytes(), 5000))
    code, _, err = cli(capsys, "train", "--resume", run, "--epochs", 3)
    assert code == 1
    line = one_line(err)
    assert "best.pt cannot stand in for it" in line and "--force" in line


class RunsCode:
    def __reduce__(self):
        return os.getpid, ()


def test_torchs_advice_to_load_unsafely_is_never_passed_on(capsys, small_run, tmp_path):
    """torch.load's refusal says to retry with weights_only=False, which would run the file's
    code: the one-line error keeps the reason and drops the advice, whatever the file."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    payload = torch.load(run / "last.pt", weights_only=True)
    with (run / "last.pt").open("wb") as file:  # sealed, so the digest passes: torch refuses
        sealed.save({**payload, "extra": RunsCode()}, file)
    code, _, err = cli(capsys, "train", "--resume", run, "--epochs", 3)
    line = one_line(err)
    assert code == 1 and "not a loadable vaelab checkpoint" in line
    assert "GLOBAL posix.getpid" in line or "posix" in line, line
    assert "weights_only" not in line and "Re-running" not in line and "trusted" not in line


def test_the_fixture_from_before_the_seal_still_works(capsys, data_dir, tmp_path, monkeypatch):
    """The 2026-11-29 run has no digest: it loads, evaluates, samples and resumes, and the
    resumed run's checkpoints are sealed."""
    monkeypatch.setenv("VAELAB_DATA_DIR", str(data_dir))  # its config.json names no data_dir
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    raw = (run / "last.pt").read_bytes()
    assert sealed.unseal(raw) == (raw, False) and "sealed" not in torch.load(
        run / "last.pt", weights_only=True)
    assert load_run(run).epoch == 1
    code, out, err = cli(capsys, "evaluate", run, "--iw-samples", 3, "--limit", 8, "--quiet")
    assert code == 0, err
    code, _, err = cli(capsys, "sample", run, "--n", 4)
    assert code == 0, err
    resume(run, epochs=2, progress=False)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert sealed.unseal((run / "last.pt").read_bytes())[1]  # sealed now


# ---- the image cache --------------------------------------------------------------------------

def test_a_byte_flipped_anywhere_in_an_image_cache_means_decoding_again(tmp_path, monkeypatch,
                                                                        caplog):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    images = torch.randint(0, 256, (40, 1, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    cache.write("k" * 64, images)
    path = cache.path("k" * 64)
    good = path.read_bytes()
    assert torch.equal(cache.read("k" * 64), images)
    with caplog.at_level(logging.INFO, logger="vaelab"):
        for position in positions(len(good)):
            path.write_bytes(flipped(good, position))
            assert cache.read("k" * 64) is None, position
    assert "weights_only" not in caplog.text
    path.write_bytes(good)
    assert torch.equal(cache.read("k" * 64), images)


def test_an_unsealed_cache_is_not_trusted(tmp_path, monkeypatch):
    """A cache written without the seal (by hand, or by an older vaelab) is decoded again,
    even when everything else about it matches."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    images = torch.zeros((3, 1, 16, 16), dtype=torch.uint8)
    cache.path("k" * 64).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": cache.FORMAT, "key": "k" * 64, "images": images}, cache.path("k" * 64))
    assert cache.read("k" * 64) is None
