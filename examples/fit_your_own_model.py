"""flowpost as a library: your own network, your own tensors, three calls to ``flowpost.fit``.

1. Pretrain your velocity network on samples of a source distribution (eight Gaussians).
2. Post-train it toward a new target (the eight Gaussians rotated by 22.5 degrees) from 256
   demonstrations, with SFT and with FAIL-PD at the deployed 2-step sampler.
3. Post-train it toward a reward (a callable: no data needed beyond the pretrained run's).

Each run is compared with the target on fresh target samples (W2 at 2 and 32 Euler steps).

    python examples/fit_your_own_model.py [--out runs/example] [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

import flowpost
from flowpost.eval import evaluate_samples


class Velocity(nn.Module):
    """Your velocity network: anything called as ``model(x, t, cond=None)``."""

    def __init__(self, dim: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        return self.net(torch.cat([x, t[:, None]], dim=1))


def eight_gaussians(n: int, seed: int, rotate_deg: float = 0.0) -> torch.Tensor:
    """``n`` samples of eight Gaussians (std 0.1) on a circle of radius 1.5, rotated."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k * (2 * math.pi / 8) + math.radians(rotate_deg)
    centers = 1.5 * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centers + 0.1 * torch.randn(n, 2, generator=g)


def score(run: flowpost.Run, target: torch.Tensor) -> dict[str, float]:
    """W2 to fresh target samples at the deployed 2-step sampler and at 32 steps."""
    return {
        f"w2_nfe{nfe}": evaluate_samples(run.sample(len(target), nfe=nfe, seed=7), target)["w2"]
        for nfe in (2, 32)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example"))
    parser.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    pre_steps, ft_steps = (200, 60) if args.quick else (3000, 1000)
    quiet_eval = {"nfe": 2, "extra_nfe": [32], "n_samples": 300 if args.quick else 2000}

    source = eight_gaussians(20000, seed=0)
    demos = eight_gaussians(256, seed=1, rotate_deg=22.5)
    target = eight_gaussians(2000, seed=2, rotate_deg=22.5)  # fresh samples, for scoring only

    print(f"pretraining your network on {len(source)} source samples ({pre_steps} steps)")
    pretrained = flowpost.fit(
        "flow_matching",
        data=source,
        model=Velocity(),
        out=args.out / "pretrain",
        train={"steps": pre_steps, "lr": 2e-3, "schedule": "cosine", "ema_decay": 0.995},
        eval=quiet_eval,
    )
    fine_tune = {"steps": ft_steps, "lr": 5e-4, "ema_decay": 0.99, "checkpoint_every": 0}
    print(f"fine-tuning toward {len(demos)} demonstrations of the rotated target")
    sft = flowpost.fit(
        "flow_matching",
        data=demos,
        init_from=pretrained,
        out=args.out / "sft",
        train=fine_tune,
        eval=quiet_eval,
    )
    warmup = 50
    fail = flowpost.fit(
        "fail",
        data=demos,
        init_from=pretrained,
        out=args.out / "fail_pd",
        method={
            "nfe": 2,  # the deployed sampler is what FAIL trains
            "pd_estimator": "local",
            "disc_lr": 1e-3,
            "disc_betas": [0.5, 0.9],
            "disc_warmup_steps": warmup,
            "discriminator": {"hidden": 128, "depth": 2},
        },
        train={**fine_tune, "steps": ft_steps + warmup},  # the same number of policy updates
        eval=quiet_eval,
    )
    goal = torch.tensor([1.5, 0.0])
    print("fine-tuning toward a reward: closeness to the point (1.5, 0)")
    reward = flowpost.fit(
        "reward",
        reward=lambda x: -(x - goal).norm(dim=1),
        init_from=pretrained,
        out=args.out / "reward",
        method={"nfe": 2},
        train={**fine_tune, "steps": ft_steps // 4},
        eval=quiet_eval,
    )

    table = {name: score(run, target) for name, run in [("pretrained", pretrained), ("sft", sft)]}
    table["fail_pd"] = score(fail, target)
    near = (reward.sample(2000, nfe=2) - goal).norm(dim=1)
    before = (pretrained.sample(2000, nfe=2) - goal).norm(dim=1)
    table["reward"] = {
        "mean_distance_to_goal_before": float(before.mean()),
        "mean_distance_to_goal_after": float(near.mean()),
    }
    print(json.dumps(table, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {"pre_steps": pre_steps, "ft_steps": ft_steps, "quick": args.quick}
        args.json.write_text(json.dumps({"settings": settings, "results": table}, indent=1))


if __name__ == "__main__":
    main()
