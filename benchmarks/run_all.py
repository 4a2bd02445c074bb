"""Run every benchmark in turn with its default settings (see docs/benchmarks.md).

The quality studies (bench_fail.py, bench_adversarial.py) take hours on a CPU and are run
one sub-command at a time; this script runs the speed benchmarks and the pretraining study.

    python benchmarks/run_all.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = [
    "bench_solvers.py",
    "bench_backward_memory.py",
    "bench_coupling.py",
    "bench_nets.py",
    "bench_trainer_overhead.py",
    "bench_pretrain.py",
]


def main() -> None:
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)


if __name__ == "__main__":
    main()
