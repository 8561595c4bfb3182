"""Finding a metric by name among both kinds: confusion metrics and score metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crossframe.errors import ConfigError, did_you_mean, one_of
from crossframe.metrics.totals import ScoreMetric
from crossframe.plugins import Component, get_plugin_manager

KINDS = ("metric", "score_metric")


def find_metric(name: str, field_name: str) -> Component:
    """The metric registered as ``name`` (or ``plugin:name``) by either hook; one line when none or two."""
    pm = get_plugin_manager()
    found = [kind for kind in KINDS if pm.has(kind, name)]
    if len(found) == 1:
        return pm.get(found[0], name, field_name)
    if len(found) > 1:
        plugins = sorted({pm.get(kind, name, field_name).plugin for kind in found})
        raise ConfigError(f"{field_name}: metric '{name}' is registered as both a confusion and a score "
                          f"metric (by {', '.join(plugins)}); name it 'plugin:{name}'")
    available = [n for kind in KINDS for n in pm.components(kind)]
    raise ConfigError(f"{field_name}: unknown metric '{name}'{did_you_mean(name, available)} "
                      f"(available: {one_of(available)})")


def metric_function(comp: Component) -> Callable[[Any], Any]:
    """What the loop calls with :class:`~crossframe.metrics.EvalTotals`: the function itself, or
    for a score metric a :class:`~crossframe.metrics.ScoreMetric` around it."""
    return ScoreMetric(comp.obj) if comp.kind == "score_metric" else comp.obj
