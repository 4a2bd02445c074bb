"""The post-training task suite of issue 9, through the command line only.

Every contender is ``flowpost train`` on a ``recipes/vectors/*.yaml`` recipe with only the
data (``data.path``), ``init_from`` and the deployed steps (``method.nfe`` / ``eval.nfe``)
changed, then ``flowpost sample`` from the run's kept model (its best checkpoint when the
recipe holds demonstrations out), scored against a fresh target set
(``benchmarks/suite_tasks.py``). Contenders:

================  ==============================================================  ==========
name              run                                                             steps
================  ==============================================================  ==========
pretrained        recipes/vectors/pretrain.yaml on the source, not post-trained   1, 2, 4
sft               recipes/vectors/sft.yaml                                        1, 2, 4
fail_pd_local     recipes/vectors/fail_pd.yaml (local one-step estimator)         trained k
fail_pd_pathwise  the same with method.pd_estimator=pathwise                      trained k
fail_pg           recipes/vectors/fail_pg.yaml                                    trained k
af_scratch        recipes/vectors/af.yaml, from scratch on the demonstrations     trained k
af_init           recipes/vectors/af.yaml initialised from the pretrained flow    trained k
================  ==============================================================  ==========

``af_init`` also sets the model section to the pretrained run's (width 256, depth 4), the
one override the weights need to load. A *cell* is one (task, contender, demonstrations,
deployed steps, seed); ``pretrained`` and ``sft`` train once and are scored at 1, 2 and 4
steps. Cells are stored in the results JSON as they finish (under a file lock) and never
rerun; a worker claims a cell before running it, so several workers can share one
results file (run several processes with the same arguments); a killed cell starts again.

Sizes (``--quick`` is the default):

* ``--quick``: the 8 pairs without digits-balance and 8g-rotate, 256 demonstrations, seed 0
  (``--seeds 0 1 2`` for the three seeds the report is planned for), seed by seed and pair
  by pair: pretrained and SFT (1, 2, 4 steps), FAIL-PD local at 2 and 1 steps, AF from
  scratch at 1 step, FAIL-PD with the recipe's default (pathwise) estimator at 2 and 1
  steps: 7 pretrainings (moons is shared) + 48 post-trainings per seed. About 1.5 hours of
  one idle core per seed (each cell's wall time is in the JSON); the three claims need
  exactly these contenders, at one demonstration count.
* ``--full``: every pair, 64 / 256 / 1024 demonstrations, 3 seeds, every contender at
  1, 2 and 4 steps: 10 x 3 x 3 x 16 post-trainings, days on one core.

    python benchmarks/bench_suite.py run --quick --work /tmp/suite
    python benchmarks/bench_suite.py run --full --tasks moons-spirals --seeds 0 1 2
    python benchmarks/bench_suite.py report          # docs/suite.md from the JSON only
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from common import flowpost as run_flowpost  # noqa: E402
from suite_tasks import TASKS, Task, score, write_array  # noqa: E402

RESULTS = HERE / "results" / "suite.json"
DEFAULT_WORK = "/tmp/flowpost-suite"
STEPS = (1, 2, 4)
DEMOS = (64, 256, 1024)
SEEDS = (0, 1, 2)
RECIPES = {
    "pretrained": "recipes/vectors/pretrain.yaml",
    "sft": "recipes/vectors/sft.yaml",
    "fail_pd_local": "recipes/vectors/fail_pd.yaml",
    "fail_pd_pathwise": "recipes/vectors/fail_pd.yaml",
    "fail_pg": "recipes/vectors/fail_pg.yaml",
    "af_scratch": "recipes/vectors/af.yaml",
    "af_init": "recipes/vectors/af.yaml",
}
CONTENDERS = tuple(RECIPES)
ONCE = ("pretrained", "sft")  # trained once, scored at every deployed step count
QUICK_TASKS = (  # in the order they run: pairs sharing a source flow together
    "moons-spirals",
    "moons-shift",
    "8g-reweight",
    "user-npy",
    "mix1d-reweight",
    "checker-rings",
    "spirals-scale",
    "digits-thick",
)
SAMPLES = 2000  # drawn per scored step count (digits: as many as the reference holds)


@dataclass(frozen=True)
class Cell:
    task: str
    contender: str
    demos: int  # 0 for the pretrained flow
    steps: int  # 0: scored at every step count (pretrained, sft)
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.contender}/d{self.demos}/k{self.steps}/s{self.seed}"

    @property
    def scored_steps(self) -> tuple[int, ...]:
        return STEPS if self.steps == 0 else (self.steps,)


def plan(
    tasks: list[str],
    contenders: list[str],
    demos: list[int],
    steps: list[int],
    seeds: list[int],
) -> list[Cell]:
    """The cells, seed-major then contender-major, so that a partial run covers every task."""
    cells = []
    for seed, contender in itertools.product(seeds, contenders):
        for task in tasks:
            if contender == "pretrained":
                cells.append(Cell(task, contender, 0, 0, seed))
                continue
            for d, k in itertools.product(demos, [0] if contender in ONCE else steps):
                cells.append(Cell(task, contender, d, k, seed))
    return list(dict.fromkeys(cells))


def parse_key(key: str) -> Cell:
    """The cell of a key ``task/contender/dD/kK/sS`` (:attr:`Cell.key`); a malformed key or
    an unknown task or contender is one ``SystemExit`` line."""
    parts = key.split("/")
    try:
        task, contender, d, k, s = parts
        if (d[:1], k[:1], s[:1]) != ("d", "k", "s"):
            raise ValueError(key)
        cell = Cell(task, contender, int(d[1:]), int(k[1:]), int(s[1:]))
    except ValueError:
        raise SystemExit(f"--cells: {key!r} is not task/contender/dD/kK/sS") from None
    if task not in TASKS or contender not in CONTENDERS:
        raise SystemExit(f"--cells: {key!r}: unknown task or contender")
    return cell


def quick_plan(seeds: tuple[int, ...] = (0,)) -> list[Cell]:
    """Seed by seed, then pair by pair (so a partial run has whole comparisons): the
    pretrained flow and SFT (1, 2, 4 steps), FAIL-PD local at 2 steps, AF from scratch at 1,
    FAIL-PD local at 1; 256 demonstrations; seed 0 unless ``--seeds`` names more."""
    cells = []
    for s, t in itertools.product(seeds, QUICK_TASKS):
        cells += plan([t], ["pretrained", "sft"], [256], [0], [s])
        cells += plan([t], ["fail_pd_local"], [256], [2], [s])
        cells += plan([t], ["af_scratch"], [256], [1], [s])
        cells += plan([t], ["fail_pd_local"], [256], [1], [s])
        # the recipe's default estimator (the claims are about the recipes' defaults)
        cells += plan([t], ["fail_pd_pathwise"], [256], [2, 1], [s])
    return cells


# ----------------------------------------------------------------------------- results file


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock for ``path`` (a lock file in the temp folder, not beside it)."""
    name = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"flowpost-suite-{name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(path: Path) -> dict[str, Any]:
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"cells": {}}


