"""checkpoint.py without training: atomic writes, and every defect of a checkpoint file as one
CheckpointError naming the file (fast: run for every mutant)."""

import datetime
import hashlib
import os
import stat

import pytest
import torch

from vaelab import sealed
from vaelab.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    SEALED_KEY,
    atomic_open,
    config_from_checkpoint,
    file_sha256,
    load_checkpoint,
    load_weights,
    require_checkpoint,
    save_checkpoint,
)
from vaelab.config import Config
from vaelab.errors import CheckpointError, DamagedCheckpoint, load_failure

pytestmark = pytest.mark.mutation  # fast: every test here is run for each mutant


def payload(**changes):
    base = {"config": Config().to_dict(), "model": {"w": torch.arange(3.0)}, "optimizer": {},
            "epoch": 2, "step": 10, "history": [], "rng": {}}
    return {**base, **changes}


def test_a_saved_checkpoint_loads_with_its_marker_version_and_the_files_digest(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload(), "9.9")
    loaded = load_checkpoint(path)
    assert (loaded["format"], loaded["format_version"], loaded["vaelab_version"]) == (
        FORMAT, FORMAT_VERSION, "9.9")
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0)) and loaded["epoch"] == 2
    assert loaded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == \
        file_sha256(path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left


def test_atomic_open_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as file:
            file.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]
    with atomic_open(path) as file:
        file.write("new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_binary_mode_and_an_unwritable_folder(tmp_path):
    with atomic_open(tmp_path / "b.bin", "wb") as file:
        file.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(tmp_path / "missing" / "last.pt", payload(), "1")
    assert str(caught.value) == (
        f"cannot write {tmp_path / 'missing' / 'last.pt'} (No such file or directory); the "
        "previous checkpoint is intact: free space, then resume")


def test_a_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        require_checkpoint(tmp_path / "run" / "last.pt")
    assert str(caught.value) == (
        f"no checkpoint at {tmp_path / 'run' / 'last.pt'}; train one with `vaelab train --out "
        f"{tmp_path / 'run'}` or point at a run directory that has one")
    (tmp_path / "x.pt").write_bytes(b"")
    assert require_checkpoint(str(tmp_path / "x.pt")) == tmp_path / "x.pt"


def write(path, data):
    torch.save(data, path)
    return path


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b"not a zip"), ": not a loadable vaelab checkpoint (UnpicklingError"),
    (lambda p: write(p, [1, 2]), ": not a vaelab checkpoint (no 'vaelab-checkpoint' marker); "
     "vaelab only loads the checkpoints it wrote"),
    (lambda p: write(p, {"format": "other"}), ": not a vaelab checkpoint (no"),
    (lambda p: write(p, {**payload(), "format": FORMAT, "format_version": 99,
                         "vaelab_version": "7.0"}),
     ": checkpoint format 99 written by vaelab 7.0; this vaelab reads format 1: install the "
     "vaelab version that wrote it"),
    (lambda p: write(p, {**payload(), "format": FORMAT, "format_version": FORMAT_VERSION,
                         "rng": None} | {"history": None}),
     None),
    (lambda p: write(p, {k: v for k, v in payload().items() if k not in ("rng", "step")}
                     | {"format": FORMAT, "format_version": FORMAT_VERSION}),
     ": checkpoint lacks step, rng; it is damaged"),
])
def test_every_defect_is_one_line_naming_the_file(tmp_path, make, words):
    path = tmp_path / "last.pt"
    make(path)
    if words is None:  # present keys, whatever their values: loads
        assert load_checkpoint(path)["rng"] is None
        return
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}{words}") and "\n" not in message


def test_a_truncated_file_is_damaged_not_a_crash(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload(), "1")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"not a loadable vaelab checkpoint \(.*; it is "
                                              r"damaged, truncated or from another program$"):
        load_checkpoint(path)


