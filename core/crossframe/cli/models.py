"""``crossframe models``: register runs as model versions; list, show, promote and remove them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from crossframe.registry.backends import ModelRegistry

_REGISTRY = click.option("--registry", "registry", metavar="DIR|NAME:LOCATION",
                         help="Registry directory, or a plugin's backend such as mlflow:http://host:5000 "
                              "(default: $CROSSFRAME_REGISTRY, else the user's data directory).")


def _open(registry: str | None, config_value: str | None = None) -> ModelRegistry:
    """The registry the options, the config and the environment point at."""
    from crossframe.registry.backends import open_registry

    return open_registry(registry, config_value)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


@click.group("models")
def models_group() -> None:
    """The model registry: versions with lineage, aliases and stages."""


@models_group.command("register")
@click.argument("run_dir", type=click.Path())
@click.option("--name", "-n", required=True, help="Model name (letters, digits, . _ -).")
@click.option("--alias", "-a", "aliases", multiple=True, help="Alias to point at the new version (repeatable).")
@click.option("--description", "-d", default="", help="A line describing the model.")
@click.option("--with-optimizer", is_flag=True, help="Also keep the optimizer state (to fine-tune later).")
@_REGISTRY
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_register(run_dir: str, name: str, aliases: tuple[str, ...], description: str, with_optimizer: bool,
                    registry: str | None, as_json: bool) -> None:
    """Register RUN_DIR's latest checkpoint, exports and lineage as the next version of --name."""
    from crossframe.runs.detail import read_config, require_run

    config = read_config(require_run(run_dir))
    version = _open(registry, config.get("registry")).register(run_dir, name, aliases, description, with_optimizer)
    if as_json:
        click.echo(json.dumps(version.to_json(), indent=2, default=str))
        return
    tags = f" ({', '.join(version.aliases)})" if version.aliases else ""
    click.echo(f"registered {name} version {version.version}{tags}: {len(version.artifacts)} files, "
               f"{version.uri}")


@models_group.command("ls")
@_REGISTRY
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_ls(registry: str | None, as_json: bool) -> None:
    """List registered models: versions, latest, aliases."""
    rows = _open(registry).models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from crossframe.cli.runs import _table

    _table("models", ["name", "versions", "latest", "aliases", "created", "description"],
           [[r["name"], r["versions"], r["latest"], ", ".join(f"{a}→{v}" for a, v in r["aliases"].items()),
             _when(r["created"]), r["description"]] for r in rows])


@models_group.command("show")
@click.argument("ref")
@_REGISTRY
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_show(ref: str, registry: str | None, as_json: bool) -> None:
    """Show REF: a model's versions (NAME), or one version's lineage and files (NAME@VERSION, NAME@ALIAS)."""
    from crossframe.cli.runs import _table
    from crossframe.registry.store import split_ref

    store = _open(registry)
    name, selector = split_ref(ref)
    if selector is None:
        versions = store.versions(name)
        if as_json:
            click.echo(json.dumps([v.to_json() for v in versions], indent=2, default=str))
            return
        _table(f"{name}", ["version", "stage", "aliases", "created", "backend", "metrics", "run"],
               [[v.version, v.stage, ", ".join(v.aliases), _when(v.created), v.lineage.get("backend"),
                 "  ".join(f"{k} {m:.4g}" for k, m in v.lineage.get("metrics", {}).items() if k.startswith("val/")),
                 v.run_dir] for v in versions])
        return
    version = store.get(name, selector)
    if as_json:
        click.echo(json.dumps(version.to_json(), indent=2, default=str))
        return
    lineage = version.lineage
    click.echo(f"{version.uri}  stage {version.stage}  aliases {', '.join(version.aliases) or '-'}")
    click.echo(f"  run: {version.run_dir}  (parent: {lineage.get('parent_run') or '-'})")
    click.echo(f"  backend {lineage.get('backend')}, model {lineage.get('model')}, step {lineage.get('step')}")
    click.echo(f"  versions: {', '.join(f'{k} {v}' for k, v in lineage.get('versions', {}).items())}")
    click.echo(f"  data: {lineage.get('data_fingerprint')}")
    if lineage.get("compress"):
        click.echo(f"  compress: {', '.join(step.get('name', '?') for step in lineage['compress'])}")
    metrics = {k: v for k, v in lineage.get("metrics", {}).items() if k != "step"}
    click.echo(f"  metrics: {'  '.join(f'{k} {v:.4g}' for k, v in metrics.items())}")
    click.echo(f"  files ({version.source or version.path}):")
    for rel, digest in version.artifacts.items():
        click.echo(f"    {digest[:16]}  {rel}")


@models_group.command("promote")
@click.argument("ref")
@click.argument("alias")
@_REGISTRY
def models_promote(ref: str, alias: str, registry: str | None) -> None:
    """Point ALIAS at REF (NAME@VERSION or NAME@ALIAS); staging, production and archived also set the stage."""
    version = _open(registry).promote(ref, alias)
    click.echo(f"{version.name}@{alias} -> version {version.version} (stage {version.stage})")


@models_group.command("rm")
@click.argument("ref")
@_REGISTRY
@click.option("--yes", "-y", is_flag=True, help="Do not ask before removing a whole model.")
def models_rm(ref: str, registry: str | None, yes: bool) -> None:
    """Remove a version (NAME@VERSION, NAME@ALIAS) or a whole model (NAME) and its files."""
    if "@" not in ref and not yes:
        click.confirm(f"remove every version of '{ref}'?", abort=True)
    store = _open(registry)
    gone = store.remove(ref)
    click.echo(f"removed {ref.partition('@')[0]} version{'s' * (len(gone) != 1)} {', '.join(map(str, gone))}")


@models_group.command("path")
@click.argument("uri")
@_REGISTRY
def models_path(uri: str, registry: str | None) -> None:
    """Print the directory a models:/NAME@ALIAS URI resolves to (its files checked first)."""
    from crossframe.registry import resolve_model_uri

    uri = uri if uri.startswith("models:/") else f"models:/{uri}"
    click.echo(str(Path(resolve_model_uri(uri, registry))))


COMMANDS = [models_group]
