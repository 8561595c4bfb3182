"""``crossframe.tune(...)``: set a study up from a config's ``tune:`` section, run its trials (here, in
``--jobs N`` worker processes, or joining workers elsewhere through ``--storage``), and report."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossframe.config.loading import apply_overrides, load_config, read_config_file
from crossframe.errors import ConfigError, UsageError
from crossframe.tune.budgets import check_budgets
from crossframe.tune.plan import Plan
from crossframe.tune.progress import StudyProgress
from crossframe.tune.schema import TuneConfig, parse_tune
from crossframe.tune.space import check_space, grid
from crossframe.tune.study import counts, default_storage, make_storage, open_study, recover_dead_trials, requeue
from crossframe.tune.trial import INTERRUPTED


@dataclass
class TuneResult:
    """What a finished study returns."""

    study_dir: Path
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


def _raw_config(config: str | os.PathLike | Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The raw config and a default study name (the file's stem)."""
    if config is None:
        raise UsageError("tune: give a config file (or preset) with a 'tune:' section")
    if isinstance(config, Mapping):
        import json

        return json.loads(json.dumps(config)), "study"
    return read_config_file(config), Path(os.fspath(config)).stem


def _unique_dir(base: Path) -> Path:
    candidate, i = base, 0
    while candidate.exists():
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def make_plan(config: str | os.PathLike | Mapping[str, Any] | None, overrides: Iterable[str] = (), *,
              backend: str | None = None, storage: str | None = None, trials: int | None = None,
              timeout_s: float | None = None, resume: str | os.PathLike | None = None) -> Plan:
    """Validate the config and its ``tune:`` section (the space against the config schema) and fix the
    study directory; nothing is trained and no directory is made."""
    if resume is not None and config is None:
        plan = Plan.load(resume)
        raw = {**plan.base, "tune": plan.tune.model_dump(mode="json")}
        stem = plan.name
    else:
        raw, stem = _raw_config(config)
    raw = apply_overrides(raw, overrides)
    if backend:
        raw["backend"] = backend
    section = raw.pop("tune", None)
    if trials is not None:
        section = {**(section or {}), "trials": trials}
    if timeout_s is not None:
        section = {**(section or {}), "timeout_s": timeout_s}
    tune: TuneConfig = parse_tune(section)
    tune.resolved_direction()
    cfg = load_config(raw)
    check_space(raw, tune.space)
    if tune.budget == "schedule":
        check_budgets(tune, cfg.train.steps)
    elif tune.pruner != "none" and not cfg.train.eval_every:
        raise ConfigError(f"tune.pruner: '{tune.pruner}' prunes on intermediate evaluations, but train.eval_every "
                          "is 0; set train.eval_every (e.g. a tenth of train.steps) or pruner: none")
    if tune.sampler == "grid":
        size = 1
        for values in grid(tune.space).values():
            size *= len(values)
        tune = tune.model_copy(update={"trials": min(tune.trials, size)})
    if resume is not None:
        study_dir = Path(resume)
        if not study_dir.is_dir():
            raise UsageError(f"--resume: '{study_dir}' is not a directory")
        saved = Plan.load(study_dir)
        name, storage = saved.name, storage or saved.storage
        if "***" in storage:
            raise UsageError(f"--resume: the study's storage is {storage}; pass --storage with the full URL")
    else:
        name = cfg.name or stem
        base = Path(cfg.output_dir) / name
        study_dir = base if storage else _unique_dir(base)  # workers joining a shared storage share the dir
    url = storage or default_storage(study_dir)
    return Plan(study_dir, name, url, raw, tune, tune.seed if tune.seed is not None else cfg.seed,
                cfg.train.steps, default_storage=url == default_storage(study_dir))


def tune(config: str | os.PathLike | Mapping[str, Any] | None = None, overrides: Iterable[str] = (), *,
         backend: str | None = None, jobs: int = 1, storage: str | None = None,
         resume: str | os.PathLike | None = None, trials: int | None = None, timeout_s: float | None = None,
         launcher: str = "local", quiet: bool = False, table: bool = True) -> TuneResult:
    """Run a hyperparameter study from ``config``'s ``tune:`` section; see ``docs/tune.md``.

    ``jobs`` trials run at once in worker processes (1: in this process; ``launcher="ray"``: as tasks
    on a Ray cluster); ``storage`` is an RDB URL shared with other workers (default: ``study.db`` in
    the study directory); ``resume`` continues the study in that directory, keeping its finished
    trials and re-running those a dead process left.
    """
    from crossframe.tune.report import print_table, write_report
    from crossframe.tune.worker import quiet_optuna, work

    if jobs < 1:
        raise UsageError(f"--jobs: must be at least 1 (got {jobs})")
    if launcher not in ("local", "ray"):
        raise UsageError(f"--launcher: '{launcher}' is not 'local' or 'ray'")
    plan = make_plan(config, overrides, backend=backend, storage=storage, trials=trials, timeout_s=timeout_s,
                     resume=resume)
    fresh = not plan.study_dir.exists()
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    try:
        storage_ = make_storage(plan.storage)
    except ConfigError:
        if fresh:
            shutil.rmtree(plan.study_dir, ignore_errors=True)
        raise
    plan.save()
    quiet_optuna()
    study = open_study(storage_, plan.name, plan.tune, None, None)
    recovered = recover_dead_trials(study, exclusive=resume is not None and plan.default_storage)
    before = counts(study)
    progress = StudyProgress(plan.tune.trials, min(before.finished, plan.tune.trials), plan.tune.metric,
                             plan.tune.space, enabled=not quiet)
    known = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    progress.seen |= known
    if before.finished or recovered:
        progress.print(f"study {plan.name}: {before.finished} finished trials kept"
                       + (f"; trials {', '.join(map(str, recovered))} died with their process and run again"
                          if recovered else ""))
    started = time.monotonic()
    deadline = started + plan.tune.timeout_s if plan.tune.timeout_s else None
    try:
        if launcher == "ray":
            from crossframe.tune.ray import run_on_ray

            run_on_ray(plan, jobs, lambda: progress.poll(study, progress.seen))
        elif jobs == 1:
            work(plan, 0, on_finished=progress.trial_finished, deadline=deadline)
        else:
            from crossframe.tune.parallel import start_workers, watch_workers

            procs = start_workers(plan, jobs)
            watch_workers(procs, lambda: progress.poll(study, progress.seen))
    except KeyboardInterrupt:
        progress.close()
        for trial in study.get_trials(deepcopy=False):
            if trial.state.name == "FAIL" and trial.user_attrs.get("error") == INTERRUPTED:
                requeue(study, trial)
        print(f"interrupted: finished trials are kept; continue with --resume {plan.study_dir}", file=sys.stderr)
        raise
    finally:
        progress.close()
    wall = time.monotonic() - started
    summary = write_report(plan, study, {"jobs": jobs, "wall_s": wall})
    if table and not quiet:
        print_table(summary["rows"], plan.tune.metric, (summary["best"] or {}).get("number"))
    best = summary["best"] or {}
    return TuneResult(plan.study_dir, best.get("value"), best.get("params", {}),
                      Path(summary["best_config"]) if summary["best_config"] else None, summary)
