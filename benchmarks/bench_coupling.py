"""Minibatch OT coupling time: flowpost's OTCoupling vs torchcfm's OTPlanSampler.

For batch sizes 256 and 1024 and sample dimensions 2 and 64 (Gaussian noise to a shifted
Gaussian), it times one coupling call

* ``flowpost exact``: ``OTCoupling("exact")(x0, x1, labels)`` (cost in float64, ``ot.emd``,
  the optimal permutation read off the plan; every ``x1`` kept once with its label);
* ``torchcfm exact``: ``OTPlanSampler("exact").sample_plan_with_labels(x0, x1, y1=labels)``
  (cost in the input's float32, ``ot.emd``, then ``batch`` pairs drawn from the plan with
  replacement, so some ``x1`` repeat and others drop out);
* ``flowpost sinkhorn``: ``OTCoupling("sinkhorn", reg=0.05)`` for reference.

Besides the median time over interleaved repeats (one thread, wall and process CPU), it
reports the mean squared distance of the returned pairs (the transport cost; lower is
straighter) and the fraction of distinct ``x1`` rows that survive the coupling.

    python benchmarks/bench_coupling.py [--batches 256 1024] [--dims 2 64] [--repeats 5]

Writes ``benchmarks/results/flows_coupling.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import ot
import torch
from torch import Tensor
from torchcfm.optimal_transport import OTPlanSampler

from flowpost.flows.couplings import OTCoupling

RESULTS = Path(__file__).parent / "results" / "flows_coupling.json"
Pairs = tuple[Tensor, Tensor]


def cases(x0: Tensor, x1: Tensor, labels: Tensor) -> dict[str, Callable[[], Pairs]]:
    exact, sink = OTCoupling("exact"), OTCoupling("sinkhorn", reg=0.05)
    cfm = OTPlanSampler("exact")
    gen = torch.Generator().manual_seed(0)

    def fp_exact() -> Pairs:
        a, b, _ = exact(x0, x1, labels)
        return a, b

    def cfm_exact() -> Pairs:
        a, b, _, _ = cfm.sample_plan_with_labels(x0, x1, y1=labels)
        return a, b

    def fp_sink() -> Pairs:
        a, b, _ = sink(x0, x1, labels, generator=gen)
        return a, b

    return {"flowpost exact": fp_exact, "torchcfm exact": cfm_exact,
            "flowpost sinkhorn": fp_sink}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for batch in args.batches:
        for dim in args.dims:
            g = torch.Generator().manual_seed(batch + dim)
            x0 = torch.randn(batch, dim, generator=g)
            x1 = torch.randn(batch, dim, generator=g) + 1.0
            labels = torch.arange(batch)
            fns = cases(x0, x1, labels)
            quality = {}
            for name, fn in fns.items():
                a, b = fn()
                uniq = len({tuple(r) for r in b.tolist()}) / batch
                quality[name] = (float((a - b).pow(2).sum(1).mean()), uniq)
            indep = float((x0 - x1).pow(2).sum(1).mean())
            wall: dict[str, list[float]] = {k: [] for k in fns}
            cpu: dict[str, list[float]] = {k: [] for k in fns}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(args.repeats):
                    for name, fn in fns.items():
                        c0, w0 = time.process_time(), time.perf_counter()
                        fn()
                        cpu[name].append(time.process_time() - c0)
                        wall[name].append(time.perf_counter() - w0)
            for name in fns:
                rows.append({
                    "batch": batch, "dim": dim, "method": name,
                    "wall_ms": 1e3 * statistics.median(wall[name]),
                    "cpu_ms": 1e3 * statistics.median(cpu[name]),
                    "pair_cost": quality[name][0], "independent_pair_cost": indep,
                    "distinct_x1_fraction": quality[name][1],
                })  # fmt: skip
    print(f"one thread, medians of {args.repeats} interleaved repeats, POT {ot.__version__}")
    print(
        "| batch | dim | method | wall ms | cpu ms | mean pair cost (indep.) | distinct x1 kept |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['dim']} | {r['method']} | {r['wall_ms']:.1f} | "
            f"{r['cpu_ms']:.1f} | {r['pair_cost']:.3f} ({r['independent_pair_cost']:.3f}) | "
            f"{r['distinct_x1_fraction']:.2f} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"config": vars(args), "pot": ot.__version__, "torch": torch.__version__, "rows": rows},
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
