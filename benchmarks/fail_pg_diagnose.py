"""Why FAIL-PG collapsed: short in-process runs of one suite pair with the policy's raw
weights (no EMA, no held-out guard), W2 of the deployed sampler and the velocity anchor term
every 50 steps, per variant of the PG settings.

The loop is FAIL's own ``train_step`` with the trainer's ``OptimizerUpdater`` (AdamW, grad
clip 1.0, discriminator lr 1e-3 with betas (0.5, 0.9)); the start is the suite's pretrained
source flow (``bench_suite.pretrain``, seed 0). A variant is ``key=value`` settings of the
``method`` section joined by ``+`` (``base``: the previous recipe, FPO with 8 draws, groups
of 8, clip 0.2, one epoch, anchor 0.05, lr 1e-4)::

    python benchmarks/fail_pg_diagnose.py moons-spirals base --pretrained /tmp/suite/pretrain
    python benchmarks/fail_pg_diagnose.py moons-spirals pg_estimator=sde --steps 400

Each run is appended to ``benchmarks/results/fail_pg_diagnose.json`` (``runs``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from suite_tasks import TASKS  # noqa: E402

import flowpost  # noqa: E402
from flowpost.data.base import Batch, DataSpec  # noqa: E402
from flowpost.eval.metrics import w2  # noqa: E402
from flowpost.methods.fail import FAILConfig, FAILMethod  # noqa: E402
from flowpost.nets.config import DiscriminatorConfig, NetConfig  # noqa: E402
from flowpost.train.updater import OptimizerUpdater  # noqa: E402

RESULTS = HERE / "results" / "fail_pg_diagnose.json"
INTS = ("pg_epochs", "pg_group_size", "pg_draws", "disc_warmup_steps")


def settings(variant: str) -> tuple[dict[str, Any], float]:
    """The method settings and policy lr of a variant string."""
    base: dict[str, Any] = dict(
        variant="pg", nfe=2, pg_group_size=8, pg_draws=8, pg_clip=0.2, pg_epochs=1,
        ref_weight=0.05, disc_warmup_steps=50, disc_lr=1e-3, disc_betas=[0.5, 0.9],
        gp_weight=1.0, discriminator=DiscriminatorConfig(hidden=256, depth=2),
    )  # fmt: skip
    lr = 1e-4
    for part in variant.split("+"):
        if part == "base":
            continue
        k, v = part.split("=")
        if k == "lr":
            lr = float(v)
        elif k == "pg_estimator":
            base[k] = v
        elif k == "pg_expert":
            base[k] = v == "1"
        else:
            base[k] = int(v) if k in INTS else float(v)
    return base, lr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("task")
    p.add_argument("variant")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrained", default="/tmp/flowpost-fail-pg/pretrain")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(1)
    task = TASKS[args.task]
    demos = torch.from_numpy(task.demos(256, args.seed))
    ref = torch.from_numpy(task.target.reference())
    pre = flowpost.load(Path(args.pretrained) / f"{task.source.key}-s0")
    method, lr = settings(args.variant)
    torch.manual_seed(args.seed)
    m = FAILMethod(FAILConfig(**method), DataSpec((2,)), NetConfig(hidden=256, depth=4))
    m.load_pretrained(pre.model.state_dict())
    assert m.discriminator is not None
    up = OptimizerUpdater(
        {
            "policy": torch.optim.AdamW(m.policy.parameters(), lr=lr, weight_decay=0.0),
            "discriminator": torch.optim.AdamW(
                m.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.9), weight_decay=0.0
            ),
        },
        grad_clip={"policy": 1.0, "discriminator": 1.0},
    )
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))

    def score() -> dict[str, float]:
        with torch.no_grad():
            x = m.generate(noise, nfe=2)
            v_ref = m.reference(noise, torch.zeros(2000), None)
            v = m.policy(noise, torch.zeros(2000), None)
        return {
            "w2": w2(x, ref),
            "drift0": float((v - v_ref).pow(2).sum(1).mean().sqrt()),
            "xmax": float(x.abs().max()),
        }

    rec: dict[str, Any] = {"variant": args.variant, "task": args.task, "seed": args.seed}
    rec["curve"] = [{"step": 0, **score()}]
    start = time.time()
    keys = ("policy/reg", "pg/reward", "discriminator/bce", "pg/ratio_last", "policy/grad_norm")
    for step in range(args.steps):
        idx = torch.randint(0, 256, (256,))
        logs = m.train_step(Batch(demos[idx]), step, up)
        up.global_step += 1
        if (step + 1) % 50 == 0:
            s: dict[str, Any] = {"step": step + 1, **score(), **{k: logs.get(k) for k in keys}}
            rec["curve"].append(s)
            print(json.dumps(s), flush=True)
            if not np.isfinite(s["w2"]) or s["w2"] > 50:
                break
    rec["seconds"] = round(time.time() - start, 1)
    path = Path(args.results)
    data = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    data["runs"].append(rec)
    path.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
