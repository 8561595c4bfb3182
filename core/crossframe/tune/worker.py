"""A worker: runs trials of one study until it has its trial count (or its time is up).

``crossframe tune --jobs 1`` runs one worker in its own process; ``--jobs N`` starts N of these as
child processes (``python -m crossframe.tune.worker STUDY_DIR --index K``), each with its thread
count set through the environment, all sharing the study's storage. Workers started by hand on
other machines (``crossframe tune CONFIG --storage URL``) join the same way.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crossframe.errors import CrossframeError, RunError
from crossframe.tune.plan import Plan
from crossframe.tune.study import counts, make_pruner, make_sampler, make_storage, open_study
from crossframe.tune.trial import Objective, TrialFailed

#: a worker gives up after this many failed trials in a row (the search space is probably broken)
MAX_FAILURES_IN_A_ROW = 5
#: sampler seeds of workers that start together differ by this much times their index
SEED_STRIDE = 7919


@dataclass
class WorkerStats:
    """What one worker did."""

    ran: list[int] = field(default_factory=list)
    failures_in_a_row: int = 0


def quiet_optuna() -> None:
    """crossframe prints its own line per trial; Optuna's own log lines would repeat them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def open_plan_study(plan: Plan, index: int = 0) -> Any:
    """Open (or create) ``plan``'s study with a sampler seeded for worker ``index``.

    The seed also moves with the trials already in the study, so a resumed random search does not
    draw the values of its first session again.
    """
    storage = make_storage(plan.storage)
    pruner = make_pruner(plan.tune, plan.total_steps, int(plan.base.get("train", {}).get("eval_every") or 0))
    probe = open_study(storage, plan.name, plan.tune, None, pruner)
    seed = plan.seed + SEED_STRIDE * index + len(probe.get_trials(deepcopy=False))
    return open_study(storage, plan.name, plan.tune, make_sampler(plan.tune, seed), pruner)


def work(plan: Plan, index: int = 0, on_finished: Callable[[Any, Any], None] | None = None,
         deadline: float | None = None) -> WorkerStats:
    """Run trials until the study has ``tune.trials`` finished (complete or pruned) trials.

    ``on_finished(study, frozen_trial)`` is called after each trial this worker ran; ``deadline``
    (``time.monotonic()``) stops starting trials after it. Raises the first config error of a trial.
    """
    from optuna.exceptions import ExperimentalWarning

    quiet_optuna()
    study = open_plan_study(plan, index)
    objective = Objective(plan)
    stats = WorkerStats()

    def finished(study: Any, trial: Any) -> None:
        stats.ran.append(trial.number)
        stats.failures_in_a_row = stats.failures_in_a_row + 1 if trial.state.name == "FAIL" else 0
        if on_finished is not None:
            on_finished(study, trial)

    while deadline is None or time.monotonic() < deadline:
        now = counts(study)
        if now.finished + now.running >= plan.tune.trials:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna's heartbeats
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[finished])
        if stats.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            last = study.trials[stats.ran[-1]].user_attrs.get("error", "see the trials table")
            raise RunError(f"tune: {MAX_FAILURES_IN_A_ROW} trials in a row failed; last: {last}")
    return stats


def main(argv: list[str] | None = None) -> int:
    """``python -m crossframe.tune.worker STUDY_DIR --index K [--deadline-s S]``: one child worker."""
    parser = argparse.ArgumentParser(prog="python -m crossframe.tune.worker")
    parser.add_argument("study_dir")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--deadline-s", type=float, default=None, help="seconds from now to start no more trials")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.deadline_s if args.deadline_s is not None else None
    try:
        work(Plan.load(args.study_dir), args.index, deadline=deadline)
    except CrossframeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
