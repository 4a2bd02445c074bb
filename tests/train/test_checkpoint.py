"""Tests of flowpost/train/checkpoint.py: atomic writes, retention, damage detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flowpost.train.checkpoint import (
    CheckpointError,
    NonFiniteCheckpointError,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    load_policy_state,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)


def test_roundtrip_and_retention(tmp_path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"a": torch.full((2,), float(step))}, {"x": step}, keep=2)
    names = [p.name for p in checkpoint_dirs(tmp_path)]
    assert names == ["step_00000002", "step_00000003"]
    tensors, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["x"] == 3 and tensors["a"].tolist() == [3.0, 3.0]


def test_leftover_temporary_folder_is_ignored(tmp_path) -> None:
    save_checkpoint(tmp_path, 5, {"a": torch.ones(1)}, {}, keep=3)
    (tmp_path / ".step_00000010.tmp-123").mkdir()  # what a SIGKILL mid-write leaves
    assert latest_checkpoint(tmp_path).name == "step_00000005"


def test_truncated_and_tampered_files_are_refused(tmp_path) -> None:
    path = save_checkpoint(tmp_path, 1, {"a": torch.arange(100.0)}, {}, keep=1)
    blob = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)
    tampered = bytearray(blob)
    tampered[-1] ^= 0xFF
    (path / "tensors.safetensors").write_bytes(bytes(tampered))
    with pytest.raises(CheckpointError, match="truncated or modified"):
        load_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_optimizer_state_roundtrip_is_exact() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.5, 0.9))
    for _ in range(3):
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    tensors, meta = optimizer_to_flat("policy", opt)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as a checkpoint file would hold
    clone = torch.nn.Linear(3, 2)
    clone.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW(clone.parameters(), lr=1.0)
    optimizer_from_flat("policy", opt2, tensors, meta)
    x = torch.randn(4, 3)
    for model, o in ((net, opt), (clone, opt2)):
        model(x).pow(2).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), clone.parameters()))
    assert opt2.param_groups[0]["betas"] == (0.5, 0.9)


def test_load_policy_state_prefers_ema(tmp_path) -> None:
    save_checkpoint(
        tmp_path / "checkpoints",
        7,
        {"model.policy.w": torch.zeros(1), "ema.policy.w": torch.ones(1)},
        {},
        keep=1,
    )
    assert load_policy_state(tmp_path)["w"].item() == 1.0
    with pytest.raises(CheckpointError, match="pretrained run not found"):
        load_policy_state(tmp_path / "nope")


def test_one_byte_edit_of_the_state_file_is_refused(tmp_path) -> None:
    path = save_checkpoint(tmp_path, 4, {"a": torch.ones(2)}, {"base_lr": 0.002}, keep=1)
    text = (path / "state.json").read_text()
    assert "0.002" in text
    (path / "state.json").write_text(text.replace("0.002", "0.009", 1))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "state.json: checksum mismatch" in str(err.value) and "\n" not in str(err.value)


def test_non_finite_tensors_are_never_written(tmp_path) -> None:
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {}, keep=3)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteCheckpointError, match="tensor 'w' is not finite at step 2"):
            save_checkpoint(tmp_path, 2, {"w": torch.tensor([1.0, bad])}, {}, keep=3)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]
    # integer tensors (RNG states) are not checked
    save_checkpoint(tmp_path, 3, {"rng": torch.zeros(3, dtype=torch.uint8)}, {}, keep=3)


def test_checkpoint_folder_without_its_state_file_is_an_error(tmp_path) -> None:
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {}, keep=3)
    damaged = save_checkpoint(tmp_path, 2, {"w": torch.ones(2)}, {}, keep=3)
    (damaged / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_00000002: checkpoint folder without its"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(damaged)


def test_pruning_and_rewriting_never_leave_half_deleted_checkpoints(tmp_path, monkeypatch) -> None:
    import shutil

    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"w": torch.ones(2)}, {}, keep=2)

    def killed(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # a kill while the old checkpoint is being deleted

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 3, {"w": torch.ones(2)}, {}, keep=2)
    monkeypatch.undo()
    assert [p.name for p in checkpoint_dirs(tmp_path, strict=True)] == [
        "step_00000002",
        "step_00000003",
    ]


def test_a_checkpoint_without_a_state_checksum_is_named_as_such(tmp_path: Path) -> None:
    # An older checkpoint has no state_sha256: say so, not "modified or damaged".
    folder = save_checkpoint(tmp_path, 1, {"a": torch.ones(2)}, {"x": 1}, keep=1)
    state_file = folder / "state.json"
    state = json.loads(state_file.read_text())
    del state["state_sha256"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="has no state_sha256") as err:
        load_checkpoint(folder)
    assert "\n" not in str(err.value)
