"""The CUDA and mixed-precision paths of the trainer, through the command line, on a GPU.

CI has no GPU, so this is where ``train.device: cuda`` and ``train.precision: bf16`` are
exercised end to end: every check is ``flowpost train`` on a committed recipe (with the
device and precision set), then the run's own evaluation (``summary.json``) and, for the
8-Gaussian targets, the within-mode spread and near-mode mass of 4000 samples computed from
raw samples exactly as ``../shared/acceptance/{af-diversity,fail-demo-diversity}`` do.

It also checks exact resume on the GPU: a run is trained to the end, a second identical run
is cut back to its middle checkpoint and resumed, and a third identical run measures the
GPU's own run-to-run determinism; the final weights are compared bit for bit.

    python benchmarks/bench_gpu_paths.py --out benchmarks/results/gpu_paths.json
    python benchmarks/bench_gpu_paths.py --device cpu --smoke --out /tmp/gpu_paths.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import flowpost  # noqa: E402

# name, recipe, overrides, the check it starts from, centre offset (degrees) of the 8 modes
CHECKS: list[tuple[str, str, list[str], str | None, float | None]] = [
    ("fm_bf16", "recipes/8gaussians/pretrain.yaml", ["train.precision=bf16"], None, 0.0),
    (
        "fail_pd_bf16",
        "recipes/8gaussians_rotated/fail_pd.yaml",
        ["train.precision=bf16"],
        "fm_bf16",
        22.5,
    ),
    (
        "af_bf16",
        "recipes/vectors/af.yaml",
        ["data.name=8gaussians", "data.path=null", "train.precision=bf16"],
        None,
        0.0,
    ),
    (
        "flux_tiny_fail_pd_bf16",
        "recipes/flux_tiny/fail_pd.yaml",
        ["train.precision=bf16", "train.steps=20"],
        None,
        None,
    ),
    ("gft_bf16", "recipes/8gaussians_rotated/gft.yaml", ["train.precision=bf16"], "fm_bf16", 22.5),
    ("resume", "", [], None, None),  # exact resume on the device (see resume_check)
    ("fm_fp32", "recipes/8gaussians/pretrain.yaml", [], None, 0.0),
    ("fail_pd_fp32", "recipes/8gaussians_rotated/fail_pd.yaml", [], "fm_fp32", 22.5),
    ("af_fp32", "recipes/vectors/af.yaml", ["data.name=8gaussians", "data.path=null"], None, 0.0),
]
SUMMARY_KEYS = ("w2", "mode_spread", "coverage", "step", "nfe", "frechet")


def spread(samples: np.ndarray, offset_deg: float) -> dict[str, float]:
    """Robust within-mode spread (median over modes of 1.4826 x the median distance to the
    centre; true 0.10) and the mass within 0.3 of a mode, as the acceptance checks compute."""
    ang = np.deg2rad(np.arange(8) * 45 + offset_deg)
    centres = 1.5 * np.stack([np.cos(ang), np.sin(ang)], 1)
    d = np.linalg.norm(samples[:, None] - centres[None], axis=2)
    idx, near = d.argmin(1), d.min(1) < 0.3
    per = [np.median(np.abs(samples[(idx == k) & near] - centres[k])) * 1.4826 for k in range(8)]
    return {"spread": float(np.median(per)), "near_mode": float(near.mean())}


def train(
    recipe: str, out: Path, sets: list[str], device: str, extra: tuple[str, ...] = ()
) -> float:
    args = ["train", recipe, "--out", str(out), "--no-progress", *extra]
    for s in [f"train.device={device}", "eval.plots=false", *sets]:
        args += ["--set", s]
    start = time.perf_counter()
    flowpost(*args)
    return round(time.perf_counter() - start, 1)


def weights(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    last = sorted((run / "checkpoints").glob("step_*"))[-1]
    return load_file(str(last / "tensors.safetensors"))


def resume_check(work: Path, device: str, smoke: bool) -> dict[str, Any]:
    steps = 40 if smoke else 400
    sets = [f"train.steps={steps}", f"train.checkpoint_every={steps // 2}", "eval.n_samples=200"]
    recipe = "recipes/8gaussians/pretrain.yaml"
    runs = {n: work / f"resume_{n}" for n in ("whole", "cut", "again")}
    for run in runs.values():
        shutil.rmtree(run, ignore_errors=True)
        train(recipe, run, sets, device)
    cut = runs["cut"]
    shutil.rmtree(cut / "checkpoints" / f"step_{steps:08d}")
    (cut / "summary.json").unlink()
    train(recipe, cut, sets, device, ("--resume",))
    a, b, c = (weights(r) for r in runs.values())
    diff = lambda x, y: max(float((x[k] - y[k]).abs().max()) for k in x if x[k].is_floating_point())  # noqa: E731
    return {
        "resumed_equals_whole_bitwise": all(bool((a[k] == b[k]).all()) for k in a),
        "resumed_max_abs_diff": diff(a, b),
        "rerun_equals_whole_bitwise": all(bool((a[k] == c[k]).all()) for k in a),
        "rerun_max_abs_diff": diff(a, c),
        "steps": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--smoke", action="store_true", help="a few steps each (a dry run on a CPU)")
    p.add_argument("--work", default="/tmp/flowpost-gpu-paths")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_paths.json"))
    p.add_argument("--only", nargs="*", help="only these checks")
    args = p.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --smoke for a dry run")
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "checks": {},
    }
    for name, recipe, sets, parent, offset in CHECKS:
        if args.only and name not in args.only:
            continue
        if name == "resume":
            try:
                result["resume"] = resume_check(work, args.device, args.smoke)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                result["resume"] = {"error": str(err)}
            print("resume", result["resume"], flush=True)
            out.write_text(json.dumps(result, indent=1))
            continue
        run = work / name
        shutil.rmtree(run, ignore_errors=True)
        if args.smoke:
            sets = [*sets, "train.steps=20", "eval.n_samples=200"]
            sets += ["method.temperature_steps=10"] if name.startswith("gft") else []
        if parent:
            sets.append(f"init_from={work / parent}")
        record: dict[str, Any] = {"recipe": recipe, "overrides": sets}
        try:
            record["wall_s"] = train(recipe, run, sets, args.device)
            summary = json.loads((run / "summary.json").read_text())
            record.update({k: summary[k] for k in SUMMARY_KEYS if k in summary})
            if offset is not None:
                path = run / "samples.npy"
                nfe = str(summary.get("nfe", 2))
                flowpost(
                    "sample",
                    str(run),
                    "--nfe",
                    nfe,
                    "--n",
                    "4000",
                    "--seed",
                    "3",
                    "--out",
                    str(path),
                )
                x = np.load(path)
                record["finite"] = bool(np.isfinite(x).all())
                record.update(spread(x, offset))
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            record["error"] = str(err)
        result["checks"][name] = record
        print(
            name, {k: v for k, v in record.items() if k not in ("recipe", "overrides")}, flush=True
        )
        out.write_text(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
