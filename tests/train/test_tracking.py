"""Tests of flowpost/train/tracking.py (and the trackers' side of flowpost/train/logger.py):
a short digits run sends every number of metrics.jsonl, at the same steps, to TensorBoard
(read back with tensorboard's EventAccumulator) and to an offline W&B run (its .wandb file
read back), writes sample grids into samples/ and logs them as images; bad tracker names and
missing packages are one-line errors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flowpost.cli import app
from flowpost.config import ConfigError
from flowpost.train import run_training, tracking
from flowpost.train.config import build_run_config

DIGITS = {
    "data": {"name": "digits"},
    "model": {"arch": "unet", "channels": 8, "channel_mult": [1]},
    "train": {"steps": 4, "batch_size": 16, "log_every": 1, "eval_every": 2,
              "checkpoint_every": 0, "lr": 1e-3},
    "eval": {"nfe": 2, "n_samples": 40, "plots": False, "grid": 16},
}  # fmt: skip


def numbers(run: Path) -> dict[int, dict[str, float]]:
    """The numbers of metrics.jsonl, by step (what every tracker must have received)."""
    out: dict[int, dict[str, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(rec["step"], {})[k] = float(v)
    return out


def tensorboard_scalars(run: Path) -> tuple[dict[int, dict[str, float]], dict[int, tuple]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            scalars.setdefault(event.step, {})[tag] = event.value
    shown = acc.Images("samples") if "samples" in acc.Tags()["images"] else []
    images = {e.step: (e.width, e.height) for e in shown}
    return scalars, images


def wandb_history(run: Path) -> dict[int, dict[str, str]]:
    """History records of the offline W&B run (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, records, part = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        part = chunk if kind in (1, 2) else part + chunk  # full/first, middle/last
        if kind in (1, 4):
            records.append(part)
    history: dict[int, dict[str, str]] = {}
    for blob in records:
        rec = pb.Record()
        rec.ParseFromString(blob)
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
            history.setdefault(int(items["_step"]), {}).update(items)
    return history


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def test_tensorboard_and_offline_wandb_get_every_logged_number_and_the_grids(
    tmp_path, monkeypatch
) -> None:
    pytest.importorskip("wandb", reason="the optional wandb package is not installed")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is flowpost's default
    cfg = dict(DIGITS, train={**DIGITS["train"], "log_with": ["tensorboard", "wandb"]})
    run_training(cfg, tmp_path)
    logged = numbers(tmp_path)
    assert sorted(logged) == [1, 2, 3, 4]
    assert "eval/sliced_w2" in logged[2] and "final/step" in logged[4]
    grids = {2: tmp_path / "samples" / "step_0000002.png", 4: tmp_path / "samples" / "final.png"}
    sizes = {step: Image.open(p).size for step, p in grids.items()}  # (width, height)
    assert sizes[2][0] >= 256

    scalars, images = tensorboard_scalars(tmp_path)
    for step, values in logged.items():
        assert set(values) == set(scalars[step]), step
        assert all(close(values[k], scalars[step][k]) for k in values), step
    assert images == sizes  # the grid of each evaluation, as an image

    history = wandb_history(tmp_path)
    for step, values in logged.items():
        got = {k: float(json.loads(v)) for k, v in history[step].items() if k in values}
        assert set(got) == set(values) and all(close(values[k], got[k]) for k in values)
    for step, (w, h) in sizes.items():
        assert json.loads(history[step]["samples/width"]) == w
        assert json.loads(history[step]["samples/height"]) == h
        (media,) = tmp_path.glob(f"wandb/offline-run-*/files/media/images/samples_{step}_*.png")
        assert np.array_equal(np.asarray(Image.open(media).convert("RGB")),
                              np.asarray(Image.open(grids[step]).convert("RGB")))  # fmt: skip


def test_resume_keeps_tensorboard_in_step_with_metrics_jsonl(tmp_path) -> None:
    train = {**DIGITS["train"], "steps": 3, "eval_every": 0, "checkpoint_every": 2}
    cfg = dict(DIGITS, train=train, eval={**DIGITS["eval"], "grid": 0})
    run_training(cfg, tmp_path)  # checkpoints at 2 and 3; resumed from 3
    run_training(dict(cfg, train={**train, "steps": 5}), tmp_path, resume=True)
    logged = numbers(tmp_path)
    scalars, _ = tensorboard_scalars(tmp_path)
    fm = {s: v["policy/fm"] for s, v in logged.items() if "policy/fm" in v}
    assert sorted(fm) == [1, 2, 3, 4, 5]
    tb = {s: v["policy/fm"] for s, v in scalars.items() if "policy/fm" in v}
    assert sorted(tb) == sorted(fm) and all(close(fm[s], tb[s]) for s in fm)


def test_grids_at_checkpoints_and_no_trackers(tmp_path) -> None:
    train = {**DIGITS["train"], "eval_every": 0, "checkpoint_every": 1, "log_with": []}
    cfg = dict(DIGITS, train=train, eval={**DIGITS["eval"], "grid_at_checkpoints": True})
    run_training(cfg, tmp_path)
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    # every checkpoint but the last, whose grid is the final evaluation's
    assert names == ["final.png", "step_0000001.png", "step_0000002.png", "step_0000003.png"]
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "wandb").exists()
    off = dict(DIGITS, train={**DIGITS["train"], "steps": 1}, eval={**DIGITS["eval"], "grid": 0})
    run_training(off, tmp_path / "off")
    assert not (tmp_path / "off" / "samples").exists()


def test_vectors_get_no_grid(tmp_path) -> None:
    cfg = {
        "data": {"name": "moons", "n_heldout": 50},
        "model": {"hidden": 16, "depth": 1},
        "train": {"steps": 2, "batch_size": 16, "checkpoint_every": 0},
        "eval": {"nfe": 2, "n_samples": 50, "plots": False},
    }
    run_training(cfg, tmp_path)
    assert not (tmp_path / "samples").exists() and (tmp_path / "tensorboard").is_dir()


def test_bad_tracker_names_and_missing_packages_are_one_line_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"^train\.log_with: unknown tracker 'mlflow' \(known"):
        build_run_config({"train": {"log_with": ["tensorboard", "mlflow"]}})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {name: moons}\n")
    result = CliRunner().invoke(
        app,
        ["train", str(recipe), "--set", "train.log_with=[tensorbord]", "--out",
         str(tmp_path / "r"), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "train.log_with: unknown tracker 'tensorbord'" in result.output
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n)
    )
    with pytest.raises(ConfigError, match=r"'wandb' needs the wandb package.*flowpost\[wandb\]"):
        tracking.check_trackers(["tensorboard", "wandb"])
