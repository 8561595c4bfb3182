"""``crossframe new-plugin``: names and refusals, every kind rendered, and every kind used as a user would.

The end-to-end part renders one plugin of each kind, builds their wheels (``pip wheel
--no-build-isolation``, or ``python -m build`` when it is importable) and installs them into one
fresh virtual environment. That environment sees this one's packages (crossframe, torch, pytest,
setuptools, pip) through a ``.pth`` file, so nothing is downloaded: ``venv/bin/python -m pip``
(this environment's pip, run by the fresh interpreter) installs into the fresh environment only.
There, ``crossframe plugins`` lists each plugin, real runs use the dataset, the logger and the
backend, the command lists a run's checkpoints, and each plugin's own tests pass.

``contrib/plugin-template/`` is the checked-in ``crossframe new-plugin example --kind dataset``;
a test keeps it identical to a fresh render.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from crossframe import __version__, hookimpl
from crossframe.cli.new_plugin import (
    KINDS,
    MAX_NAME_LENGTH,
    PLACEHOLDER,
    compatible_range,
    new_plugin_command,
    render,
    write,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CONTRIB = REPO / "contrib" / "plugin-template"
#: what building or testing a checked-in template may leave behind (ignored by its .gitignore)
BUILD_LEFTOVERS = ("build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", "runs")
#: the names of the end-to-end plugins: '-' and '_' both end up as '_' in the module name
NAMES = {kind: f"demo-{kind}" for kind in KINDS} | {"logger": "demo_logger"}
POSIX = pytest.mark.skipif(os.name == "nt", reason="POSIX virtual-environment layout")


# --------------------------------------------------------------------------- the command


class _AddNewPlugin:
    """Puts ``new-plugin`` on the CLI in-process, whether or not the core lists it yet."""

    @hookimpl
    def register_commands(self, cli):
        cli.add_command(new_plugin_command)


@pytest.fixture
def new_plugin(crossframe_plugins, crossframe_cli, tmp_path: Path):
    """``new_plugin(*args)``: ``crossframe new-plugin *args --dir tmp_path`` through ``crossframe.cli.main``."""
    crossframe_plugins.register(_AddNewPlugin(), "new-plugin-under-test")

    def invoke(*args: str):
        return crossframe_cli("new-plugin", *args, "--dir", str(tmp_path))

    return invoke


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    return lines[0]


def test_writes_the_distribution_and_says_what_next(new_plugin, tmp_path: Path) -> None:
    result = new_plugin("rings", "--kind", "dataset")
    assert result.exit_code == 0, result.stderr
    target = tmp_path / "crossframe-rings"
    assert f"created crossframe-rings, a dataset plugin, in {target}" in result.stdout
    assert "pip install -e '.[test]'" in result.stdout
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == sorted(render("rings", "dataset"))
    for rel, text in render("rings", "dataset").items():
        assert (target / rel).read_text(encoding="utf-8") == text


@pytest.mark.parametrize("name", ["Rings", "1rings", "my rings", "rings!", "_rings", "rings-", "my--rings",
                                  "my_-rings", "ümlaut", "", "x" * (MAX_NAME_LENGTH + 1)])
def test_invalid_names_are_one_line_errors(new_plugin, tmp_path: Path, name: str) -> None:
    result = new_plugin(name, "--kind", "dataset")
    assert result.exit_code == 2, result.stderr
    line = _one_error_line(result)
    assert line.startswith(f"error: NAME: '{name}' is not a valid plugin name"), line
    assert not any(tmp_path.iterdir()), "nothing may be written"


@pytest.mark.parametrize(("name", "kind", "why"), [
    ("crossframe-rings", "dataset", "leave out the 'crossframe' prefix (e.g. 'rings')"),
    ("torch", "backend", "'torch' is already taken by the entry point of crossframe's torch plugin"),
    ("jax", "dataset", "is already taken by the entry point of crossframe's jax plugin"),
    ("digits", "dataset", "is already taken by crossframe's dataset 'digits'"),
    ("jsonl", "logger", "is already taken by crossframe's logger 'jsonl'"),
    ("run", "command", "is already taken by the command 'crossframe run'"),
    ("new-plugin", "command", "is already taken by the command 'crossframe new-plugin'"),
])
def test_names_crossframe_uses_are_refused(new_plugin, tmp_path: Path, name: str, kind: str, why: str) -> None:
    result = new_plugin(name, "--kind", kind)
    assert result.exit_code == 2, result.stderr
    assert why in _one_error_line(result)
    assert not any(tmp_path.iterdir())


def test_a_non_empty_directory_is_never_overwritten(new_plugin, tmp_path: Path) -> None:
    target = tmp_path / "crossframe-rings"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    result = new_plugin("rings", "--kind", "dataset")
    assert result.exit_code == 2, result.stderr
    line = _one_error_line(result)
    assert line == f"error: --dir: '{target}' already exists and is not empty; choose another NAME or --dir"
    assert [p.name for p in target.iterdir()] == ["mine.txt"] and (target / "mine.txt").read_text() == "keep me"

    (tmp_path / "crossframe-file").write_text("a file")
    result = new_plugin("file", "--kind", "dataset")
    assert result.exit_code == 2
    assert "exists and is not a directory" in _one_error_line(result)


def test_an_empty_directory_is_filled(new_plugin, tmp_path: Path) -> None:
    (tmp_path / "crossframe-rings").mkdir()
    result = new_plugin("rings", "--kind", "dataset")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "crossframe-rings" / "pyproject.toml").is_file()


@pytest.mark.parametrize("args", [("rings",), ("rings", "--kind", "optimizer")])
def test_a_missing_or_unknown_kind_is_a_usage_error(new_plugin, args: tuple[str, ...]) -> None:
    result = new_plugin(*args)
    assert result.exit_code == 2, result.stderr
    assert "--kind" in _one_error_line(result)


def test_help_lists_the_kinds(crossframe_plugins, crossframe_cli) -> None:
    crossframe_plugins.register(_AddNewPlugin(), "new-plugin-under-test")
    result = crossframe_cli("new-plugin", "--help")
    assert result.exit_code == 0, result.stderr
    assert "dataset|compressor|exporter|logger|command|backend|model|layer" in result.stdout


def test_the_command_module_imports_only_click() -> None:
    heavy = ("numpy", "pydantic", "yaml", "rich", "crossframe.plugins", "torch", "jax", "tensorflow")
    code = f"import sys, crossframe.cli.new_plugin\nprint([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_compatible_range() -> None:
    assert compatible_range("0.1.0") == ">=0.1,<0.2"
    assert compatible_range("0.12.3.dev1") == ">=0.12,<0.13"
    assert compatible_range("1.4.0") == ">=1.4,<2"


# --------------------------------------------------------------------------- what is rendered


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_a_complete_distribution(kind: str) -> None:
    name = NAMES[kind]
    module = "crossframe_" + name.replace("-", "_")
    files = render(name, kind)
    assert sorted(files) == sorted(["pyproject.toml", "README.md", ".gitignore", "tests/test_plugin.py",
                                    f"src/{module}/__init__.py", f"src/{module}/{kind}.py"])
    for rel, text in files.items():
        assert not PLACEHOLDER.search(text) and "{{" not in text, f"{rel}: a placeholder is left"
        if rel.endswith(".py"):
            compile(text, rel, "exec")
    meta = tomllib.loads(files["pyproject.toml"])
    project = meta["project"]
    assert project["name"] == f"crossframe-{name}" and project["version"] == "0.1.0"
    assert project["dependencies"] == [f"crossframe{compatible_range(__version__)}"]
    assert project["entry-points"]["crossframe"] == {name: module}
    assert any(req.startswith("pytest") for req in project["optional-dependencies"]["test"])
    readme = files["README.md"]
    for step in ('pip install -e ".[test]"', "python -m build", "twine check dist/*", "twine upload dist/*",
                 f"name: {name}" if kind in ("dataset", "logger") else name):
        assert step in readme, f"README lacks {step!r}"
    hooks = {"dataset": "register_datasets", "compressor": "register_compressors",
             "exporter": "register_exporters", "logger": "register_loggers", "command": "register_commands",
             "backend": "register_backends", "model": "register_models", "layer": "register_layers"}
    assert f"def {hooks[kind]}(" in files[f"src/{module}/__init__.py"]
    if kind == "backend":
        assert 'class TestNumpyBackend(BackendConformance):\n    """' in files["tests/test_plugin.py"]
        assert 'backend = NAME' in files["tests/test_plugin.py"] and f'NAME = "{name}"' in files["tests/test_plugin.py"]
    if kind == "compressor":
        assert "no command that runs compressors yet" in readme
    if kind in ("model", "layer"):  # written as neutral layers, checked by the conformance kit
        assert "crossframe.nn" in files[f"src/{module}/{kind}.py"]
    if kind == "layer":
        assert "assert_layers_conform(kinds=[NAME])" in files["tests/test_plugin.py"]


