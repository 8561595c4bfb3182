"""``crossframe serve RUN_OR_EXPORT`` and ``crossframe serve keys add|revoke|list``. Heavy imports stay inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class _ServeGroup(click.Group):
    """``serve PATH ...`` runs the server (the ``start`` command); ``serve keys ...`` manages keys."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group("serve", cls=_ServeGroup)
def serve_group() -> None:
    """Serve a run or an ONNX export over HTTP: `crossframe serve RUN_DIR [--port 8000]`.

    OpenAI-compatible /v1/completions and /v1/chat/completions for language models, /v1/predict
    for classifiers and regressors, /v1/models, /healthz, /readyz, /metrics; docs at /docs.
    """


@serve_group.command("start")
@click.argument("path")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every one).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--engine", type=click.Choice(["auto", "onnx", "native"]), default="auto", show_default=True,
              help="auto: ONNX Runtime where exported (a language model with a KV-cache backend: native).")
@click.option("--backend", "-b", help="Native backend to load the run on (default: the run's own).")
@click.option("--model-name", help="The model id clients name (default: the run directory's name).")
@click.option("--api-keys", type=click.Path(dir_okay=False), metavar="FILE",
              help="Require a key from FILE (see `crossframe serve keys add`); default: open.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Sequences per decode step (language models) or rows per batch (classifiers); 1: no batching.")
@click.option("--max-wait-ms", default=0.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="How long a classifier batch waits to fill (0: it takes the requests that queued "
                   "while the previous batch ran).")
@click.option("--max-body-kb", default=1024, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Largest request body.")
@click.option("--max-tokens-limit", default=1024, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Largest max_tokens a request may ask for.")
@click.option("--chat-template", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Jinja chat template for /v1/chat/completions (default: the run's chat_template.jinja).")
@click.option("--drain-seconds", default=30.0, show_default=True, type=click.FloatRange(0),
              help="On SIGTERM, how long in-flight requests may take to finish (0: no limit).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info")
def serve_command(path: str, host: str, port: int, engine: str, backend: str | None, model_name: str | None,
                  api_keys: str | None, max_batch: int, max_wait_ms: float, max_body_kb: int,
                  max_tokens_limit: int, chat_template: str | None, drain_seconds: float, log_level: str) -> None:
    """Serve PATH, a run directory or an export directory, until SIGTERM or Ctrl-C."""
    from crossframe.serve.app import ServeOptions
    from crossframe.serve.server import serve

    options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_kb * 1024,
                           max_tokens_limit=max_tokens_limit, api_keys=Path(api_keys) if api_keys else None)
    from crossframe.registry.uri import is_model_uri, resolve_run_path
    from crossframe.rundirs import resolve_run_dir

    # models:/NAME@ALIAS (a registered version, checked against its sha256 manifest) and runs/NAME@latest
    path = str(resolve_run_path(path) if is_model_uri(path) else resolve_run_dir(path))
    serve(path, host=host, port=port, engine=engine, backend=backend, name=model_name, chat_template=chat_template,
          options=options, drain_seconds=drain_seconds, log_level=log_level, echo=lambda m: click.echo(m, err=True))


@serve_group.group("keys")
def keys_group() -> None:
    """Manage the API key file (keys are stored as salted SHA-256 hashes)."""


@keys_group.command("add")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("name")
@click.option("--rate", type=int, metavar="N", help="At most N requests per minute with this key.")
def keys_add(file: str, name: str, rate: int | None) -> None:
    """Add a key called NAME to FILE and print it (it is not stored and cannot be shown again)."""
    from crossframe.serve.keys import add_key

    click.echo(add_key(Path(file), name, rate))


@keys_group.command("revoke")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.argument("name")
def keys_revoke(file: str, name: str) -> None:
    """Revoke NAME's key in FILE; a running server refuses it from its next request."""
    from crossframe.serve.keys import revoke_key

    revoke_key(Path(file), name)
    click.echo(f"revoked '{name}'", err=True)


@keys_group.command("list")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
def keys_list(file: str) -> None:
    """List the key names in FILE, their rate limits and whether they are revoked."""
    from crossframe.serve.keys import read_key_file

    for record in read_key_file(Path(file)):
        rate: Any = record.get("rate_per_minute") or "-"
        click.echo(f"{record['name']}\trate/min {rate}\t{'revoked' if record.get('revoked') else 'active'}")


COMMANDS = [serve_group]
