"""Held-out demonstrations, the best checkpoint and the collapse guard.

Generic trainer machinery: it scores whatever the method's ``generate`` produces and never
looks at a method's losses.

* :func:`split_holdout` sets aside a fraction of the training samples (the demonstrations)
  that training never sees; too few samples for the fraction is a one-line error.
* :class:`Selector` scores the model on them: ``score`` is the exact W2 (or, with
  ``metric="energy"``, the energy distance with U-statistics within each set) between model
  samples and the held-out demonstrations (lower is better), and ``coverage`` is the k-NN
  coverage (:func:`flowpost.eval.metrics.knn_precision_recall`) of the training
  demonstrations by as many model samples: about 0.97 when the model matches them, lower when
  it has collapsed, also inside its modes.
* :meth:`Selector.judge` calls a check ``best`` (within the held-out score's noise ``sd`` of
  the lowest score so far, the start included, the later model winning ties; so the kept
  model is never worse than the start on the held-out set by more than that noise; with
  ``coverage_gain > 0`` also a check whose coverage beats the best's by that much while its
  score is short of a collapse, which trades that bound for diversity the few held-out
  points cannot see; with ``start_margin > 0`` the start stays the best until a check's
  score is below the start's by ``start_margin * sd`` (a coverage gain does not displace
  it), and the rule above applies from then on), ``collapse`` (the score
  above ``best + tolerance * max(best - floor, sd) + 3 sd`` and above ``floor + 3 sd``,
  where ``floor`` and ``sd`` are the mean and spread of the score of bootstrap resamples of
  the training demonstrations, i.e. of a perfect model, so a score a perfect model reaches
  is never a collapse however lucky the start was; or the coverage below
  ``1 - coverage_drop`` times the best's; or non-finite samples) or
  ``ok``. The trainer saves the best into ``best/`` and, on a collapse, rolls the weights back
  to it and lowers the learning rates.
* The start test (``start_test``: warn / keep_start / off): at the first check,
  :func:`flowpost.eval.two_sample.energy_test` of the starting model's samples against all
  the demonstrations. When they cannot tell the two apart (p above ``start_alpha``; not
  evidence that the two are equal), they can barely steer post-training, and on the task
  suite such runs ended worse than their start about as often as better: ``warn`` says so in
  one line, ``keep_start`` also keeps the start as the best while it is the best (for the
  whole run, unless a resumed run had kept another; the guard still rolls back to it on a
  collapse). ``validation/start_p`` is logged with the first check.
* :class:`RolloutSelector` does the same on a robot task by the task itself
  (``train.select_rollouts``): closed-loop roll-outs on validation episodes, each check paired
  episode by episode with the best so far (an exact sign test), the start kept until a check
  beats it.

Example:
    >>> import torch
    >>> from flowpost.data.base import ArrayData, DataSpec
    >>> demos = ArrayData(torch.randn(200, 2, generator=torch.Generator().manual_seed(0)))
    >>> train, held = split_holdout(demos, 0.1, seed=0)
    >>> len(train), len(held)
    (180, 20)
    >>> sel = Selector(held, train)
    >>> good = sel.measure(torch.randn(500, 2, generator=torch.Generator().manual_seed(1)))
    >>> sel.judge(good)[0]
    'best'
    >>> sel.judge(sel.measure(0.1 * torch.randn(500, 2)))[0]  # collapsed to the centre
    'collapse'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch
from torch import Tensor

from flowpost.data.base import ArrayData, DataSpec
from flowpost.data.registry import split_off
from flowpost.eval.evaluator import Evaluator
from flowpost.eval.metrics import knn_precision_recall, w2
from flowpost.eval.two_sample import energy_test
from flowpost.train.checkpoint import CheckpointError, checkpoint_dirs, latest_checkpoint

MIN_HOLDOUT = 5
BEST_DIR = "best"
START_TESTS = ("warn", "keep_start", "off")


def chosen_checkpoint(run: Path, *, last: bool = False, use: str = "load") -> Path:
    """The checkpoint a finished run folder is used through: the best one kept by held-out
    selection if there is one (unless ``last``), else the newest. A folder that is not a run,
    or holds no checkpoint, is one :class:`CheckpointError` line (``use``: what for)."""
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run}: not a run folder (no config.yaml)")
    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        raise CheckpointError(f"{run}: no checkpoint to {use}")
    best = None if last else latest_checkpoint(run / BEST_DIR)
    return best or found


def holdout_fraction(
    fraction: float | None, *, post_training: bool, targets_data: bool, streamed: bool
) -> float:
    """The fraction of the training samples a run holds out for checkpoint selection:
    ``train.holdout_fraction`` when set, else 0.1 when post-training (``init_from``) a method
    that learns the data (not a reward's) from samples held in memory, else none.

    >>> holdout_fraction(None, post_training=True, targets_data=True, streamed=False)
    0.1
    >>> holdout_fraction(None, post_training=False, targets_data=True, streamed=False)
    0.0
    """
    if fraction is not None:
        return fraction
    return 0.1 if post_training and targets_data and not streamed else 0.0


def split_holdout(data: ArrayData, fraction: float, seed: int) -> tuple[ArrayData, ArrayData]:
    """(kept for training, held out): a seeded random ``fraction`` of ``data`` is held out."""
    n = len(data)
    k = int(round(fraction * n))
    if k < MIN_HOLDOUT or n - k < MIN_HOLDOUT:
        need = math.ceil((MIN_HOLDOUT - 0.5) / fraction) if fraction > 0 else n
        raise ValueError(
            f"{n} demonstrations are too few to hold out train.holdout_fraction={fraction} "
            f"(it needs {MIN_HOLDOUT} held out and {MIN_HOLDOUT} to train on: give at least "
            f"{max(need, 2 * MIN_HOLDOUT)}, or set train.holdout_fraction=0)"
        )
    return split_off(data, k, seed + 7717)


def check_pretrained_data(init_from: str | Path, spec: DataSpec) -> None:
    """One clear error when the data's sample shape differs from the pretrained run's (read
    from its newest checkpoint's record; silent when the run recorded none)."""
    root = Path(init_from)
    candidates = (
        [root] if (root / "state.json").is_file() else checkpoint_dirs(root / "checkpoints")
    )
    if not candidates:
        return
    try:
        state = json.loads((candidates[-1] / "state.json").read_text())
        shape = tuple(state["run"]["data"]["shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if shape != tuple(spec.shape):
        raise ValueError(
            f"the data's samples have shape {tuple(spec.shape)} but the pretrained flow in "
            f"{init_from} was trained on shape {shape}; give demonstrations of the same "
            "dimension as the pretrained flow's data"
        )


def energy_u(x: Tensor, y: Tensor) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` with the within-set means taken over
    distinct pairs (unbiased: about 0 for two sets of one distribution, may be < 0)."""
    a = x.reshape(x.shape[0], -1).double()
    b = y.reshape(y.shape[0], -1).double()

    def within(z: Tensor) -> Tensor:
        n = z.shape[0]
        return torch.cdist(z, z).sum() / max(n * (n - 1), 1)

    return float(2 * torch.cdist(a, b).mean() - within(a) - within(b))


@dataclass
class Check:
    """One validation: the step, the score (lower is better) and the coverage of the
    demonstrations (held-out selection), or the per-episode outcomes (``solved``, one
    ``"1"``/``"0"`` per validation episode: roll-out selection, where the score is the
    failure rate and the coverage is not measured)."""

    step: int
    score: float
    coverage: float = float("nan")
    solved: str = ""
    # both held-out statistics of this check, whichever one ``score`` is (logged, so a
    # selection rule on the other statistic can be replayed from metrics.jsonl; not saved)
    heldout: dict[str, float] = field(default_factory=dict, compare=False)
    # the start test's p-value (the first check of a run with train.start_test; else nan)
    start_p: float = field(default=float("nan"), compare=False)

    def as_dict(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {"step": self.step, "score": self.score}
        if self.solved:
            out["solved"] = self.solved
        else:
            out["coverage"] = self.coverage
        if not math.isnan(self.start_p):
            out["start_p"] = self.start_p
        return out

    @classmethod
    def from_dict(cls, value: Mapping[str, object]) -> Check:
        return cls(
            int(value["step"]),  # type: ignore[call-overload]
            float(value["score"]),  # type: ignore[arg-type]
            float(value.get("coverage", float("nan"))),  # type: ignore[arg-type]
            str(value.get("solved", "")),
            start_p=float(value.get("start_p", float("nan"))),  # type: ignore[arg-type]
        )


class Selector:
    """Scores models on held-out demonstrations and keeps track of the best and the start.

    ``heldout``: the held-out demonstrations; ``demos``: the training ones (the coverage
    reference, at most ``max_ref`` of them). ``tolerance`` and ``coverage_drop`` set when a
    check counts as a collapse (see the module docstring).
    """

    # what a check scores: samples against held-out demonstrations (not the deployed policy)
    source = "held-out demos"
    deployed = False

    def __init__(
        self,
        heldout: ArrayData,
        demos: ArrayData,
        *,
        tolerance: float = 1.0,
        coverage_drop: float = 0.3,
        coverage_gain: float = 0.0,
        metric: str = "w2",
        start_margin: float = 0.0,
        start_test: str = "off",
        start_alpha: float = 0.05,
        k: int = 5,
        max_ref: int = 1000,
    ) -> None:
        if metric not in ("w2", "energy"):
            raise ValueError(f"train.select_metric must be 'w2' or 'energy', got {metric!r}")
        if start_test not in START_TESTS:
            raise ValueError(f"train.start_test must be one of {START_TESTS}, got {start_test!r}")
        self.start_test, self.start_alpha = start_test, start_alpha
        self.metric = metric
        g = torch.Generator().manual_seed(0)
        held = heldout.x.reshape(len(heldout), -1).double().cpu()
        self.heldout = held[torch.randperm(len(held), generator=g)[:max_ref]]
        ref = demos.x.reshape(len(demos), -1).double().cpu()
        self.ref = ref[torch.randperm(len(ref), generator=g)[:max_ref]]
        # the start test's demonstrations: all of them (at most max_ref of each split)
        self.all_demos = torch.cat([self.ref, self.heldout])
        self.k = min(k, len(self.ref) - 1)
        self.tolerance = tolerance
        self.coverage_drop = coverage_drop
        self.coverage_gain = coverage_gain
        self.start_margin = start_margin
        # the score of a perfect model: held-out vs bootstrap resamples of the training demos
        # (as many as a check draws), its mean and spread
        n = len(self.ref)
        floor = torch.tensor(
            [self._score(self.ref[torch.randint(0, n, (n,), generator=g)]) for _ in range(5)]
        )
        self.floor, self.noise = float(floor.mean()), float(floor.std())
        self.start: Check | None = None
        self.best: Check | None = None
        self.lowest = float("inf")

    def _score(self, x: Tensor, metric: str | None = None) -> float:
        metric = metric or self.metric
        return w2(x, self.heldout) if metric == "w2" else energy_u(x, self.heldout)

    @property
    def n_samples(self) -> int:
        """How many model samples a check needs."""
        return max(len(self.ref), 200)

    def check(self, ev: Evaluator, nfe: int, *, solver: str, seed: int) -> Check:
        """Score the evaluator's model: ``n_samples`` samples against the held-out set; the
        run's first check also runs the start test (unless it is off)."""
        samples = ev.sample(self.n_samples, nfe, solver=solver, seed=seed)
        check = self.measure(samples)
        if self.start is None and self.start_test != "off" and math.isfinite(check.score):
            check.start_p = energy_test(samples[:1000], self.all_demos).p
        return check

    @property
    def start_untold(self) -> bool:
        """Whether the start test found that the demonstrations cannot tell the start
        from their own distribution (p above the level)."""
        return self.start is not None and self.start.start_p > self.start_alpha

    def start_warning(self) -> str | None:
        """The start test's one warning line (without the ``warning: step N:`` prefix), or
        ``None`` when the demonstrations tell the start apart or the test is off."""
        if self.start_test == "off" or not self.start_untold:
            return None
        assert self.start is not None
        action = (
            "the start is kept as the best model (train.start_test: keep_start)"
            if self.start_test == "keep_start"
            else "train.start_test: keep_start would keep the start"
        )
        return (
            f"the {len(self.all_demos)} demonstrations cannot tell the starting model from "
            f"their own distribution (energy test p = {self.start.start_p:.3f} > "
            f"{self.start_alpha}): post-training has little to learn from them and may end "
            f"worse than the start; {action}"
        )

    def logged(self, check: Check) -> dict[str, float]:
        """What a check adds to ``metrics.jsonl``."""
        extra = {f"validation/{name}": value for name, value in check.heldout.items()}
        if not math.isnan(check.start_p):
            extra["validation/start_p"] = check.start_p
        return {"validation/score": check.score, "validation/coverage": check.coverage, **extra}

    def describe(self) -> dict[str, object]:
        """What ``summary.json`` says the selection was made on (and the start test)."""
        out: dict[str, object] = {"heldout_demos": len(self.heldout)}
        if self.start is not None and not math.isnan(self.start.start_p):
            out["start_test"] = {"p": self.start.start_p, "alpha": self.start_alpha,
                                 "mode": self.start_test, "untold": self.start_untold}  # fmt: skip
        return out

    def measure(self, samples: Tensor, step: int = 0) -> Check:
        x = samples.reshape(samples.shape[0], -1).double().cpu()
        if not bool(torch.isfinite(x).all()):
            return Check(step, float("inf"), 0.0, heldout={"w2": math.inf, "energy": math.inf})
        cov = knn_precision_recall(x[: len(self.ref)], self.ref, k=self.k)["coverage"]
        both = {metric: self._score(x, metric) for metric in ("w2", "energy")}
        return Check(step, both[self.metric], cov, heldout=both)

    def judge(self, check: Check) -> tuple[str, str]:
        """``("best" | "collapse" | "ok", reason)``; records the start and the best."""
        if self.start is None:
            self.start = check
        best = self.best
        if best is None:
            self.best, self.lowest = check, check.score
            return "best", ""
        if not math.isfinite(check.score):
            return "collapse", "non-finite samples"
        if check.coverage < (1 - self.coverage_drop) * best.coverage:
            return "collapse", (
                f"coverage of the demonstrations {check.coverage:.2f} vs {best.coverage:.2f} "
                f"at step {best.step} (mode collapse)"
            )
        # with a start margin, the start stays the best until a check beats it clearly: where
        # the start is already as good as the demonstrations allow, a later model within the
        # noise is as likely worse as better on fresh data
        start = self.start  # set above by the first check
        # keep_start after an untold start test pins the start: nothing displaces it
        # (only while the best is the start: a run resumed into keep_start after another
        # best was kept goes on by the plain rule)
        pinned = self.start_test == "keep_start" and self.start_untold and best.step == start.step
        holding_start = (self.start_margin > 0 or pinned) and best.step == start.step
        if pinned:
            bar = -math.inf
        elif holding_start:
            bar = best.score - self.start_margin * self.noise
        else:
            # within the held-out set's own noise of the lowest score so far, the later (longer
            # trained) model wins: with a few dozen held-out points the ripples are noise
            bar = min(self.lowest, best.score) + self.noise
        if check.score <= bar:
            self.best = check
            self.lowest = min(self.lowest, check.score)
            return "best", ""
        excess = max(best.score - self.floor, self.noise)
        # a score a perfect model reaches (within 3 sd of the floor) is never a collapse: with
        # a few dozen held-out points a lucky start can score far below the floor, and every
        # later check would then look diverged, however much better it covers the demos
        diverged = check.score > max(
            best.score + self.tolerance * excess + 3 * self.noise, self.floor + 3 * self.noise
        )
        if self.coverage_gain > 0 and not diverged and not holding_start:
            # a few dozen held-out points barely see inside the modes: a model that covers
            # the demonstrations clearly better, at a score short of a collapse, is kept
            if check.coverage >= best.coverage + self.coverage_gain:
                self.best = check
                self.lowest = min(self.lowest, check.score)
                return "best", ""
        if diverged:
            return "collapse", (
                f"held-out {self.metric} {check.score:.3g} vs {best.score:.3g} at step {best.step}"
            )
        return "ok", ""

    def state(self) -> dict[str, object]:
        return {**saved_checks(self), "lowest": self.lowest}

    def load_state(self, state: dict[str, object]) -> None:
        self.lowest = float(state.get("lowest", self.lowest))  # type: ignore[arg-type]
        load_checks(self, state)


def saved_checks(selector: Selector | RolloutSelector) -> dict[str, object]:
    """A selector's ``start`` and ``best`` checks as saved with the best checkpoint."""
    return {name: None if (check := getattr(selector, name)) is None else check.as_dict()
            for name in ("start", "best")}  # fmt: skip


def load_checks(selector: Selector | RolloutSelector, state: Mapping[str, object]) -> None:
    """Restore a selector's ``start`` and ``best`` checks from its saved state."""
    for name in ("start", "best"):
        value = state.get(name)
        if isinstance(value, dict):
            setattr(selector, name, Check.from_dict(value))


def paired_counts(new: str, old: str) -> tuple[int, int]:
    """Episodes ``new`` solves and ``old`` does not (wins), and the reverse (losses), of two
    ``"1"``/``"0"`` outcome strings over the same episodes."""
    if len(new) != len(old) or not new:
        raise ValueError(f"paired outcomes need equal, non-empty lengths: {len(new)} vs {len(old)}")
    wins = sum(a == "1" and b == "0" for a, b in zip(new, old, strict=True))
    losses = sum(a == "0" and b == "1" for a, b in zip(new, old, strict=True))
    return wins, losses


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign (McNemar) test: the probability of at least ``wins`` wins among
    ``wins + losses`` episodes that differ, if each were a fair coin (1 when none differ)."""
    n = wins + losses
    return float(Fraction(sum(math.comb(n, k) for k in range(wins, n + 1)), 2**n))


# a fall this unlikely under no change (one-sided, 3 standard deviations) is a collapse
COLLAPSE_P = 0.00135


class RolloutSelector:
    """Scores models by closed-loop roll-outs on validation episodes (robot tasks).

    Each check rolls the EMA policy out on the same ``episodes`` episodes (seeded ``seed``:
    :func:`flowpost.envs.rollout.eval_seed`, disjoint from the evaluation's when the seeds
    differ) with the deployed sampler (``nfe``, ``solver``, ``noise_scale``), and records
    which episodes succeed. The score is the failure rate. Unlike held-out demonstrations,
    the roll-outs measure the goal itself, so the start is kept until a later model proves
    better: a check becomes the ``best`` only when it wins more of the episodes on which it
    and the best differ than it loses, with a one-sided exact sign-test p-value below ``p``
    (a gain of 4 episodes without a loss is p = 1/16: noise); it is a ``collapse`` when it
    loses more than it wins with p below ``COLLAPSE_P`` and its success rate is more than
    ``drop`` under the best's. The kept model is therefore never worse than the start on the
    validation episodes, and where no check clears the bar it *is* the start. The setting is
    saved with the state, and a resumed run must roll out the same episodes the same way.

    Example:
        >>> sel = RolloutSelector(episodes=8, seed=1)
        >>> sel.judge(Check(0, 0.5, solved="11110000"))[0]
        'best'
        >>> sel.judge(Check(100, 0.375, solved="11110100"))[0]  # one episode more: noise
        'ok'
        >>> sel.judge(Check(200, 0.0, solved="11111111"))[0]  # 4 of 4: p = 1/16, still noise
        'ok'
        >>> sel.judge(Check(300, 1.0, solved="00000000"))[0]  # 4 losses: not a collapse yet
        'ok'
    """

    # what a check scores: the policy as deployed (its task and noise scale), rolled out
    source = "validation roll-outs"
    deployed = True

    def __init__(
        self,
        episodes: int,
        *,
        seed: int,
        p: float = 0.025,
        drop: float = 0.05,
        nfe: int = 2,
        solver: str = "euler",
        noise_scale: float = 1.0,
    ) -> None:
        if episodes < 1:
            raise ValueError(f"train.select_rollouts: episodes must be >= 1, got {episodes}")
        self.episodes, self.p, self.drop = episodes, p, drop
        self.seed, self.nfe, self.solver, self.noise_scale = seed, nfe, solver, float(noise_scale)
        self.start: Check | None = None
        self.best: Check | None = None

    def check(self, ev: Evaluator, nfe: int, *, solver: str, seed: int) -> Check:
        """Roll the evaluator's policy out on the validation episodes (``nfe``, ``solver`` and
        ``seed`` are the selector's own, fixed at construction, so that checks pair up)."""
        if ev.robot is None:
            raise ValueError("train.select_rollouts: roll-outs need a robot task")
        distances: list[float] = []
        ev.rollouts(self.nfe, solver=self.solver, episodes=self.episodes, seed=self.seed,
                    distances=distances)  # fmt: skip
        threshold = ev.robot.task.threshold
        # a failed simulation (MuJoCo resets on non-finite actions) ends far from the target
        solved = "".join("1" if d < threshold else "0" for d in distances)
        return Check(0, 1.0 - solved.count("1") / len(solved), solved=solved)

    @property
    def setting(self) -> dict[str, object]:
        """How the validation roll-outs are run (saved with the state; fixed for a run)."""
        return {"episodes": self.episodes, "seed": self.seed, "nfe": self.nfe,
                "solver": self.solver, "noise_scale": self.noise_scale}  # fmt: skip

    def logged(self, check: Check) -> dict[str, float]:
        return {"validation/success_rate": 1.0 - check.score}

    def describe(self) -> dict[str, object]:
        return {"validation_episodes": self.episodes, "validation_seed": self.seed}

    def judge(self, check: Check) -> tuple[str, str]:
        """``("best" | "collapse" | "ok", reason)``; records the start and the best."""
        if self.start is None:
            self.start = check
        best = self.best
        if best is None:
            self.best = check
            return "best", ""
        wins, losses = paired_counts(check.solved, best.solved)
        if wins > losses and sign_test_p(wins, losses) < self.p:
            self.best = check
            return "best", ""
        fall = (losses - wins) / self.episodes
        if losses > wins and sign_test_p(losses, wins) < COLLAPSE_P and fall > self.drop:
            return "collapse", (
                f"validation success {1 - check.score:.3f} vs {1 - best.score:.3f} at step "
                f"{best.step} on {self.episodes} episodes ({losses} lost, {wins} won)"
            )
        return "ok", ""

    def state(self) -> dict[str, object]:
        return {**saved_checks(self), "setting": self.setting}

    def load_state(self, state: dict[str, object]) -> None:
        saved = state.get("setting")
        if isinstance(saved, dict) and saved != self.setting:
            changed = ", ".join(
                f"{k} {saved.get(k)} -> {v}" for k, v in self.setting.items() if saved.get(k) != v
            )
            raise ValueError(
                f"the validation roll-outs changed on resume ({changed}): the kept best was "
                "measured on other episodes or with another sampler; resume with the run's "
                "eval settings, or start a new run"
            )
        load_checks(self, state)


def scale_learning_rates(optimizers: Mapping[str, torch.optim.Optimizer], factor: float) -> None:
    """Multiply every parameter group's ``lr`` (and the ``base_lr`` schedules start from)."""
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] *= factor
            if "base_lr" in group:
                group["base_lr"] *= factor


__all__ = [
    "BEST_DIR",
    "MIN_HOLDOUT",
    "Check",
    "Selector",
    "check_pretrained_data",
    "energy_u",
    "scale_learning_rates",
    "split_holdout",
]