def test_entry_point_modules_import_nothing_heavy(tmp_path: Path) -> None:
    """What the entry point imports on every `crossframe` command is the hook module alone."""
    for kind in KINDS:
        write(tmp_path / kind, render(NAMES[kind], kind))
    paths = [str(tmp_path / kind / "src") for kind in KINDS]
    modules = ["crossframe_" + NAMES[kind].replace("-", "_") for kind in KINDS]
    code = (f"import sys; sys.path[:0] = {paths!r}\n"
            f"for m in {modules!r}: __import__(m)\n"
            "print([m for m in ('numpy', 'pydantic', 'torch', 'jax', 'tensorflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_rendered_code_is_lint_clean_even_with_the_longest_name(tmp_path: Path) -> None:
    longest = "a" * (MAX_NAME_LENGTH - 3) + "-bc"
    for kind in KINDS:
        write(tmp_path / kind, render(longest, kind))
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                          *(str(tmp_path / kind) for kind in KINDS)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_contrib_template_is_a_fresh_render() -> None:
    """contrib/plugin-template is `crossframe new-plugin example --kind dataset`, byte for byte."""
    want = render("example", "dataset")
    have = {}
    for path in CONTRIB.rglob("*"):
        rel = path.relative_to(CONTRIB)
        if path.is_file() and not any(part in BUILD_LEFTOVERS or part.endswith(".egg-info") for part in rel.parts):
            have[rel.as_posix()] = path.read_bytes()
    hint = "re-render it: rm -r contrib/plugin-template && crossframe new-plugin example --kind dataset " \
           "--dir contrib && mv contrib/crossframe-example contrib/plugin-template"
    assert sorted(have) == sorted(want), f"the files differ; {hint}"
    for rel, text in want.items():
        assert have[rel] == text.encode("utf-8"), f"{rel} differs from a fresh render; {hint}"


# --------------------------------------------------------------------------- installed, end to end

#: settings that would hide plugins, change the inner pytest or pip, or shadow the fresh environment
_SCRUB_PREFIXES = ("CROSSFRAME_", "PYTEST_", "PIP_")
_SCRUB_FRESH = ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE")


def _env(fresh: bool) -> dict[str, str]:
    scrub = _SCRUB_PREFIXES + (_SCRUB_FRESH if fresh else ())
    env = {k: v for k, v in os.environ.items() if not k.startswith(scrub)}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _tail(text: str | bytes | None, lines: int = 60) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text or ""
    return "\n".join(text.strip().splitlines()[-lines:])


def sh(args: list, what: str, *, cwd: Path, timeout: float = 300, fresh: bool = True
       ) -> subprocess.CompletedProcess:
    """Run ``args``; fail with its output, not a bare exit code, if it fails or hangs.

    ``fresh`` (for the fresh environment's interpreter) also drops ``PYTHONPATH`` and friends.
    """
    try:
        done = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(fresh), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} timed out after {timeout:.0f}s\n--- stdout\n{_tail(exc.stdout)}\n"
                    f"--- stderr\n{_tail(exc.stderr)}")
    if done.returncode != 0:
        pytest.fail(f"{what} exited with {done.returncode}\n--- stdout\n{_tail(done.stdout)}\n"
                    f"--- stderr\n{_tail(done.stderr)}")
    return done


