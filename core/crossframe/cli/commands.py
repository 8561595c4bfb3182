"""The core's commands: ``run``, ``plugins`` and ``config show``. Heavy imports stay inside."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


@click.command("run")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--backend", "-b", help="Backend to train on (overrides the config's 'backend').")
@click.option("--config", "-c", "more_configs", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Another config merged over CONFIG (repeatable; later files win).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=300 (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu", "tpu"]), help="Shortcut for --set device=...")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="Shortcut for --set precision=...")
@click.option("--resume", type=click.Path(), metavar="RUN_DIR",
              help="Continue a run from its latest checkpoint (or a checkpoints/step_N directory).")
@click.option("--threads", metavar="N|auto",
              help="CPU threads for the framework's ops (shortcut for --set threads=...; default auto: idle cores).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--profile", type=click.IntRange(min=1), metavar="N",
              help="Run the backend's profiler over N steps after warm-up; the trace goes to RUN_DIR/profile.")
@click.option("--sample-tokens", default=200, show_default=True, type=int,
              help="For language models: tokens to sample at the end (0: none).")
@click.option("--strategy", type=click.Choice(["single", "data_parallel", "fully_sharded"]),
              help="Shortcut for --set strategy=... (how workers share the model).")
@click.option("--nproc-per-node", type=click.IntRange(min=1), help="Worker processes on this machine.")
@click.option("--nnodes", type=click.IntRange(min=1), help="Machines taking part.")
@click.option("--node-rank", type=click.IntRange(min=0), help="This machine's index, 0..nnodes-1.")
@click.option("--master-addr", help="Address of node 0.")
@click.option("--master-port", type=click.IntRange(1, 65535), help="Rendezvous port on node 0.")
@click.option("--launcher", type=click.Choice(["local", "ray"]), help="Start workers here, or on a Ray cluster.")
def run_command(config: str | None, more_configs: tuple[str, ...], backend: str | None, overrides: tuple[str, ...],
                device: str | None, precision: str | None, threads: str | None, resume: str | None, quiet: bool,
                profile: int | None, sample_tokens: int,
                **launch: Any) -> None:
    """Train from CONFIG (YAML, TOML or JSON); with no CONFIG, the built-in quickstart.

    Values come from, later winning: CONFIG, each --config FILE, CROSSFRAME_<SECTION>__<KEY>
    environment variables (CROSSFRAME_TRAIN__STEPS=300), --set, then the shortcut options.

    With --nproc-per-node N (or --nnodes M) this command launches N workers and watches them.
    """
    from crossframe.config.loading import env_overrides
    from crossframe.distributed.world import is_worker
    from crossframe.train.runner import run

    extra = [f"device={device}"] * bool(device) + [f"precision={precision}"] * bool(precision)
    extra += [f"threads={threads}"] * bool(threads)
    extra += [f"train.profile_steps={profile}"] * bool(profile)
    extra += [f"{k if k == 'strategy' else 'launch.' + k}={v}" for k, v in launch.items() if v is not None]
    try:
        source = [*([config] if config else []), *more_configs] if more_configs else config
        result = run(source, [*env_overrides(), *overrides, *extra], backend=backend, resume=resume, quiet=quiet)
    except KeyboardInterrupt as exc:  # one line: whether (and where) a checkpoint was written; exit 130
        from crossframe.errors import Interrupted
        from crossframe.train.interrupts import describe_interrupt

        raise Interrupted(describe_interrupt(exc)) from None
    if is_worker():
        return  # the launcher reports the job
    scalars = {k: v for k, v in result.metrics.items() if not isinstance(v, (list, dict)) and _scalar(v)}
    summary = "  ".join(f"{k} {v:.4f}" for k, v in scalars.items())
    click.echo(f"{result.status} after {result.steps} steps: {summary}")
    if sample_tokens > 0 and (result.run_dir / "tokenizer").is_dir():
        from crossframe.train.generate import generate

        click.echo("sample:\n" + generate(result.run_dir, "def ", sample_tokens, temperature=0.8, top_k=50))
    click.echo(f"run directory: {result.run_dir}")


def _scalar(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


@click.command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--backend", "-b", help="Evaluate on this backend instead of the run's own.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value (repeatable).")
@click.option("--split", type=click.Choice(["val", "train", "test"]), default="val", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--attack", type=click.Choice(["fgsm", "pgd"]), help="Also report accuracy under this attack.")
@click.option("--eps", default=0.03, show_default=True, type=float, help="Attack budget (L-infinity).")
@click.option("--attack-steps", default=10, show_default=True, type=int, help="PGD steps.")
def eval_command(run_dir: str, backend: str | None, overrides: tuple[str, ...], split: str, as_json: bool,
                 attack: str | None, eps: float, attack_steps: int) -> None:
    """Evaluate RUN_DIR's latest checkpoint (or a checkpoints/step_N directory, or a models:/NAME@ALIAS
    version) on any backend; --attack fgsm|pgd --eps E adds accuracy under attack."""
    from crossframe.registry.uri import resolve_run_path
    from crossframe.train.evaluate import evaluate

    metrics = evaluate(resolve_run_path(run_dir), overrides, backend=backend, split=split)
    if attack:
        from crossframe.explain.api import robustness

        metrics.update(robustness(resolve_run_path(run_dir), attack, eps, attack_steps, overrides=overrides,
                                  backend=backend, split=split))
    if as_json:
        click.echo(json.dumps({k: v.tolist() if hasattr(v, "tolist") else v for k, v in metrics.items()}))
        return
    scalars = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("step", "backend") and _scalar(v))
    click.echo(f"step {metrics['step']} on {metrics['backend']}: {scalars}")
    for key in (k for k in metrics if k.endswith("/per_class")):  # train.metrics: [..., per_class]
        from crossframe.metrics.report import per_class_table

        click.echo(per_class_table(metrics[key]))


@click.command("generate")
@click.argument("run_dir", type=click.Path())
@click.option("--prompt", "-p", default="", help="Text to continue (default: start of a document).")
@click.option("--max-tokens", "-n", default=200, show_default=True, type=int)
@click.option("--temperature", "-t", default=0.8, show_default=True, type=float, help="0 means greedy.")
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", "-b", help="Generate on this backend instead of the run's own.")
def generate_command(run_dir: str, prompt: str, max_tokens: int, temperature: float, top_k: int | None,
                     top_p: float | None, seed: int, backend: str | None) -> None:
    """Sample text from a language-model run's latest checkpoint (RUN_DIR may be models:/NAME@ALIAS)."""
    from crossframe.registry.uri import resolve_run_path
    from crossframe.train.generate import generate

    click.echo(generate(resolve_run_path(run_dir), prompt, max_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, backend=backend))


