"""The Optuna study underneath a tune: storage, sampler, pruner, counting trials, and recovering
the trials of a process that died.

The embedded default storage is a SQLite file in the study directory; any RDB URL Optuna accepts
(``postgresql://``, ``mysql://``, another SQLite file) lets workers on several machines share one
study. Each trial records the host and process that ran it; a trial left ``RUNNING`` by a process
of this host that no longer exists is marked failed and its parameters queued again. Trials of
other hosts are covered by Optuna's heartbeat: one that misses ``GRACE_PERIOD_S`` is failed and
queued again the same way.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.errors import ConfigError
from crossframe.tune.budgets import budget_steps
from crossframe.tune.plan import shown_url
from crossframe.tune.schema import TuneConfig
from crossframe.tune.space import grid

STORAGE_FILE = "study.db"
HEARTBEAT_S = 10
GRACE_PERIOD_S = 60
STORAGE_ATTEMPTS = 5
SQLITE_BUSY_TIMEOUT_S = 120  # seconds a writer waits for another process's lock


def default_storage(study_dir: Path) -> str:
    """The embedded default: ``sqlite:///<study_dir>/study.db``."""
    return f"sqlite:///{(study_dir / STORAGE_FILE).resolve()}"


def make_storage(url: str) -> Any:
    """An Optuna RDB storage for ``url`` with heartbeats (and a generous lock wait for SQLite)."""
    import optuna

    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    error = ""
    for attempt in range(STORAGE_ATTEMPTS):  # workers creating one fresh database race to create its tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_PERIOD_S, heartbeat_stale_trial_callback=requeue)
        except Exception as exc:  # sqlalchemy's errors: a bad URL, a missing driver, a refused connection
            error = " ".join(str(exc).split())[:300]
            if isinstance(exc, ImportError) or type(exc).__name__ in ("ArgumentError", "NoSuchModuleError"):
                break  # a malformed URL or a missing driver: trying again will not help
            time.sleep(0.2 * (attempt + 1))
    raise ConfigError(f"--storage: cannot open '{shown_url(url)}': {error.replace(url, shown_url(url))}")

def make_sampler(tune: TuneConfig, seed: int) -> Any:
    """The configured Optuna sampler, seeded."""
    import optuna

    options = dict(tune.sampler_options)
    try:
        if tune.sampler == "tpe":
            options.setdefault("n_startup_trials", max(3, min(10, tune.trials // 3)))
            return optuna.samplers.TPESampler(seed=seed, **options)
        if tune.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if tune.sampler == "grid":
            return optuna.samplers.GridSampler(grid(tune.space), seed=seed, **options)
        try:
            import cmaes  # noqa: F401  (Optuna imports it only when the first trial is sampled)
        except ImportError:
            raise ConfigError("tune.sampler: 'cmaes' needs the cmaes package; install crossframe[tune]") from None
        return optuna.samplers.CmaEsSampler(seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(f"tune.sampler_options: {exc}") from None


def make_pruner(tune: TuneConfig, total_steps: int | None, eval_every: int) -> Any:
    """The configured Optuna pruner; its steps are optimizer steps, reported at each evaluation (or, with
    ``budget: schedule``, at each budget; successive halving and Hyperband then have their rungs there)."""
    import optuna

    options = dict(tune.pruner_options)
    try:
        if tune.pruner == "none":
            return optuna.pruners.NopPruner(**options)
        if tune.pruner == "median":
            options.setdefault("n_startup_trials", max(1, min(5, tune.trials // 4)))
            return optuna.pruners.MedianPruner(**options)
        options.setdefault("reduction_factor", tune.budget_factor)
        if tune.budget == "schedule" and total_steps:  # rungs at the budgets a trial trains
            options.setdefault("min_resource", budget_steps(total_steps, tune.budget_factor,
                                                            tune.budget_min_steps)[0])
        options.setdefault("min_resource", max(1, eval_every))
        if tune.pruner == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        options.setdefault("max_resource", total_steps or "auto")
        return optuna.pruners.HyperbandPruner(**options)
    except TypeError as exc:
        raise ConfigError(f"tune.pruner_options: {exc}") from None


def open_study(storage: Any, name: str, tune: TuneConfig, sampler: Any, pruner: Any) -> Any:
    """Create the study, or join it when it exists (resume, or another worker); its direction must match."""
    import optuna

    direction = tune.resolved_direction()
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"tune.direction: study '{name}' in this storage was created to "
                          f"{study.direction.name.lower()}, not {direction}")
    return study


@dataclass
class Counts:
    """Trials of a study by state."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """Trials that count toward ``tune.trials``: complete or pruned."""
        return self.complete + self.pruned


def counts(study: Any) -> Counts:
    """How many trials of ``study`` are in each state."""
    from optuna.trial import TrialState

    out = Counts()
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for trial in study.get_trials(deepcopy=False):
        attr = names.get(trial.state)
        if attr:
            setattr(out, attr, getattr(out, attr) + 1)
    return out


def owner_attrs() -> dict[str, Any]:
    """What a trial records about who runs it: host and process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def requeue(study: Any, trial: Any) -> None:
    """Queue a dead trial's parameters again (once), so the study still evaluates them."""
    if not trial.params or any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def recover_dead_trials(study: Any, exclusive: bool = False) -> list[int]:
    """Fail the ``RUNNING`` trials whose process on this host has died, and queue their parameters again.

    ``exclusive`` (resuming a study in its own SQLite file) also fails running trials that died before
    recording their process. Returns the numbers of the trials failed. Trials of other hosts are left
    to the heartbeat.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if not isinstance(pid, int):
            dead = exclusive
        elif trial.user_attrs.get("host") != host:
            continue
        else:
            dead = pid != os.getpid() and (not _alive(pid) or _zombie(pid))
        if dead:
            study._storage.set_trial_user_attr(trial._trial_id, "error", f"its process ({pid}) died")
            if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                requeue(study, trial)
                failed.append(trial.number)
    return failed

