"""AF's EMA generator against its live (last-step) generator, from the same run folders.

The trainer keeps both in every checkpoint; the EMA never feeds back into training, so the
live generator of a run is exactly what the same run with ``train.ema_decay=0`` would keep.
For every AF cell of ``benchmarks/results/af_suite.json`` whose run folder still
exists (``flowpost train`` runs of ``bench_adversarial.py suite``), both generators sample
from the same noise and are scored the same way: (8gaussians) the af-diversity acceptance
statistic on 4000 samples (noise seed 3, as ``flowpost sample --seed 3``) and
``flowpost.eval.evaluate_samples`` on 2000 of them against the run's 2000 held-out points.
No training here. Writes ``benchmarks/results/af_ema_live.json``.

    python benchmarks/bench_af_ema.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from flowpost.data import load_data  # noqa: E402
from flowpost.eval import evaluate_samples  # noqa: E402
from flowpost.run import load  # noqa: E402

KEEP = ("w2", "mode_spread_ratio", "between_modes", "density", "coverage", "mode_tv")


def acceptance_stat(x: np.ndarray) -> dict[str, float]:
    """The af-diversity check's robust within-mode spread and near-a-mode fraction."""
    ang = np.deg2rad(np.arange(8) * 45)
    c = 1.5 * np.stack([np.cos(ang), np.sin(ang)], 1)
    d = np.linalg.norm(x[:, None] - c[None], axis=2)
    idx, near = d.argmin(1), d.min(1) < 0.3
    spread = np.median([np.median(np.abs(x[(idx == k) & near] - c[k])) * 1.4826 for k in range(8)])
    return {"robust_spread": float(spread), "near_mode": float(near.mean())}


def score(path: Path) -> dict[str, Any]:
    run = load(path)
    k = run.config.method.nfe
    ref = load_data(run.config.data).heldout.x
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3))
    out: dict[str, Any] = {"nfe": k}
    with torch.no_grad():
        for name, roles in (("ema", run.roles), ("live", None)):
            x = run.method.generate(z, nfe=k, roles=roles)
            m = evaluate_samples(x[:2000], ref[:2000], dataset=run.config.data.name)
            extra = acceptance_stat(x.numpy()) if run.config.data.name == "8gaussians" else {}
            out[name] = {**extra, **{q: m[q] for q in KEEP if q in m}}
    return out


def main() -> None:
    results = json.loads((HERE / "results" / "af_suite.json").read_text())
    rows = {}
    for key, cell in sorted(results["cells"].items()):
        found = re.search(r"--out (\S+)", cell.get("command", ""))
        if "/af" not in key or not found or not Path(found[1]).is_dir():
            continue
        rows[key] = score(Path(found[1]))
        show = lambda m: " ".join(f"{q} {v:.3f}" for q, v in m.items())  # noqa: E731
        print(f"{key}: EMA {show(rows[key]['ema'])} | live {show(rows[key]['live'])}")
    out = HERE / "results" / "af_ema_live.json"
    out.write_text(json.dumps({"source": "af_suite.json run folders", "runs": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
