"""The entry point: builds the command group from plugins and turns errors into one line.

``--debug`` shows tracebacks; ``--disable-plugin NAME`` (repeatable) skips an entry point.
Both are read before the group is built, since plugins contribute commands.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence

import click

from crossframe import __version__

EXIT_USAGE = 2
#: OS errors that describe the machine, not a bug: reported in one line (exit 1), no traceback
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EMFILE}


def _pre_parse(argv: list[str]) -> tuple[bool, list[str]]:
    """Find ``--debug`` and ``--disable-plugin`` before click runs (they shape the CLI itself)."""
    debug = "--debug" in argv or os.environ.get("CROSSFRAME_DEBUG", "") not in ("", "0")
    disabled: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--disable-plugin" and i + 1 < len(argv):
            disabled.append(argv[i + 1])
        elif arg.startswith("--disable-plugin="):
            disabled.append(arg.split("=", 1)[1])
    return debug, disabled


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="crossframe")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--disable-plugin", "disabled", multiple=True, metavar="NAME",
              help="Do not load the plugin with this entry-point name (repeatable).")
@click.option("--key-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="The AES-256 key for encrypted runs (default: $CROSSFRAME_KEY_FILE); never stored.")
def cli(debug: bool, disabled: tuple[str, ...], key_file: str | None) -> None:
    """crossframe: data -> train -> compress -> export -> compare, on any framework."""
    if key_file:  # read where it is needed (crossframe.security.keys), in this process and its workers
        os.environ["CROSSFRAME_KEY_FILE"] = key_file


def build_cli(disabled: Sequence[str] = (), keep_plugins: bool = False) -> click.Group:
    """Load plugins and let each add its commands (a failing one is reported and skipped).

    ``keep_plugins`` reuses the process's plugin manager (with any in-process registrations)
    instead of loading a fresh one; ``crossframe.testing`` uses it.
    """
    from crossframe.plugins import configure, get_plugin_manager

    manager = get_plugin_manager() if keep_plugins and not disabled else configure(disabled=disabled)
    manager.call_guarded("register_commands", cli=cli)
    for record in manager.failures:
        what = {"failed": "failed", "conflict": "conflicts"}.get(record.status, f"is {record.status}")
        click.echo(f"crossframe: plugin '{record.name}' {what} and was skipped: {record.error}", err=True)
    return cli


def main(argv: Sequence[str] | None = None, keep_plugins: bool = False) -> int:
    """Run the CLI; returns (and, as a script, exits with) the exit code."""
    from crossframe.errors import CrossframeError, Interrupted

    args = list(sys.argv[1:] if argv is None else argv)
    debug, disabled = _pre_parse(args)
    from crossframe.log import configure_cli_logging

    configure_cli_logging(debug)
    try:
        group = build_cli(disabled, keep_plugins)
        group.main(args=args, prog_name="crossframe", standalone_mode=False)
        return 0
    except CrossframeError as exc:
        if debug:
            raise
        click.echo(str(exc) if isinstance(exc, Interrupted) else f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except OSError as exc:  # a full disk or a permission problem: one line naming the file
        if debug or exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" ('{exc.filename}')" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        return 1


def entry() -> None:
    """Console-script wrapper; a launched worker ends without interpreter teardown (see
    :func:`crossframe.distributed.world.end_worker`)."""
    code = main()
    from crossframe.distributed.world import end_worker, is_worker

    if is_worker():
        end_worker(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