def put(path: Path, section: str, key: str, value: dict[str, Any]) -> None:
    """Set ``data[section][key]`` in the results file as it is on disk now."""
    with locked(path):
        data = load(path)
        data.setdefault(section, {})[key] = value
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)


def store(path: Path, key: str, cell: dict[str, Any], meta: dict[str, Any]) -> None:
    """Add one finished cell to the results file as it is on disk now (a failed one goes
    to ``errors``, and is tried again by the next run)."""
    with locked(path):
        data = load(path)
        data.setdefault("meta", {}).update(meta)
        data.setdefault("errors", {}).pop(key, None)
        data["errors" if "error" in cell else "cells"][key] = cell
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)


def claim(work: Path, key: str) -> Path | None:
    """Claim a cell for this process (None when a live process holds it)."""
    path = work / "claims" / (key.replace("/", "__") + ".claim")
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or "0"), 0)
                return None  # alive
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # its process died: take it over
                continue
            except PermissionError:
                return None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return path
    return None


# ----------------------------------------------------------------------------- running


def flowpost(*args: str) -> str:
    """``python -m flowpost ...`` (:func:`common.flowpost`); its output with the warnings."""
    return run_flowpost(*args, with_stderr=True)


def sets(**kv: Any) -> list[str]:
    return [x for k, v in kv.items() for x in ("--set", f"{k.replace('__', '.')}={v}")]


def pretrain(task: Task, seed: int, work: Path) -> Path:
    """The source flow of (``task.source``, ``seed``), trained once and shared by every
    pair with that source (under a lock, so parallel workers wait for one another)."""
    out = work / "pretrain" / f"{task.source.key}-s{seed}"
    with locked(out):
        if not (out / "summary.json").is_file():
            src = write_array(
                work / "data" / f"source-{task.source.key}-s{seed}.npy",
                task.source.source_set(seed),
            )
            shutil.rmtree(out, ignore_errors=True)
            flowpost(
                "train",
                RECIPES["pretrained"],
                "--out",
                str(out),
                "--no-progress",
                *sets(data__path=src, train__seed=seed, eval__plots="false"),
            )
    return out


