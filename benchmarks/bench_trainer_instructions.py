"""Machine instructions per training step of flowpost's trainer and of the bare loop, counted by
valgrind's callgrind: a measure of the trainer's own per-step work that other jobs on the
machine cannot disturb (times can: see ``bench_trainer_overhead.py``).

The script runs itself under ``valgrind --tool=callgrind`` with counting off, and switches it on
(client requests through a small C helper compiled here) only around chunks of ``--steps``
steps of the bare loop and of the trainer, alternating, on the same objects as
``bench_trainer_overhead.py`` (the tiny MLP: the case where fixed per-step work weighs most).
Counts include the interpreter, torch and libc; not the import or the set-up. Needs valgrind
(with its headers) and a C compiler; a run takes minutes (valgrind is ~50x slower).

    python benchmarks/bench_trainer_instructions.py [--steps 200] [--tag before]
        [--out benchmarks/results/trainer_instructions.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "trainer_instructions.json"
ORDER = ("bare", "flowpost", "bare", "flowpost")
HELPER = r"""
#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
"""


def inner(helper: str, steps: int, task: str) -> None:
    """Under valgrind: count the chunks in ``ORDER`` (one callgrind dump each)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_trainer_overhead import TASKS, bare_loop, build_trainer

    torch.set_num_threads(1)
    cg = ctypes.CDLL(helper)
    net_cfg, data_name, batch = TASKS[task][:3]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(net_cfg, data_name, batch, tmp)
        runs = {"bare": bare_loop(trainer, batch), "flowpost": trainer.run_steps}
        for run in runs.values():
            run(20)  # warm-up, not counted
        for name in ORDER:
            cg.cg_start()
            runs[name](steps)
            cg.cg_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--task", default="tiny", choices=["tiny", "mlp"])
    parser.add_argument("--tag", default="current", help="the name of this row in the JSON")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--inner", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.steps, args.task)
        return
    if shutil.which("valgrind") is None or shutil.which("cc") is None:
        raise SystemExit("needs valgrind and a C compiler (cc) on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp) / "cg.c", Path(tmp) / "libcg.so"
        src.write_text(HELPER)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}", sys.executable, __file__, "--inner", str(lib),
               "--steps", str(args.steps), "--task", args.task]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        totals = []
        for part in range(1, len(ORDER) + 1):
            text = Path(f"{out}.{part}").read_text()
            found = re.search(r"^totals: (\d+)", text, re.M)
            assert found is not None, f"no totals in callgrind part {part}"
            totals.append(int(found.group(1)))
    per_step: dict[str, list[float]] = {"bare": [], "flowpost": []}
    for name, total in zip(ORDER, totals):
        per_step[name].append(total / args.steps)
    bare, ours = min(per_step["bare"]), min(per_step["flowpost"])
    row = {
        "task": args.task,
        "steps_per_chunk": args.steps,
        "bare_instructions_per_step": per_step["bare"],
        "flowpost_instructions_per_step": per_step["flowpost"],
        "flowpost_extra_instructions_per_step": ours - bare,
        "flowpost_overhead_pct": 100 * (ours / bare - 1),
    }
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.tag] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{args.tag}: bare {bare:,.0f} instructions a step, flowpost {ours:,.0f} "
          f"({row['flowpost_overhead_pct']:+.2f}%); wrote {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