class Installed:
    """The fresh environment with one plugin of each kind installed from its wheel."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "venv" / "bin" / "python"
        self.sources = {kind: root / "src" / f"crossframe-{NAMES[kind]}" for kind in KINDS}
        self.work = root / "work"

    def crossframe(self, *args: str, what: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
        """The fresh environment's ``crossframe`` (``python -m crossframe.cli.main``)."""
        return sh([self.python, "-m", "crossframe.cli.main", *args], what or f"crossframe {' '.join(args)}",
                  cwd=cwd or self.work)


def _build_is_installed() -> bool:
    """Whether pypa's `build` is importable (not merely a `build/` folder on the path)."""
    try:
        return importlib.util.find_spec("build.__main__") is not None
    except ImportError:
        return False


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    env = Installed(tmp_path_factory.mktemp("new-plugin-e2e"))
    env.work.mkdir()
    for kind, source in env.sources.items():
        write(source, render(NAMES[kind], kind))
    dist = env.root / "dist"
    if _build_is_installed():  # the documented path, when it is available
        for source in env.sources.values():
            sh([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source],
               f"python -m build {source.name}", cwd=env.root, fresh=False)
    else:
        sh([sys.executable, "-m", "pip", "wheel", "--no-index", "--no-deps", "--no-build-isolation", "-w", dist,
            *env.sources.values()], "pip wheel (the six plugins)", cwd=env.root, fresh=False)
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == len(KINDS), [w.name for w in wheels]

    sh([sys.executable, "-m", "venv", "--without-pip", env.root / "venv"], "python -m venv", cwd=env.root,
       fresh=False)
    purelib = sh([env.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                 "the fresh environment's site-packages", cwd=env.root).stdout.strip()
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in _site_dirs())
    Path(purelib, "_crossframe_outer.pth").write_text(lines)
    sh([env.python, "-m", "pip", "install", "--no-index", "--no-deps", *wheels], "pip install (the wheels)",
       cwd=env.root)
    installed_here = {p.name for p in Path(purelib).iterdir()}
    for kind in KINDS:
        assert "crossframe_" + NAMES[kind].replace("-", "_") in installed_here, sorted(installed_here)
    return env