def train_args(
    cell: Cell, task: Task, work: Path, out: Path, extra: tuple[str, ...] = ()
) -> list[str]:
    """The ``flowpost train`` arguments of a post-training cell; ``extra``: more ``--set``
    overrides (``KEY=VALUE``), after the suite's own."""
    demos = write_array(
        work / "data" / f"{cell.task}-d{cell.demos}-s{cell.seed}.npy",
        task.demos(cell.demos, cell.seed),
    )
    kv: dict[str, Any] = {"data__name": "file", "data__path": demos, "train__seed": cell.seed}
    kv["eval__plots"] = "false"
    if cell.contender != "af_scratch":
        kv["init_from"] = pretrain(task, cell.seed, work)
    if cell.steps:
        kv.update(method__nfe=cell.steps, eval__nfe=cell.steps)
    if cell.contender == "fail_pd_pathwise":
        kv["method__pd_estimator"] = "pathwise"
    if cell.contender == "fail_pd_local":  # the recipe's default estimator is now pathwise
        kv["method__pd_estimator"] = "local"
    if cell.contender == "af_init":  # the pretrained run's network, so its weights load
        kv.update(model__hidden=256, model__depth=4)
    more = [x for kv_text in extra for x in ("--set", kv_text)]
    return [
        "train",
        RECIPES[cell.contender],
        "--out",
        str(out),
        "--no-progress",
        *sets(**kv),
        *more,
    ]


