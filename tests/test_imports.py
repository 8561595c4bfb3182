"""The core and the CLI stay free of ML frameworks (checked in fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys

FRAMEWORKS = ("torch", "jax", "tensorflow", "flax", "optax", "keras")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in {frameworks} if m in sys.modules)))
"""


def loaded_frameworks(body: str) -> list[str]:
    """Run ``body`` in a fresh interpreter and list the frameworks it imported."""
    code = PROBE.format(body=body, frameworks=FRAMEWORKS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_crossframe_loads_no_framework() -> None:
    assert loaded_frameworks("import crossframe") == []


def test_cli_help_loads_no_framework() -> None:
    body = "from crossframe.cli.main import main\nimport contextlib, io\n" \
           "with contextlib.redirect_stdout(io.StringIO()): rc = main(['--help'])\nassert rc == 0"
    assert loaded_frameworks(body) == []


def test_cli_plugins_loads_no_framework() -> None:
    body = "from crossframe.cli.main import main\nimport contextlib, io\n" \
           "buf = io.StringIO()\nwith contextlib.redirect_stdout(buf): rc = main(['plugins', '--json'])\n" \
           "assert rc == 0 and 'torch' in buf.getvalue()"
    assert loaded_frameworks(body) == []


def test_config_show_loads_no_framework() -> None:
    body = "from crossframe.cli.main import main\nimport contextlib, io\n" \
           "with contextlib.redirect_stdout(io.StringIO()): rc = main(['config', 'show'])\nassert rc == 0"
    assert loaded_frameworks(body) == []


def test_torch_entry_point_module_is_light() -> None:
    assert loaded_frameworks("import crossframe_torch") == []


def test_backend_factory_imports_torch_when_called() -> None:
    body = "from crossframe.plugins import component\ncomponent('backend', 'torch').obj()"
    assert loaded_frameworks(body) == ["torch"]
