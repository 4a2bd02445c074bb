"""Whole runs of diffusers models through the trainer and the command line: the tiny
recipes train and export; a checkpoint holds only adapters (and resumes exactly); a run
writes the grid of its latents' channels; the
export loads into a fresh transformer with diffusers' own loader and gives the fine-tuned
model's outputs; init_from takes a diffusers folder or an earlier LoRA run.

(Tests the diffusers paths of flowpost/train/trainer.py, flowpost/export.py and
flowpost/adapters/diffusers/build.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers_helpers import FLUX_TINY, TARGETS, latents_and_cond
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import flowpost
from flowpost.adapters.diffusers.model import DiffusersFlow, load_transformer
from flowpost.cli import app
from flowpost.config import from_dict
from flowpost.data.latents import toy_latents, write_latent_shards
from flowpost.eval.grid import sample_grid
from flowpost.export import export_run
from flowpost.train import Trainer
from flowpost.train.checkpoint import latest_checkpoint, load_checkpoint
from flowpost.train.config import build_run_config

ROOT = Path(__file__).resolve().parents[3]


def recipe(data: Path, **method) -> dict:
    write_latent_shards(data, *toy_latents(24, text_len=3), shard_size=10)
    return {
        "diffusers": {
            "model_class": "FluxTransformer2DModel",
            "transformer": dict(FLUX_TINY),
            "lora_rank": 4,
            "lora_targets": list(TARGETS),
        },
        "data": {"name": "latents", "path": str(data), "heldout_fraction": 0.25},
        "method": method or {"name": "flow_matching", "label_dropout": 0.0},
        "train": {"steps": 4, "batch_size": 4, "lr": 1e-2, "ema_decay": 0.5, "log_every": 2},
        "eval": {"nfe": 2, "n_samples": 6, "plots": False},
    }


def test_cli_trains_and_exports_the_tiny_recipes(tmp_path) -> None:
    runner = CliRunner()
    for name in ("flux_tiny/fail_pd", "sd3_tiny/sft"):
        r = ROOT / "recipes" / f"{name}.yaml"
        data = f"data.path={ROOT / 'recipes' / 'latents_tiny'}"
        run, out = tmp_path / name / "run", tmp_path / name / "out"
        args = ["train", str(r), "--out", str(run), "--no-progress", "--set", "train.steps=3"]
        result = runner.invoke(app, [*args, "--set", data])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["export", str(run), "--out", str(out)])
        assert result.exit_code == 0, result.output
        state = load_file(str(out / "pytorch_lora_weights.safetensors"))
        assert state and all("lora" in k and k.startswith("transformer.") for k in state)
        assert any("lora_B" in k and v.abs().max() > 0 for k, v in state.items())


def test_checkpoint_holds_adapters_only_and_resumes_exactly(tmp_path) -> None:
    cfg = recipe(tmp_path / "data")
    straight = Trainer.from_config(build_run_config(cfg), tmp_path / "a", progress=False)
    assert straight.streamed and straight.train_x is None  # never moved whole
    straight.fit()
    # the sample grid of a latent run: its channels, one row per sample, 16 columns
    samples = straight.eval_samples
    assert samples is not None and samples.shape[1:] == (16, 8, 8)
    grid = np.asarray(Image.open(tmp_path / "a" / "samples" / "final.png").convert("RGB"))
    assert np.array_equal(grid, sample_grid(samples)) and grid.shape[1] > 2 * grid.shape[0]
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path / "a" / "checkpoints"))
    weights = [k for k in tensors if k.startswith(("model.", "ema."))]
    assert weights and all("lora_" in k for k in weights)
    half = dict(cfg, train=dict(cfg["train"], steps=2))
    Trainer.from_config(build_run_config(half), tmp_path / "b", progress=False).fit()
    full = build_run_config(cfg)
    resumed = Trainer.from_config(full, tmp_path / "b", progress=False, load_init=False)
    resumed.fit(resume=True)
    pairs = zip(straight.method.policy.trainable(), resumed.method.policy.trainable())
    for (n, p), (_, q) in pairs:
        assert torch.allclose(p, q, atol=1e-6), n


def test_export_loads_with_diffusers_loader_and_equals_the_fine_tuned_model(tmp_path) -> None:
    cfg = recipe(tmp_path / "data", name="fail", variant="pd", cold_start_steps=1,
                 disc_warmup_steps=1, nfe=2)  # fmt: skip
    trainer = Trainer.from_config(build_run_config(cfg), tmp_path / "run", progress=False)
    trainer.fit()
    export_run(tmp_path / "run", tmp_path / "out")
    dcfg = build_run_config(cfg).diffusers
    assert dcfg is not None
    fresh = load_transformer(dcfg)
    fresh.load_lora_adapter(
        str(tmp_path / "out"), prefix="transformer", weight_name="pytorch_lora_weights.safetensors"
    )
    x, cond = latents_and_cond(3)
    t = torch.rand(3)
    tuned = trainer.ema_roles()["policy"]
    with torch.no_grad():
        expected = tuned(x, t, cond)
        assert (expected - trainer.method.reference(x, t, cond)).abs().max() > 1e-6  # moved
        assert torch.allclose(DiffusersFlow(fresh)(x, t, cond), expected, atol=1e-5)
        loaded = flowpost.load(tmp_path / "run")  # the object API rebuilds the adapted model
        assert torch.allclose(loaded.roles["policy"](x, t, cond), expected, atol=1e-6)


def test_init_from_a_diffusers_folder_and_from_a_lora_run(tmp_path) -> None:
    cfg = recipe(tmp_path / "data")
    dcfg = build_run_config(cfg).diffusers
    assert dcfg is not None
    base = load_transformer(from_dict(type(dcfg), dict(cfg["diffusers"], init_seed=7)))
    base.save_pretrained(tmp_path / "base")
    folder = dict(cfg, init_from=str(tmp_path / "base"))
    folder["diffusers"] = {k: v for k, v in cfg["diffusers"].items() if k != "transformer"}
    trainer = Trainer.from_config(build_run_config(folder), tmp_path / "r1", progress=False)
    x, cond = latents_and_cond(2)
    t = torch.rand(2)
    with torch.no_grad():
        # the base's output up to float rounding (see test_lora's start-at-the-base test)
        torch.testing.assert_close(
            trainer.method.policy(x, t, cond), DiffusersFlow(base)(x, t, cond), rtol=0.0, atol=1e-6
        )
    trainer.fit()
    follow = dict(folder, init_from=None)
    follow["diffusers"] = dict(folder["diffusers"], pretrained=str(tmp_path / "base"))
    follow["init_from"] = str(tmp_path / "r1")
    nxt = Trainer.from_config(build_run_config(follow), tmp_path / "r2", progress=False)
    ema = trainer.ema_roles()["policy"].averaged()
    for n, p in nxt.method.policy.trainable():
        assert torch.equal(p, ema[n]), n


def test_recipes_parse() -> None:
    for path in sorted((ROOT / "recipes").glob("*_tiny/*.yaml")):
        cfg = build_run_config(yaml.safe_load(path.read_text()))
        assert cfg.diffusers is not None and cfg.data.name == "latents", path


def test_bad_inputs_are_one_line_cli_errors(tmp_path) -> None:
    runner = CliRunner()
    r = str(ROOT / "recipes" / "flux_tiny" / "sft.yaml")
    data = f"data.path={ROOT / 'recipes' / 'latents_tiny'}"
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    cases = {
        "diffusers.lora_rank=0": "lora_rank: 0 trains nothing",
        "diffusers.lora_targets=[to_qq]": "'to_qq' matches no linear layer",
        "diffusers.transformer.in_channels=16": "latents have 16 channels but Flux",
        f"init_from={vae}": "holds a diffusers AutoencoderKL, not a transformer",
    }
    for i, (override, message) in enumerate(cases.items()):
        args = ["train", r, "--out", str(tmp_path / f"r{i}"), "--no-progress", "--set", data]
        result = runner.invoke(app, [*args, "--set", override])
        assert result.exit_code == 2, (override, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
