"""Start-up cost: ``crossframe --help``, ``crossframe plugins`` and ``import crossframe`` in fresh processes.

Each command runs as a subprocess (output discarded) and its wall time, from ``subprocess.run``
to exit, is measured; the median over the repeats is reported. ``python -c pass`` is measured
the same way as the floor any Python command pays.

Two environments are compared, in interleaved order so drift cancels:

- ``0 extra plugins``: the environment as installed (the core plugin plus the first-party
  ``torch`` entry point; torch itself is never imported by these commands).
- ``50 extra plugins``: the same plus a temporary directory on ``PYTHONPATH`` holding 50
  ``*.dist-info`` directories (``METADATA`` + ``entry_points.txt`` in group ``crossframe``) and
  their one-file modules. Even-numbered ones implement ``register_schedules`` (one dummy
  schedule each), odd-numbered ones ``register_commands`` (doing nothing); none registers models.
  The benchmark checks, untimed, that ``crossframe plugins --json`` lists all 50 as loaded.

Bytecode: every subprocess gets ``PYTHONPYCACHEPREFIX`` pointing into a temporary directory and
``PYTHONDONTWRITEBYTECODE`` removed, and each command runs once untimed first, so the timed runs
read cached bytecode as in an ordinary installation and nothing is written into the repository.
``CROSSFRAME_*`` variables are removed from the subprocesses' environment.

Run it alone with ``python -m benchmarks.startup [--quick] [--out FILE.json]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, median, pick

TITLE = "Start-up time (fresh process, median wall time)"

DUMMY_PREFIX = "cf_bench_dummy_"

_SCHEDULE_PLUGIN = '''"""Dummy crossframe plugin {index} (startup benchmark): registers one schedule."""

import crossframe


def _flat(params, base_lr, total_steps):
    return lambda step: base_lr


@crossframe.hookimpl
def register_schedules(register):
    register("{name}", _flat, description="benchmark dummy")
'''

_COMMAND_PLUGIN = '''"""Dummy crossframe plugin {index} (startup benchmark): a register_commands that adds nothing."""

import crossframe


@crossframe.hookimpl
def register_commands(cli):
    pass
'''


def make_dummy_plugins(root: Path, count: int) -> list[str]:
    """Write ``count`` installed-looking plugin distributions into ``root``; returns their names."""
    names = []
    for index in range(count):
        name = f"{DUMMY_PREFIX}{index:02d}"
        template = _SCHEDULE_PLUGIN if index % 2 == 0 else _COMMAND_PLUGIN
        (root / f"{name}.py").write_text(template.format(index=index, name=name))
        info = root / f"{name}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[crossframe]\n{name} = {name}\n")
        names.append(name)
    return names


def crossframe_command() -> list[str]:
    """The ``crossframe`` console script of this interpreter's environment (or ``-m`` as a fallback)."""
    script = Path(sys.executable).parent / ("crossframe.exe" if os.name == "nt" else "crossframe")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "crossframe.cli.main"]


def commands() -> dict[str, list[str]]:
    """The timed commands, by the label shown in the table."""
    cli = crossframe_command()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import crossframe'": [sys.executable, "-c", "import crossframe"],
        "crossframe --help": [*cli, "--help"],
        "crossframe plugins": [*cli, "plugins"],
    }


def base_environment(pycache: Path) -> dict[str, str]:
    """The subprocess environment: ours without ``CROSSFRAME_*``, with a private bytecode cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSFRAME_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def with_path(env: dict[str, str], directory: Path) -> dict[str, str]:
    """``env`` with ``directory`` first on ``PYTHONPATH``."""
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(directory), env.get("PYTHONPATH", "")) if p)
    return out


def time_command(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one run of ``cmd``; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return seconds


def loaded_dummies(env: dict[str, str]) -> int:
    """How many dummy plugins ``crossframe plugins --json`` lists as loaded (an untimed sanity check)."""
    proc = subprocess.run([*crossframe_command(), "plugins", "--json"], env=env, capture_output=True,
                          text=True, check=True)
    rows = json.loads(proc.stdout)
    return sum(1 for row in rows if row["name"].startswith(DUMMY_PREFIX) and row["status"] == "loaded")


def run(quick: bool = False, log: Callable[[str], None] | None = None,
        repeats: int | None = None, plugins: int = 50) -> list[dict[str, Any]]:
    """Time every command in both environments; one result dict per command."""
    log = log or (lambda text: print(text, file=sys.stderr))
    repeats = repeats or pick(15, 3, 1, quick)
    with tempfile.TemporaryDirectory(prefix="crossframe-bench-startup-") as tmp:
        root = Path(tmp)
        plugin_dir = root / "plugins"
        plugin_dir.mkdir()
        make_dummy_plugins(plugin_dir, plugins)
        base = base_environment(root / "pycache")
        envs = {0: base, plugins: with_path(base, plugin_dir)}
        found = loaded_dummies(envs[plugins])
        if found != plugins:
            raise RuntimeError(f"startup: only {found} of {plugins} dummy plugins loaded; the benchmark is broken")
        cmds = commands()
        for cmd in cmds.values():  # untimed: fill the bytecode cache
            for env in envs.values():
                time_command(cmd, env)
        times: dict[tuple[str, int], list[float]] = {(label, n): [] for label in cmds for n in envs}
        for r in range(repeats):
            for label, cmd in cmds.items():
                order = list(envs) if r % 2 == 0 else list(reversed(envs))
                for n in order:
                    times[(label, n)].append(time_command(cmd, envs[n]))
            log(f"  startup: repeat {r + 1}/{repeats} done")
    rows = []
    for label in cmds:
        base_s, many_s = median(times[(label, 0)]), median(times[(label, plugins)])
        rows.append({
            "command": label,
            "repeats": repeats,
            "extra_plugins": plugins,
            "median_s_0_plugins": base_s,
            "median_s_n_plugins": many_s,
            "delta_s": many_s - base_s,
            "per_plugin_ms": (many_s - base_s) / plugins * 1e3,
            "runs_s_0_plugins": times[(label, 0)],
            "runs_s_n_plugins": times[(label, plugins)],
        })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run`'s results."""
    n = rows[0]["extra_plugins"] if rows else 50
    headers = ["command", "0 extra plugins (ms)", f"{n} extra plugins (ms)", "delta (ms)", "per plugin (ms)"]
    body = [
        [f"`{row['command']}`", f"{row['median_s_0_plugins'] * 1e3:.0f}",
         f"{row['median_s_n_plugins'] * 1e3:.0f}", f"{row['delta_s'] * 1e3:+.0f}",
         f"{row['per_plugin_ms']:+.2f}"]
        for row in rows
    ]
    return markdown_table(headers, body)


if __name__ == "__main__":
    from benchmarks.__main__ import main

    sys.exit(main(["--only", "startup", *sys.argv[1:]]))