def run_cell(cell: Cell, work: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train (or reuse a finished run folder) and score one cell (``extra``: see
    :func:`train_args`)."""
    task = TASKS[cell.task]
    start = time.time()
    record: dict[str, Any] = {}
    if cell.contender == "pretrained":
        out = pretrain(task, cell.seed, work)
        record["command"] = f"flowpost train {RECIPES['pretrained']} (source {task.source.key})"
    else:
        out = work / "runs" / cell.key.replace("/", "-")
        args = train_args(cell, task, work, out, extra)
        record["command"] = "flowpost " + " ".join(map(str, args))
        if not (out / "summary.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            log = flowpost(*map(str, args))
            record["warnings"] = [ln for ln in log.splitlines() if "warn" in ln.lower()][:10]
    summary = json.loads((out / "summary.json").read_text())
    record["checkpoints"] = summary.get("checkpoints")
    record["metrics"] = {}
    n = draws(task)
    for k in cell.scored_steps:
        path = out / f"suite_samples_k{k}.npy"
        flowpost(
            "sample", str(out), "--nfe", str(k), "--n", str(n), "--seed", "7", "--out", str(path)
        )
        record["metrics"][str(k)] = score(task, np.load(path))
    record["seconds"] = round(time.time() - start, 1)
    return record


def draws(task: Task) -> int:
    """How many points a run is scored with: as many as the fresh set holds for digits."""
    return len(task.target.reference()) if task.target.kind == "digits" else SAMPLES


def floors(tasks: list[str], results: Path) -> None:
    """Store each task's W2 floor: a second fresh target set scored like a run."""
    have = load(results).get("floor", {})  # read once: a cell another worker adds is redone
    for name in tasks:
        if name not in have:
            task = TASKS[name]
            put(results, "floor", name, score(task, task.target.draw(draws(task), 5)))


def demo_references(cells: list[Cell], results: Path) -> None:
    """Store, per (pair, demonstrations, seed) of the post-training cells, the score of the
    demonstrations themselves, resampled with replacement to as many points as a run draws:
    what a model that reproduces its training data exactly would score. Where the pretrained
    flow already scores at that level, no post-training on those demonstrations can be
    expected to gain, whatever its method."""
    have = load(results).get("demos", {})  # read once, as in floors()
    for name, demos, seed in sorted({(c.task, c.demos, c.seed) for c in cells if c.demos}):
        key = f"{name}/d{demos}/s{seed}"
        if key in have:
            continue
        task = TASKS[name]
        x = task.demos(demos, seed)
        pick = np.random.default_rng(seed + 31).integers(0, len(x), draws(task))
        put(results, "demos", key, score(task, x[pick]))


def run_cells(
    cells: list[Cell],
    results: Path,
    work: Path,
    meta: dict[str, Any],
    runner: Callable[[Cell, Path], dict[str, Any]] = run_cell,
) -> int:
    """Run every cell the results file does not hold yet; returns how many ran."""
    ran = 0
    for cell in cells:
        if cell.key in load(results)["cells"]:
            continue
        held = claim(work, cell.key)
        if held is None:
            continue
        try:
            if cell.key in load(results)["cells"]:  # finished while we looked
                continue
            try:
                record = runner(cell, work)
            except RuntimeError as err:  # one clear line, the suite goes on
                record = {"error": str(err)}
            store(results, cell.key, record, meta)
            ran += 1
            w2 = {
                k: round(v.get("w2", float("nan")), 3) for k, v in record.get("metrics", {}).items()
            }
            print(f"{cell.key}: W2 {w2 or record.get('error')}", flush=True)
        finally:
            held.unlink(missing_ok=True)
    return ran


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["run", "report", "list", "compare"])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick subset (default)")
    size.add_argument("--full", action="store_true", help="every pair, demos, step, seed")
    p.add_argument("--tasks", nargs="*", help="restrict to these pairs")
    p.add_argument("--contenders", nargs="*", choices=CONTENDERS, help="restrict contenders")
    p.add_argument("--demos", nargs="*", type=int, help="restrict demonstration counts")
    p.add_argument("--seeds", nargs="*", type=int, help="restrict seeds")
    p.add_argument("--steps", nargs="*", type=int, help="restrict deployed steps (post-training)")
    p.add_argument(
        "--cells", nargs="*", help="run exactly these cell keys (task/contender/dD/kK/sS)"
    )
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        help="KEY=VALUE overrides of every post-training cell (a variant; needs --results)",
    )
    p.add_argument("--work", default=DEFAULT_WORK, help="run folders and arrays")
    p.add_argument("--results", default=str(RESULTS), help="the results JSON")
    p.add_argument("--out", default=str(ROOT / "docs" / "suite.md"), help="report: Markdown")
    args = p.parse_args()
    results = Path(args.results)
    if args.what == "compare":  # a --set variant's JSON beside the suite's own
        from suite_report import variant_table

        print(variant_table(load(RESULTS), load(results)))
        return
    if args.what == "report":
        from suite_report import render

        full = plan(list(TASKS), list(CONTENDERS), list(DEMOS), list(STEPS), list(SEEDS))
        quick = quick_plan(tuple(SEEDS))
        planned = {"quick": [c.key for c in quick], "full": [c.key for c in full]}
        Path(args.out).write_text(render(load(results), planned))
        print(f"wrote {args.out}")
        return
    cells = plan(list(TASKS), list(CONTENDERS), list(DEMOS), list(STEPS), list(SEEDS))
    cells = cells if args.full else quick_plan(tuple(args.seeds or (0,)))
    keep = lambda c: (  # noqa: E731
        (not args.tasks or c.task in args.tasks)
        and (not args.contenders or c.contender in args.contenders)
        and (not args.demos or c.demos in args.demos or c.contender == "pretrained")
        and (not args.seeds or c.seed in args.seeds)
        and (not args.steps or c.steps == 0 or c.steps in args.steps)
    )
    cells = [c for c in cells if keep(c)]
    if args.cells:
        if any((args.tasks, args.contenders, args.demos, args.seeds, args.steps)):
            raise SystemExit("--cells names the cells itself: drop --tasks / --contenders / "
                             "--demos / --seeds / --steps")  # fmt: skip
        cells = [parse_key(key) for key in args.cells]
    if args.what == "list":
        print("\n".join(c.key for c in cells), f"\n{len(cells)} cells", sep="")
        return
    if args.set and (results.resolve() == RESULTS.resolve() or args.work == DEFAULT_WORK):
        # the suite's finished run folders and claims would be taken for the variant's
        raise SystemExit("--set trains a variant of the recipes: give it its own --results "
                         "file and --work folder, not the suite's")  # fmt: skip
    size = "cells" if args.cells else "full" if args.full else "quick"
    meta: dict[str, Any] = {"size": size, "samples": SAMPLES}
    if args.set:
        meta["set"] = list(args.set)
    floors(sorted({c.task for c in cells}), results)
    demo_references(cells, results)
    runner = functools.partial(run_cell, extra=tuple(args.set))
    n = run_cells(cells, results, Path(args.work), meta, runner)
    print(f"{n} cells ran; results in {results}")


if __name__ == "__main__":
    main()
