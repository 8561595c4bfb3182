"""``crossframe new-plugin NAME --kind KIND``: write a ready-to-publish plugin distribution.

The files come from plain-text templates shipped as package data in
``crossframe/templates/plugin/``: ``common/`` holds what every kind gets (``pyproject.toml``,
``README.md``, ``.gitignore``), ``<kind>/`` the kind's hook module, implementation, tests and
README section. ``{{key}}`` placeholders are filled in by plain string replacement (no template
engine); :func:`variables` lists them. The command imports only click at module import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import click

KINDS = ("dataset", "compressor", "exporter", "logger", "command", "backend", "model", "layer")
#: one line per kind, used in the README and the distribution's description
SUMMARIES = {
    "dataset": "the {{name}} dataset, seeded concentric rings to classify",
    "compressor": "the {{name}} compressor, magnitude pruning of dense and conv weights",
    "exporter": "the {{name}} exporter, a model as one .npz file of canonical weights and its spec",
    "logger": "the {{name}} logger, metrics as tab-separated lines",
    "command": "the crossframe {{name}} command, which lists a run's checkpoints",
    "backend": "the {{name}} backend, crossframe's mlp trained in plain NumPy",
    "model": "the {{name}} model, a residual MLP written as neutral layers",
    "layer": "the {{name}} layer, a learned scale per channel, on torch, jax and tensorflow",
}
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
MAX_NAME_LENGTH = 32
PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")
TEMPLATE_PACKAGE = "crossframe"
TEMPLATE_DIR = "templates/plugin"


def compatible_range(version: str) -> str:
    """The versions of crossframe a plugin written against ``version`` declares: ``>=0.1,<0.2``.

    Before 1.0 each minor release may break plugins, so the range stops at the next minor;
    from 1.0 on, at the next major.
    """
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:  # pragma: no cover - crossframe's own version always matches
        raise ValueError(f"cannot read crossframe's version '{version}'")
    major, minor = int(match.group(1)), int(match.group(2))
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"
    return f">={major}.{minor},<{upper}"


def variables(name: str, kind: str) -> dict[str, str]:
    """The placeholders of the templates and their values for ``name``."""
    from crossframe import __version__

    module = "crossframe_" + name.replace("-", "_")
    return {
        "name": name,  # the entry-point name, the component's name and the command's name
        "module": module,  # the import package
        "dist": f"crossframe-{name}",  # the distribution (PyPI) name
        "requirement": f"crossframe{compatible_range(__version__)}",
        "kind": kind,
        "summary": SUMMARIES[kind].replace("{{name}}", name),
    }


def layout(kind: str, module: str) -> dict[str, str]:
    """Output path (relative to the distribution's directory) -> template path."""
    return {
        "pyproject.toml": "common/pyproject.toml.tmpl",
        "README.md": "common/README.md.tmpl",
        ".gitignore": "common/gitignore.tmpl",
        f"src/{module}/__init__.py": f"{kind}/__init__.py.tmpl",
        f"src/{module}/{kind}.py": f"{kind}/{kind}.py.tmpl",
        "tests/test_plugin.py": f"{kind}/test_plugin.py.tmpl",
    }


def _template(path: str) -> str:
    from importlib.resources import files

    node = files(TEMPLATE_PACKAGE)
    for part in f"{TEMPLATE_DIR}/{path}".split("/"):
        node = node.joinpath(part)
    return node.read_text(encoding="utf-8")


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace every ``{{key}}`` of ``values`` in ``text``."""
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def render(name: str, kind: str) -> dict[str, str]:
    """The files of the distribution ``crossframe-<name>`` of ``kind``: relative path -> text."""
    values = variables(name, kind)
    section = _template(f"{kind}/README.md.tmpl").strip("\n") + "\n"  # filled in below, like the rest
    values = {"kind_readme": section, **values}
    files: dict[str, str] = {}
    for out, source in layout(kind, values["module"]).items():
        text = fill(_template(source), values)
        left = PLACEHOLDER.search(text)
        if left:  # a typo in a template: fail here rather than ship it
            raise RuntimeError(f"template '{source}' has an unknown placeholder {left.group(0)}")
        files[out] = text
    return files


def check_name(name: str, kind: str) -> None:
    """Raise :class:`~crossframe.errors.UsageError` (one line) unless ``name`` can be a plugin name."""
    from crossframe.errors import UsageError

    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise UsageError(f"NAME: '{name}' is not a valid plugin name; use up to {MAX_NAME_LENGTH} lowercase "
                         "letters, digits and single '-' or '_' between them, starting with a letter "
                         "(e.g. 'rings' or 'my-data')")
    if name.startswith("crossframe"):
        short = re.sub(r"^crossframe[-_]?", "", name) or "my-plugin"
        raise UsageError(f"NAME: leave out the 'crossframe' prefix (e.g. '{short}'): the distribution is "
                         "named crossframe-NAME")
    taken = _taken_names(kind)
    if name in taken:
        raise UsageError(f"NAME: '{name}' is already taken by {taken[name]}; choose another name")


def _taken_names(kind: str) -> dict[str, str]:
    """Names a new plugin of ``kind`` must not take: crossframe's entry points and its own components."""
    from importlib.metadata import entry_points

    from crossframe.plugins import CORE_PLUGIN, ENTRY_POINT_GROUP, KINDS, get_plugin_manager

    taken = {CORE_PLUGIN: "crossframe's core plugin"}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.metadata["Name"] == "crossframe":
            taken[ep.name] = f"the entry point of crossframe's {ep.name} plugin"
    if kind in KINDS:
        for name, comp in get_plugin_manager().components(kind).items():
            if comp.plugin == CORE_PLUGIN:
                taken.setdefault(name, f"crossframe's {kind} '{name}'")
    elif kind == "command":
        from crossframe.cli.commands import COMMANDS

        ctx = click.get_current_context(silent=True)
        root = ctx.find_root().command if ctx is not None else None
        names = [c.name for c in COMMANDS] + list(getattr(root, "commands", {})) + [new_plugin_command.name]
        taken.update({n: f"the command 'crossframe {n}'" for n in names if n})
    return taken


def write(target: Path, files: Mapping[str, str]) -> None:
    """Write ``files`` under ``target``, which must not exist or be an empty directory."""
    from crossframe.errors import UsageError

    if target.exists() and not target.is_dir():
        raise UsageError(f"--dir: '{target}' exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        raise UsageError(f"--dir: '{target}' already exists and is not empty; choose another NAME or --dir")
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))


@click.command("new-plugin")
@click.argument("name")
@click.option("--kind", "-k", type=click.Choice(KINDS),
              help="Required: what the plugin provides; it gets one working implementation of it.")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(path_type=Path),
              help="Where to create crossframe-NAME/.")
def new_plugin_command(name: str, kind: str | None, directory: Path) -> None:
    """Write a ready-to-publish plugin distribution into DIR/crossframe-NAME/.

    It holds pyproject.toml (entry point NAME, crossframe's compatible range as its
    dependency), src/crossframe_NAME/ with one working hook implementation of KIND, tests that
    use crossframe's pytest fixtures, and a README on installing, testing and publishing it.
    """
    if kind is None:  # checked here, not by click, whose message for a missing choice is many lines
        from crossframe.errors import UsageError, one_of

        raise UsageError(f"--kind: required; choose {one_of(KINDS)}")
    check_name(name, kind)
    files = render(name, kind)
    target = directory / f"crossframe-{name}"
    write(target, files)
    click.echo(f"created crossframe-{name}, a {kind} plugin, in {target}")
    click.echo(f"next: cd {target} && pip install -e '.[test]' && python -m pytest")