@POSIX
def test_installed_plugins_are_listed_with_their_components(installed: Installed) -> None:
    rows = {row["name"]: row for row in json.loads(installed.crossframe("plugins", "--json").stdout)}
    for kind in KINDS:
        name = NAMES[kind]
        assert name in rows, sorted(rows)
        row = rows[name]
        assert row["status"] == "loaded", row
        assert (row["distribution"], row["version"]) == (f"crossframe-{name}", "0.1.0")
        assert row["module"] == "crossframe_" + name.replace("-", "_")
        assert row["components"] == ({} if kind == "command" else {kind: [name]}), row
    assert rows["torch"]["status"] == "loaded"  # crossframe's own plugins are seen too


@POSIX
@pytest.mark.parametrize("kind", KINDS)
def test_installed_plugin_passes_its_own_tests(installed: Installed, kind: str) -> None:
    tests = installed.sources[kind] / "tests"
    done = sh([installed.python, "-m", "pytest", tests, "-q", "-p", "no:cacheprovider"],
              f"the {kind} plugin's own tests", cwd=installed.work)
    assert " passed" in done.stdout and "error" not in done.stdout.splitlines()[-1], done.stdout


@POSIX
def test_a_run_uses_the_installed_dataset(installed: Installed) -> None:
    name = NAMES["dataset"]
    done = installed.crossframe("run", "digits-mlp", "-q", "--set", f"data.name={name}", "--set", "name=ds",
                                "--set", "model.hidden=[32]", "--set", "train.steps=60",
                                "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0")
    assert "completed after 60 steps" in done.stdout, done.stdout
    assert f"name: {name}" in (installed.work / "runs/ds/config.yaml").read_text()


@POSIX
def test_a_run_uses_the_installed_logger(installed: Installed) -> None:
    name = NAMES["logger"]
    installed.crossframe("run", "digits-mlp", "-q", "--set", f"loggers=[{{name: {name}, only: [train/]}}]",
                         "--set", "name=lg",
                         "--set", "train.steps=20", "--set", "train.log_every=10", "--set", "train.eval_every=0",
                         "--set", "train.checkpoint_every=0")
    lines = (installed.work / "runs/lg/metrics.tsv").read_text().splitlines()
    assert lines[0] == "step\tmetric\tvalue", lines
    rows = [line.split("\t") for line in lines[1:]]
    assert [(step, metric) for step, metric, _ in rows if metric == "train/loss"] == [
        ("10", "train/loss"), ("20", "train/loss")], lines
    assert all(metric.startswith("train/") and float(value) == float(value) for _, metric, value in rows)


@POSIX
def test_a_run_trains_on_the_installed_backend_and_torch_continues_it(installed: Installed) -> None:
    name = NAMES["backend"]
    done = installed.crossframe("run", "digits-mlp", "-q", "--backend", name, "--set", "name=np",
                                "--set", "train.steps=100",
                                "--set", "train.checkpoint_every=50", "--set", "train.eval_every=50")
    assert "completed after 100 steps" in done.stdout, done.stdout
    accuracy = float(done.stdout.split("val/accuracy ")[1].split()[0])
    assert accuracy > 0.8, done.stdout
    state = json.loads((installed.work / "runs/np/checkpoints/step_100/state.json").read_text())
    assert state["backend"] == name
    # canonical weights and optimizer state: another backend picks the run up where it stopped
    done = installed.crossframe("run", "-q", "--resume", "runs/np", "--backend", "torch",
                                "--set", "train.steps=120")
    assert "completed after 120 steps" in done.stdout, done.stdout


@POSIX
def test_the_installed_command_lists_checkpoints(installed: Installed, tmp_path: Path) -> None:
    from crossframe.checkpoint import save_checkpoint

    run_dir = tmp_path / "runs" / "demo"
    weights = {"w": np.ones((2, 2), np.float32)}
    for step in (10, 20):
        save_checkpoint(run_dir / "checkpoints", step, weights, {}, {"backend": "torch",
                        "last_eval": {"val/accuracy": step / 40}}, keep=3)
    done = installed.crossframe(NAMES["command"], str(run_dir))
    lines = done.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["step", "10"], ["step", "20"]], done.stdout
    assert lines[1].endswith("<- latest") and "val/accuracy 0.5000" in lines[1], done.stdout
    assert NAMES["command"] in installed.crossframe("--help").stdout
