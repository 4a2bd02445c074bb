"""How much of a post-trained mixture model's W2 is its mode weights: the task suite's runs
on the mixture pairs (8g-reweight, 8g-rotate, mix1d-reweight), rescored after resampling
their own samples to other mode weights.

For every run folder of ``bench_suite.py`` that still holds its scored samples
(``suite_samples_k{steps}.npy``), the samples are assigned to the target's modes
(:func:`flowpost.data.toys.assign_modes`, the evaluator's assignment), then redrawn, with
replacement and a fixed seed, within each mode so that the modes carry

* ``split``: the weights of the demonstrations the run trained on (its training split,
  rebuilt from the run's config exactly as the trainer builds it);
* ``target``: the target's true weights;

* ``own``: the model's own weights (the same draw; it only removes the sampling noise of
  the mode counts, which the other two do as well, so compare these three with each other);

the samples off every mode are kept as they are. The W2 of each against the suite's fresh
target set says what the model's loss is made of: ``w2_own - w2_target`` is the cost of its
mode weights, ``w2_split - w2_target`` the part its demonstrations' own weights explain, and
``w2_own - w2_split`` what the post-training adds to that (a model that sharpens the weights
of its demonstrations has ``w2_own > w2_split``). Exact mode proportions put these W2 below
those of two fresh sets (0.16-0.21 on the 2-D pairs), whose mode counts vary by chance.

    python benchmarks/bench_mode_weights.py run --work /tmp/suite   # resumable, per run
    python benchmarks/bench_mode_weights.py report                  # the table from the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_suite import RECIPES  # noqa: E402
from suite_report import NAMES, entropy  # noqa: E402
from suite_tasks import TASKS, score  # noqa: E402

RESULTS = HERE / "results" / "mode_weights.json"
MIXTURE_PAIRS = ("8g-reweight", "8g-rotate", "mix1d-reweight")
ADVERSARIAL = ("fail_pd_local", "fail_pd_pathwise", "fail_pg", "af_scratch", "af_init")


def resample_to(x: np.ndarray, modes: np.ndarray, weights: np.ndarray, seed: int = 0) -> np.ndarray:
    """``x`` redrawn within its modes (``modes[i]``: sample i's mode, -1 for none) so that
    mode k holds ``weights[k]`` of the assigned mass; unassigned samples are kept as they are.
    A mode with no sample keeps none (its weight goes to the others); with no sample on any
    mode asked for, ``x`` comes back as it is.

    >>> x = np.arange(10.0)[:, None]
    >>> modes = np.array([0] * 8 + [1, -1])
    >>> out = resample_to(x, modes, np.array([0.5, 0.5]))
    >>> len(out), int((out[:, 0] == 8).sum()), int((out[:, 0] == 9).sum())
    (10, 4, 1)
    """
    rng = np.random.default_rng(seed)
    off = x[modes < 0]
    present = np.array([bool((modes == k).any()) for k in range(len(weights))])
    w = np.where(present, weights, 0.0)
    if w.sum() <= 0:  # no sample on any mode asked for: nothing to redraw
        return x.copy()
    w = w / w.sum()
    counts = np.floor(w * (len(x) - len(off))).astype(int)
    counts[np.argsort(-(w * (len(x) - len(off)) - counts))[: len(x) - len(off) - counts.sum()]] += 1
    parts = [off]
    for k, c in enumerate(counts):
        if c:
            parts.append(x[rng.choice(np.flatnonzero(modes == k), size=c, replace=True)])
    return np.concatenate(parts)


def mode_structure(task_name: str) -> tuple[Any, np.ndarray]:
    """(the target's :class:`flowpost.data.toys.ModeInfo`, its true mode weights)."""
    from flowpost.data.toys import mode_info

    target = TASKS[task_name].target
    info = mode_info(target.name, target.transform)
    return info, info.weights.double().numpy()


def training_split(run: Path) -> np.ndarray:
    """The demonstrations run ``run`` trained on (see :func:`training_split_of`)."""
    from flowpost.config import load_yaml

    return training_split_of(load_yaml(run / "config.yaml"))


def training_split_of(config: dict[str, Any]) -> np.ndarray:
    """The demonstrations a run of ``config`` (a config file's mapping) trains on, rebuilt
    as the trainer builds them: the data section's split, then the fraction held out for
    checkpoint selection."""
    from flowpost.data import load_data
    from flowpost.methods.base import get_method_class
    from flowpost.train.config import build_run_config
    from flowpost.train.selection import holdout_fraction, split_holdout

    cfg = build_run_config(config)
    train = load_data(cfg.data).train
    fraction = holdout_fraction(  # the trainer's rule (arrays in memory: never streamed)
        cfg.train.holdout_fraction,
        post_training=bool(cfg.init_from),
        targets_data=get_method_class(cfg.method.name).targets_data,
        streamed=False,
    )
    if fraction > 0:
        train, _ = split_holdout(train, fraction, cfg.data.seed)
    return train.x.numpy()


def weights_of(x: np.ndarray, task_name: str) -> np.ndarray:
    """The mode weights of ``x`` on ``task_name``'s target modes, over the assigned samples."""
    import torch

    from flowpost.data.toys import assign_modes

    info, target = mode_structure(task_name)
    flat = torch.from_numpy(x.reshape(len(x), -1)).float()
    modes = assign_modes(flat, info.centers, info.radius).numpy()
    counts = np.bincount(modes[modes >= 0], minlength=len(target))
    return counts / max(int(counts.sum()), 1)


def split_weights(work: Path) -> dict[str, list[float]]:
    """``{pair/contender/dN/sS: mode weights}`` of the training split every adversarial
    contender's recipe makes of each mixture pair's demonstration file in ``work/data`` (the
    suite's run folders need not exist: the split depends on the file and the recipe only)."""
    from flowpost.config import load_yaml

    out = {}
    for path in sorted((work / "data").glob("*.npy")):
        pair = next((p for p in MIXTURE_PAIRS if path.stem.startswith(p + "-")), None)
        if pair is None:
            continue
        d, s = path.stem[len(pair) + 1 :].split("-")
        for contender in ADVERSARIAL:
            config = load_yaml(ROOT / RECIPES[contender])
            config["data"]["path"] = str(path)
            if contender != "af_scratch":
                config["init_from"] = "pretrained"  # post-training: the selection hold-out
            weights = weights_of(training_split_of(config), pair)
            out[f"{pair}/{contender}/{d}/{s}"] = weights.round(4).tolist()
    return out


def measure(run: Path, task_name: str, steps: int) -> dict[str, Any]:
    import torch

    from flowpost.data.toys import assign_modes

    info, target = mode_structure(task_name)
    task = TASKS[task_name]

    def modes_of(a: np.ndarray) -> np.ndarray:
        return assign_modes(torch.from_numpy(a).float(), info.centers, info.radius).numpy()

    x = np.load(run / f"suite_samples_k{steps}.npy").reshape(-1, info.centers.shape[1])
    demos = training_split(run)
    split = weights_of(demos, task_name)
    xm = modes_of(x)
    model = np.bincount(xm[xm >= 0], minlength=len(target)) / max(int((xm >= 0).sum()), 1)
    return {
        "steps": steps,
        "demos_trained_on": len(demos),
        "w2": score(task, x)["w2"],
        "w2_own": score(task, resample_to(x, xm, model))["w2"],
        "w2_split": score(task, resample_to(x, xm, split))["w2"],
        "w2_target": score(task, resample_to(x, xm, target))["w2"],
        "weights": model.round(4).tolist(),
        "split_weights": split.round(4).tolist(),
        "entropy_change": entropy(model.tolist()) - entropy(split.tolist()),
    }


def run_all(work: Path, results: Path) -> None:
    data = json.loads(results.read_text()) if results.is_file() else {"runs": {}}
    data["splits"] = {**data.get("splits", {}), **split_weights(work)}
    results.write_text(json.dumps(data, indent=1, sort_keys=True))
    for run in sorted((work / "runs").glob("*")):
        pair = next((p for p in MIXTURE_PAIRS if run.name.startswith(p + "-")), None)
        rest = run.name[len(pair) + 1 :].split("-") if pair else []
        if pair is None or len(rest) != 4 or rest[0] not in ADVERSARIAL:
            continue
        contender, d, k, s = rest
        key = f"{pair}/{contender}/{d}/{k}/{s}"
        samples = run / f"suite_samples_k{k[1:]}.npy"
        if key in data["runs"] or not samples.is_file():
            continue  # finished runs are never remeasured
        data["runs"][key] = measure(run, pair, int(k[1:]))
        results.write_text(json.dumps(data, indent=1, sort_keys=True))
        print(key, {m: round(data["runs"][key][m], 3) for m in ("w2", "w2_own", "w2_split")})


def table(data: dict[str, Any], suite: dict[str, Any]) -> str:
    """One row per run: its W2 as made, resampled to its training split's and to the
    target's mode weights, and the pretrained flow's at the same steps and seed."""
    lines = [
        "| run | W2 | W2, own weights | W2, split's weights | W2, target's weights | "
        "pretrained | entropy change |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(data["runs"].items()):
        pair, contender, d, k, s = key.split("/")
        pre = (
            suite.get("cells", {})
            .get(f"{pair}/pretrained/d0/k0/{s}", {})
            .get("metrics", {})
            .get(k[1:], {})
            .get("w2")
        )
        name = f"{pair}, {NAMES[contender]}, {d[1:]} demos, {k[1:]} steps, seed {s[1:]}"
        lines.append(
            f"| {name} | {r['w2']:.3f} | {r['w2_own']:.3f} | {r['w2_split']:.3f} | "
            f"{r['w2_target']:.3f} | "
            + ("-" if pre is None else f"{pre:.3f}")
            + f" | {r['entropy_change']:+.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["run", "report"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/flowpost-suite"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.what == "run":
        run_all(args.work, args.results)
    data = json.loads(args.results.read_text())
    print(table(data, json.loads((HERE / "results" / "suite.json").read_text())))


if __name__ == "__main__":
    main()