@click.group("data")
def data_group() -> None:
    """Prepare data."""


@data_group.command("prepare")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value (repeatable).")
def data_prepare(config: str | None, overrides: tuple[str, ...]) -> None:
    """Tokenise CONFIG's text source once into its token store (runs reuse it)."""
    from crossframe.config.loading import load_config
    from crossframe.errors import ConfigError
    from crossframe.text.corpus import TextCorpus
    from crossframe.train.data import load_source, token_store

    cfg = load_config(config, overrides)
    corpus = load_source(cfg)
    if not isinstance(corpus, TextCorpus):
        raise ConfigError(f"data.name: '{cfg.data.name}' is not a text source; nothing to prepare")
    store = token_store(cfg, corpus)
    click.echo(describe_store(store))


def describe_store(store: Any) -> str:
    """One readable line about a token store: where, its vocabulary, and each split's documents and tokens."""
    splits = "; ".join(f"{name} {split.n_docs:,} documents, {split.n_tokens:,} tokens"
                       for name, split in store.splits.items())
    return f"token store: {store.directory} (vocabulary {store.vocab_size:,}, {store.meta['dtype']}; {splits})"


#: how ``crossframe plugins`` lists the int8 deployment exporters, which the compress pipeline runs itself
#: (see :mod:`crossframe.compress.deploy`) rather than through the exporter registry
INT8_KIND = "exporter (int8)"


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--traceback", "show_tb", is_flag=True, help="Show the traceback of failed plugins.")
def plugins_command(as_json: bool, show_tb: bool) -> None:
    """List plugins: name, distribution, version, hooks, components and status."""
    from crossframe.compress.deploy import DEPLOY
    from crossframe.plugins import CORE_PLUGIN, get_plugin_manager

    manager = get_plugin_manager()
    rows = []
    for record in list(manager.records.values()):
        provided = manager.provided_by(record.name) if record.status == "loaded" else {}
        if record.name == CORE_PLUGIN and provided:
            provided = {**provided, INT8_KIND: sorted(DEPLOY)}
        rows.append({
            "name": record.name, "distribution": record.distribution, "version": record.version,
            "module": record.module, "status": record.status, "error": record.error or None,
            "hooks": record.hooks, "components": provided,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from crossframe.tables import show_table

    table = []
    for row, record in zip(rows, manager.records.values(), strict=True):
        comps = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in row["components"].items())
        dist = f"{row['distribution']} {row['version']}".strip()
        style = {"loaded": "green", "disabled": "yellow"}.get(record.status, "red")
        table.append([row["name"], dist, "\n".join(row["hooks"]), comps, (record.describe_status(), style)])
    show_table("crossframe plugins", ["name", "distribution", "hooks", "components", "status"], table)
    if show_tb:
        for record in manager.failures:
            click.echo(f"--- {record.name}\n{record.traceback}", err=True)


@click.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backends_command(as_json: bool) -> None:
    """Show each backend: framework version, devices found, precisions, strategies, models."""
    from crossframe.errors import CrossframeError
    from crossframe.plugins import get_plugin_manager
    from crossframe.train.runner import make_backend

    rows = []
    for name, comp in sorted(get_plugin_manager().components("backend").items()):
        row: dict[str, Any] = {"backend": name, "plugin": comp.plugin}
        try:
            backend = make_backend(name)
            caps = backend.capabilities()
            row.update(status="ok", version=backend.framework_version(), devices=list(caps.devices),
                       precisions=list(caps.precisions), strategies=list(caps.strategies),
                       models=list(caps.models), compile=caps.compile, can_train=caps.can_train)
        except (CrossframeError, ImportError, RuntimeError) as exc:
            row.update(status=f"unavailable: {exc}")
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from crossframe.tables import show_table

    columns = ["backend", "version", "devices", "precisions", "strategies", "models", "status"]
    show_table("crossframe backends", columns, [
        [row["backend"], row.get("version", ""), *(", ".join(row.get(k, [])) for k in
         ("devices", "precisions", "strategies", "models")), row["status"]] for row in rows])


@click.group("config")
def config_group() -> None:
    """Inspect configs."""


@config_group.command("show")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "-c", "more_configs", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Another config merged over CONFIG (repeatable; later files win).")
@click.option("--backend", "-b", help="Override the backend.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
def config_show(config: str | None, more_configs: tuple[str, ...], backend: str | None, overrides: tuple[str, ...],
                as_json: bool) -> None:
    """Print the resolved config (defaults filled in) of CONFIG, or of the quickstart, with each --config
    merged over it and CROSSFRAME_<SECTION>__<KEY> environment overrides applied."""
    from crossframe.config.loading import config_to_dict, dump_yaml, env_overrides, load_config

    source = [*([config] if config else []), *more_configs] if more_configs else config
    resolved = load_config(source, [*env_overrides(), *overrides], backend=backend)
    if resolved.compress or resolved.export:  # validated exactly as `crossframe run` does before training
        from crossframe.compress.pipeline import check_steps

        check_steps(resolved.compress, resolved.export)
    if as_json:
        click.echo(json.dumps(config_to_dict(resolved), indent=2))
    else:
        sys.stdout.write(dump_yaml(resolved))


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of a config file (for editors: completion and checks as you type)."""
    from crossframe.config.schema import RunConfig

    schema = RunConfig.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "crossframe run config",
              **{k: v for k, v in schema.items() if k != "title"}}
    click.echo(json.dumps(schema, indent=2))


from crossframe.cli.compare import bench_command, compare_command  # noqa: E402  (click only)
from crossframe.cli.new_plugin import new_plugin_command  # noqa: E402  (click only)

COMMANDS = [run_command, eval_command, generate_command, data_group, plugins_command, backends_command, config_group,
            new_plugin_command, compare_command, bench_command]
