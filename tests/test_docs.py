"""The user docs keep up with the code: every hook and every config key is documented.

- ``docs/hooks.md`` has a heading ``### `hook(arg, ...)` `` for every hook spec in
  :mod:`crossframe.hookspecs`, with the spec's parameter names in order, and no heading for a
  hook that does not exist.
- Every hook spec has a docstring (the contract the docs restate).
- ``docs/config.md`` documents every field of ``RunConfig``, ``TrainConfig`` (and the
  ``data`` and ``train.early_stopping`` sections) as a row of the table in its section.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

import crossframe.hookspecs
from crossframe.config.schema import DataConfig, EarlyStoppingConfig, RunConfig, TrainConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"
HOOKS_MD = DOCS / "hooks.md"
CONFIG_MD = DOCS / "config.md"

#: "### `register_models(register)`" -> ("register_models", "register")
HOOK_HEADING = re.compile(r"^###\s+`(?P<name>[A-Za-z_]\w*)\((?P<args>[^)]*)\)`\s*$", re.MULTILINE)


def _specs_by_pluggy() -> dict[str, object]:
    """Hook spec functions as pluggy sees them."""
    pm = pluggy.PluginManager("crossframe")
    pm.add_hookspecs(crossframe.hookspecs)
    found = {}
    for name, caller in vars(pm.hook).items():
        spec = getattr(caller, "spec", None)
        if spec is not None:
            found[name] = spec.function
    return found


def _specs_by_marker() -> dict[str, object]:
    """Hook spec functions found by the ``crossframe_spec`` attribute pluggy's marker sets."""
    return {name: fn for name, fn in inspect.getmembers(crossframe.hookspecs, inspect.isfunction)
            if hasattr(fn, "crossframe_spec")}


SPECS = _specs_by_pluggy()


def _documented_hooks() -> dict[str, list[str]]:
    text = HOOKS_MD.read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    for match in HOOK_HEADING.finditer(text):
        args = [a.strip() for a in match["args"].split(",") if a.strip()]
        out.setdefault(match["name"], args)
    return out


def _section(text: str, heading: str) -> str:
    """The text under the Markdown heading whose title is ``heading``, up to the next heading
    of the same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if m and m.group(2) == heading:
            level = len(m.group(1))
            body = []
            for nxt in lines[i + 1:]:
                n = re.match(r"^(#+)\s", nxt)
                if n and len(n.group(1)) <= level:
                    break
                body.append(nxt)
            return "\n".join(body)
    raise AssertionError(f"docs/config.md has no heading '{heading}'")


def _table_keys(section: str) -> set[str]:
    """Keys documented as table rows: ``| `key` | ...``."""
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", section, re.MULTILINE))


# --------------------------------------------------------------------------- hooks


def test_hook_specs_are_discovered() -> None:
    assert SPECS, "no hook specs found in crossframe.hookspecs"
    assert set(SPECS) == set(_specs_by_marker())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_spec_has_docstring(name: str) -> None:
    doc = inspect.getdoc(SPECS[name])
    assert doc and doc.strip(), f"hook spec '{name}' has no docstring"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_documented_with_its_signature(name: str) -> None:
    documented = _documented_hooks()
    expected = list(inspect.signature(SPECS[name]).parameters)
    heading = f"### `{name}({', '.join(expected)})`"
    assert name in documented, f"docs/hooks.md lacks a heading for hook '{name}': add {heading!r}"
    assert documented[name] == expected, (
        f"docs/hooks.md documents {name}({', '.join(documented[name])}) but the spec is "
        f"{name}({', '.join(expected)}): update the heading to {heading!r}")


def test_no_documented_hook_is_unknown() -> None:
    hook_like = {n for n in _documented_hooks() if n.startswith(("register_", "on_"))}
    stale = sorted(hook_like - set(SPECS))
    assert not stale, f"docs/hooks.md documents hooks that do not exist: {stale}"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("model", "heading"), [
    (RunConfig, "Top-level keys (`RunConfig`)"),
    (TrainConfig, "`train`"),
    (EarlyStoppingConfig, "`train.early_stopping`"),
    (DataConfig, "`data`"),
])
def test_config_fields_are_documented(model: type, heading: str) -> None:
    section = _section(CONFIG_MD.read_text(encoding="utf-8"), heading)
    missing = sorted(set(model.model_fields) - _table_keys(section))
    assert not missing, f"docs/config.md, section '{heading}', has no table row for: {missing}"


@pytest.mark.parametrize("model", [RunConfig, TrainConfig])
def test_config_fields_appear_in_config_doc(model: type) -> None:
    text = CONFIG_MD.read_text(encoding="utf-8")
    missing = sorted(f for f in model.model_fields if f"`{f}`" not in text)
    assert not missing, f"docs/config.md never mentions {model.__name__} fields: {missing}"


PLUGINS_MD = DOCS / "plugins.md"
#: "| `register_models(register)` |" -> a row of the hook table in docs/plugins.md
HOOK_ROW = re.compile(r"^\|\s*`(?P<name>(?:register|on|check)_\w+)\((?P<args>[^)]*)\)`\s*\|", re.MULTILINE)


def test_plugins_guide_lists_every_hook_with_its_exact_signature() -> None:
    rows = {m["name"]: [a.strip() for a in m["args"].split(",") if a.strip()]
            for m in HOOK_ROW.finditer(PLUGINS_MD.read_text(encoding="utf-8"))}
    missing = sorted(set(SPECS) - set(rows))
    assert not missing, f"docs/plugins.md 'Every hook' table lacks: {missing}"
    unknown = sorted(set(rows) - set(SPECS))
    assert not unknown, f"docs/plugins.md lists hooks that do not exist: {unknown}"
    for name, fn in SPECS.items():
        expected = list(inspect.signature(fn).parameters)
        assert rows[name] == expected, f"docs/plugins.md: `{name}({', '.join(rows[name])})` should be " \
                                       f"`{name}({', '.join(expected)})`"
