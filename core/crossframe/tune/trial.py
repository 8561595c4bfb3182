"""One trial: an ordinary run directory (``<study>/trials/NNNN``) trained through ``crossframe.run``
on any backend, each evaluation reported to Optuna's pruner through the loop's ``on_eval_end`` hook
(or, with ``tune.budget: schedule``, first one run per smaller budget, ``trials/NNNN-bR``, each
reported at its budget: see :mod:`crossframe.tune.budgets`).

A pruned trial stops in the loop (``run.should_stop``), writes its checkpoint like any stopped run,
and is recorded as pruned. A trial whose training fails (a non-finite loss, a framework error) is
recorded as failed with its one-line reason; a config error ends the whole study, since every
trial would repeat it.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from crossframe import hookimpl
from crossframe.errors import ConfigError, CrossframeError
from crossframe.tune.budgets import budget_config, budget_steps
from crossframe.tune.plan import Plan
from crossframe.tune.space import suggest, with_values
from crossframe.tune.study import owner_attrs

THREAD_ENV = "OMP_NUM_THREADS"
INTERRUPTED = "interrupted (Ctrl-C)"


class TrialFailed(Exception):
    """A trial's training failed; the study records it and goes on."""


class PruneOnEval:
    """A plugin reporting each evaluation of one trial's run to Optuna and stopping the run when
    the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None
        self.reports = 0

    @hookimpl
    def on_eval_end(self, run: Any, step: int, metrics: dict) -> None:
        """Report ``metric`` at ``step``; ask the pruner whether to stop."""
        if self.metric not in metrics:
            available = ", ".join(k for k in metrics if not k.endswith("confusion_matrix"))
            raise ConfigError(f"tune.metric: '{self.metric}' is not an eval metric; available: {available}")
        self.trial.report(float(metrics[self.metric]), step)
        self.reports += 1
        if self.trial.should_prune():
            self.pruned_at = step
            run.should_stop = True


def trial_config(plan: Plan, number: int, values: dict[str, Any]) -> dict[str, Any]:
    """The raw run config of trial ``number``: the base config with ``values``, in ``trials/NNNN``."""
    data = with_values(plan.base, values)
    data["name"] = f"{number:04d}"
    data["output_dir"] = str(plan.trials_dir)
    return data


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, CrossframeError) else f"{type(exc).__name__}: {text}"[:300]


class Objective:
    """Optuna's objective for ``plan``: runs one trial in this process and returns its metric."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def __call__(self, trial: Any) -> float:
        """Sample, train, report, and return the final evaluation's ``tune.metric``."""
        import optuna

        plan = self.plan
        # parameters first, owner second: a trial that names its process always has its parameters,
        # so one whose process dies can be queued again (see crossframe.tune.study.recover_dead_trials)
        values = {key: suggest(trial, key, param) for key, param in plan.tune.space.items()}
        for key, value in {**owner_attrs(), "threads": os.environ.get(THREAD_ENV, "")}.items():
            trial.set_user_attr(key, value)
        data = trial_config(plan, trial.number, values)
        start = time.perf_counter()
        spent, reached = self._budgets(trial, data)
        if reached is not None:  # pruned at a budget below the top (tune.budget: schedule)
            result, budget = reached
            self._record(trial, result, start, spent)
            trial.set_user_attr("pruned_at", budget)
            raise optuna.TrialPruned(f"pruned after the budget of {budget} steps")
        reporter = PruneOnEval(trial, plan.tune.metric) if plan.tune.budget == "evaluations" else None
        result = self._train(trial, data, reporter)
        self._record(trial, result, start, spent + result.steps)
        if reporter is not None and reporter.pruned_at is not None:
            trial.set_user_attr("pruned_at", reporter.pruned_at)
            raise optuna.TrialPruned(f"pruned at step {reporter.pruned_at}")
        return self._value(trial, result)

    def _budgets(self, trial: Any, data: dict[str, Any]) -> tuple[int, tuple[Any, int] | None]:
        """With ``tune.budget: schedule``, train the budgets below the top one (each a run whose schedule
        ends at its budget) and report each one's value at its budget. Returns the steps trained and, when
        the pruner stopped the trial, the last run's result and its budget."""
        plan = self.plan
        if plan.tune.budget != "schedule" or plan.tune.pruner == "none":
            return 0, None
        total = int(data.get("train", {}).get("steps") or plan.total_steps)
        spent, seen = 0, []
        for budget in budget_steps(total, plan.tune.budget_factor, plan.tune.budget_min_steps):
            config = budget_config(data, budget, total)
            config["name"] = f"{data['name']}-b{budget}"
            result = self._train(trial, config, None)
            spent += result.steps
            value = self._value(trial, result)
            seen.append([budget, value])
            trial.set_user_attr("budgets", seen)
            trial.report(value, budget)
            if trial.should_prune():
                return spent, (result, budget)
        return spent, None

    def _train(self, trial: Any, data: dict[str, Any], reporter: PruneOnEval | None) -> Any:
        """One run of ``data`` (with ``reporter`` in the loop's hooks); failures become :class:`TrialFailed`."""
        from crossframe.plugins import get_plugin_manager
        from crossframe.train.runner import run

        manager = get_plugin_manager()
        plugin_name = f"crossframe-tune-trial-{trial.number}"
        if reporter is not None:
            manager.register(reporter, plugin_name)
        try:
            return run(data, quiet=True)
        except KeyboardInterrupt:
            trial.set_user_attr("error", INTERRUPTED)  # the tuner queues these values again
            raise
        except CrossframeError as exc:
            if exc.exit_code == 2:
                raise  # bad input: every trial would fail the same way
            trial.set_user_attr("error", _one_line(exc))
            raise TrialFailed(_one_line(exc)) from exc
        except Exception as exc:
            trial.set_user_attr("error", _one_line(exc))
            raise TrialFailed(_one_line(exc)) from exc
        finally:
            if reporter is not None:
                manager.unregister(plugin_name)

    @staticmethod
    def _record(trial: Any, result: Any, start: float, steps: int) -> None:
        """The trial's seconds, last run directory, optimizer steps in all (every budget) and status."""
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("steps", steps)
        trial.set_user_attr("status", result.status)

    def _value(self, trial: Any, result: Any) -> float:
        """``tune.metric`` of a finished run; a missing metric is a config error, a non-finite one a failure."""
        metric = self.plan.tune.metric
        if metric not in result.metrics:
            raise ConfigError(f"tune.metric: '{metric}' is not an eval metric; available: "
                              f"{', '.join(k for k in result.metrics if not k.endswith('confusion_matrix'))}")
        value = float(result.metrics[metric])
        if not math.isfinite(value):
            trial.set_user_attr("error", f"{metric} is {value}")
            raise TrialFailed(f"{metric} is {value}")
        return value