def test_a_config_or_weights_that_do_not_fit_name_the_file(tmp_path):
    path = tmp_path / "best.pt"
    assert config_from_checkpoint(payload(), path) == Config()
    with pytest.raises(CheckpointError, match=rf"^{path}: its config is not valid for this "
                                              r"vaelab \(.*latent_dim"):
        config_from_checkpoint(payload(config={**Config().to_dict(), "latent_dim": 0}), path)
    with pytest.raises(CheckpointError, match=rf"^{path}: its config is not valid"):
        config_from_checkpoint(payload(config={"no_such_field": 1}), path)
    model = torch.nn.Linear(2, 1)
    load_weights(model, {"model": {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}}, path)
    assert model.weight.sum().item() == 2
    with pytest.raises(CheckpointError) as caught:
        load_weights(model, {"model": {"weight": torch.ones(3, 2)}, "vaelab_version": "0.0"},
                     path)
    assert str(caught.value).startswith(f"{path}: weights do not fit the model its config "
                                        "describes (Error(s) in loading state_dict")
    assert str(caught.value).endswith("its vaelab (0.0) built another network for that "
                                      "config: retrain it")


def test_a_load_failure_is_one_sentence_that_keeps_its_type_and_drops_the_unsafe_advice():
    assert load_failure(ValueError("bad header\nmore detail")) == "ValueError: bad header"
    assert load_failure(RuntimeError("  ")) == "RuntimeError"
    unpickling = RuntimeError("Weights only load failed. Re-running with weights_only=False "
                              "may run arbitrary code.\nUnsupported global: GLOBAL os.system")
    assert load_failure(unpickling) == "RuntimeError: Unsupported global: GLOBAL os.system"


# ---- the seal (sealed.py) as load_checkpoint reads it --------------------------------------

def test_a_checkpoint_names_sha256_as_its_seal(tmp_path):
    save_checkpoint(tmp_path / "last.pt", payload(), "9.9")
    assert load_checkpoint(tmp_path / "last.pt")[SEALED_KEY] == "sha256"


def test_a_flipped_byte_in_the_body_is_a_checksum_mismatch_in_one_line(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload(), "9.9")
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpoint) as caught:
        load_checkpoint(path)
    assert str(caught.value) == f"{path} is damaged: its checksum does not match its contents"


def test_a_sealed_checkpoint_that_lost_its_trailer_is_damaged(tmp_path):
    """The payload says it was sealed, but the digest at the end of the file is gone."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload(), "9.9")
    body, was_sealed = sealed.unseal(path.read_bytes())
    assert was_sealed
    path.write_bytes(body)
    with pytest.raises(DamagedCheckpoint) as caught:
        load_checkpoint(path)
    assert str(caught.value) == (f"{path} is damaged: its checksum at the end of the file is "
                                 "unreadable")


def test_a_checkpoint_loads_where_it_is_asked_to(tmp_path):
    save_checkpoint(tmp_path / "last.pt", payload(), "9.9")
    loaded = load_checkpoint(tmp_path / "last.pt", map_location="meta")
    assert loaded["model"]["w"].device.type == "meta"


def test_a_checkpoint_holding_code_objects_is_refused_not_run(tmp_path):
    """weights_only: a pickled global that is not a tensor or plain data is never loaded."""
    path = tmp_path / "last.pt"
    with path.open("wb") as file:
        sealed.save({**payload(), "format": FORMAT, "format_version": FORMAT_VERSION,
                     "when": datetime.date(2026, 11, 29)}, file)
    with pytest.raises(DamagedCheckpoint, match=r"not a loadable vaelab checkpoint \(.*"
                                                r"datetime"):
        load_checkpoint(path)


def test_weights_only_is_asked_for_explicitly(tmp_path, monkeypatch):
    """Not left to torch's default, which was False before torch 2.6 (pyproject allows 2.4)."""
    save_checkpoint(tmp_path / "last.pt", payload(), "9.9")
    real, asked = torch.load, []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(tmp_path / "last.pt")
    assert asked == [True]
