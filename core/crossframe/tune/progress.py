"""Progress of a study: one line per finished trial (number, params, value, best so far) above a
rich bar of trials, on stderr."""

from __future__ import annotations

from typing import Any

from crossframe.tune.space import decode


def format_value(value: Any) -> str:
    """A parameter or metric value, short."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_of(study: Any) -> Any:
    """The best complete trial so far, or ``None``."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def trial_line(trial: Any, metric: str, best: Any, space: dict[str, Any]) -> str:
    """The line printed when ``trial`` (an Optuna ``FrozenTrial``) finishes."""
    state = trial.state.name.lower()
    params = " ".join(f"{k.rsplit('.', 1)[-1]}={format_value(decode(k, v, space))}" for k, v in trial.params.items())
    attrs = trial.user_attrs
    if state == "complete":
        what = f"{metric} {trial.value:.4f}"
    elif state == "pruned":
        last = trial.intermediate_values.get(attrs.get("pruned_at"))
        what = f"pruned at {attrs.get('pruned_at', '?')}" + (f", {metric} {last:.4f}" if last is not None else "")
    else:
        what = f"failed: {attrs.get('error', 'see its run directory')}"
    best_text = f"best {best.value:.4f} (#{best.number})" if best is not None else "best -"
    cost = f"{attrs['steps']} steps, {attrs.get('seconds', 0):.1f} s" if "steps" in attrs else ""
    return " | ".join(p for p in (f"trial {trial.number}: {what}", best_text, params, cost) if p)

class StudyProgress:
    """Prints trial lines and moves a bar from the finished trials already there to ``total``."""

    def __init__(self, total: int, done: int, metric: str, space: dict[str, Any], enabled: bool = True) -> None:
        self.metric, self.space, self.enabled = metric, space, enabled
        self.seen: set[int] = set()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self._bar = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=self.console, transient=False)
        self._bar.start()
        self._task = self._bar.add_task("trials", total=total, completed=done)

    def trial_finished(self, study: Any, trial: Any) -> None:
        """Print ``trial``'s line once and advance the bar for complete and pruned trials."""
        if trial.number in self.seen:
            return
        self.seen.add(trial.number)
        if not self.enabled:
            return
        self.console.print(trial_line(trial, self.metric, best_of(study), self.space), highlight=False, markup=False,
                           soft_wrap=True)
        if trial.state.name in ("COMPLETE", "PRUNED"):
            self._bar.advance(self._task)

    def poll(self, study: Any, since: set[int]) -> None:
        """Report the trials that finished since the last poll (workers in other processes)."""
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in since:
                self.trial_finished(study, trial)

    def print(self, text: str) -> None:
        """A line above the bar."""
        if self.enabled:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        """Stop redrawing (once)."""
        if self.enabled:
            self._bar.stop()
            self.enabled = False
