"""Hostile plugins: hooks and loggers that raise, and distributions that claim a name already taken.

Each plugin is laid out as an installed distribution on a directory put on ``sys.path`` (see
``tests/plugin_dists.py``; a fresh virtualenv per case would cost minutes here), and found through
its entry point exactly as an installed one is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossframe.checkpoint import load_checkpoint
from crossframe.cli.main import main
from crossframe.errors import PluginError
from crossframe.plugins import configure, get_plugin_manager
from tests.plugin_dists import make_distribution

pytest.importorskip("torch")

RAISES_IN = """
from crossframe import hookimpl

HOOK = {hook!r}


def _maybe(name):
    if name == HOOK:
        raise RuntimeError("boom in " + name + "\\nsecond line that must not be printed")


@hookimpl
def on_run_start(run):
    _maybe("on_run_start")


@hookimpl
def on_step_end(run, step, batch, logs):
    _maybe("on_step_end")


@hookimpl
def on_eval_end(run, step, metrics):
    _maybe("on_eval_end")


@hookimpl
def on_checkpoint_saved(run, step, path):
    _maybe("on_checkpoint_saved")


@hookimpl
def on_run_end(run, status, metrics):
    _maybe("on_run_end")


class BoomLogger:
    def __init__(self, params, run_dir):
        _maybe("__init__")

    def log_config(self, config):
        _maybe("log_config")

    def log_metrics(self, step, metrics):
        _maybe("log_metrics")

    def close(self):
        _maybe("close")


@hookimpl
def register_loggers(register):
    register("boom", BoomLogger, description="raises on purpose")
"""

HOOKS = ["on_run_start", "on_step_end", "on_eval_end", "on_checkpoint_saved", "on_run_end", "log_metrics", "close"]


def write_config(workdir: Path, tiny, **extra) -> str:
    cfg = {**tiny(steps=6, eval_every=3, checkpoint_every=3), "name": "run", "loggers": [{"name": "boom"}], **extra}
    (workdir / "cfg.json").write_text(json.dumps(cfg))
    return "cfg.json"


@pytest.mark.parametrize("hook", HOOKS)
def test_a_hook_that_raises_is_reported_once_by_plugin_and_the_run_goes_on(
        workdir: Path, site: Path, tiny, hook: str, capsys: pytest.CaptureFixture) -> None:
    make_distribution(site, "crossframe-raiser", "raiser", f"raiser_{hook}", RAISES_IN.format(hook=hook))
    config = write_config(workdir, tiny)
    code = main(["run", config, "-q"], keep_plugins=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0, err
    assert len(err) == 1, err
    assert "plugin 'raiser'" in err[0] and hook in err[0] and "RuntimeError: boom" in err[0]
    assert "second line" not in err[0] and "Traceback" not in err[0]
    assert load_checkpoint(workdir / "runs" / "run").step == 6
    record = get_plugin_manager().records["raiser"]
    assert record.status == "failed" and hook in record.error
    capsys.readouterr()
    assert main(["plugins", "--json"], keep_plugins=True) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["raiser"]["status"] == "failed" and hook in rows["raiser"]["error"]


@pytest.mark.parametrize("hook", ["__init__", "log_config"])
def test_a_logger_that_cannot_start_is_one_line_naming_its_plugin(workdir: Path, site: Path, tiny, hook: str,
                                                                   capsys: pytest.CaptureFixture) -> None:
    make_distribution(site, "crossframe-raiser", "raiser", f"raiser_start{hook}", RAISES_IN.format(hook=hook))
    assert main(["run", write_config(workdir, tiny), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plugin 'raiser'" in err[0] and "RuntimeError: boom" in err[0], err
    assert "Traceback" not in err[0]


def test_a_hook_that_raises_is_called_no_more_after_its_failure(workdir: Path, site: Path, tiny,
                                                                capsys: pytest.CaptureFixture) -> None:
    counting = RAISES_IN.format(hook="on_step_end").replace(
        'def on_step_end(run, step, batch, logs):\n    _maybe("on_step_end")',
        'def on_step_end(run, step, batch, logs):\n    CALLS.append(step)\n    _maybe("on_step_end")')
    counting += "\nCALLS = []\n"
    make_distribution(site, "crossframe-raiser", "raiser", "raiser_counting", counting)
    assert main(["run", write_config(workdir, tiny), "-q"], keep_plugins=True) == 0
    import raiser_counting

    assert raiser_counting.CALLS == [1]


def test_strict_mode_checkpoints_and_stops_on_a_failing_hook(workdir: Path, site: Path, tiny,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    make_distribution(site, "crossframe-raiser", "raiser", "raiser_strict", RAISES_IN.format(hook="on_step_end"))
    monkeypatch.setenv("CROSSFRAME_STRICT_PLUGINS", "1")
    code = main(["run", write_config(workdir, tiny, loggers=[]), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "plugin 'raiser'" in err[0] and "CROSSFRAME_STRICT_PLUGINS" in err[0], err
    assert "checkpoint written to" in err[0]
    assert load_checkpoint(workdir / "runs" / "run").step == 1  # stopped right after the failing step
    monkeypatch.delenv("CROSSFRAME_STRICT_PLUGINS")
    assert main(["--disable-plugin", "raiser", "run", "--resume", "runs/run", "-q"]) == 0
    assert load_checkpoint(workdir / "runs" / "run").step == 6


EVIL_BACKEND = """
from crossframe import hookimpl


class NotTorch:
    pass


@hookimpl
def register_backends(register):
    register("torch", NotTorch, description="claims the torch backend")
"""


def test_a_second_provider_of_a_backend_name_is_an_error_naming_both(workdir: Path, site: Path, tiny,
                                                                     capsys: pytest.CaptureFixture) -> None:
    make_distribution(site, "crossframe-evil", "evil", "evil_backend", EVIL_BACKEND)
    (workdir / "cfg.json").write_text(json.dumps({**tiny(steps=3), "name": "run"}))
    code = main(["run", "cfg.json", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for word in ("backend 'torch'", "'crossframe'", "'crossframe-evil'", "--disable-plugin evil", "'torch:torch'"):
        assert word in err[0]
    assert main(["--disable-plugin", "evil", "run", "cfg.json", "-q"]) == 0
    manager = configure()
    assert manager.get("backend", "torch:torch").plugin == "torch"  # the qualified name picks one
    assert manager.get("backend", "evil:torch").plugin == "evil"
    with pytest.raises(PluginError, match="provided by"):
        manager.get("backend", "torch")


def test_an_entry_point_named_torch_cannot_displace_the_first_party_backend(
        workdir: Path, site: Path, tiny, capsys: pytest.CaptureFixture) -> None:
    make_distribution(site, "crossframe-evil", "torch", "evil_backend", EVIL_BACKEND)
    (workdir / "cfg.json").write_text(json.dumps({**tiny(steps=3), "name": "run"}))
    assert main(["run", "cfg.json", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'crossframe-evil'" in err[0] and "entry point 'torch'" in err[0], err
    assert "--disable-plugin crossframe-evil" in err[0]
    manager = configure()
    assert manager.records["torch"].distribution == "crossframe"
    assert manager.records["torch@crossframe-evil"].status == "conflict"
    assert type(manager.get("backend", "torch").obj).__name__ != "NotTorch"
    assert main(["--disable-plugin", "crossframe-evil", "run", "cfg.json", "-q", "--set", "name=quiet"]) == 0
    assert capsys.readouterr().err.strip() == ""


def test_two_third_parties_claiming_one_entry_point_name_load_neither(site: Path) -> None:
    make_distribution(site / "a", "crossframe-one", "shared", "one_plugin", EVIL_BACKEND.replace("torch", "one"))
    make_distribution(site / "b", "crossframe-two", "shared", "two_plugin", EVIL_BACKEND.replace("torch", "two"))
    import sys

    sys.path[:0] = [str(site / "a"), str(site / "b")]
    try:
        manager = configure()
        conflicts = [r for r in manager.records.values() if r.status == "conflict"]
        assert {r.distribution for r in conflicts} == {"crossframe-one", "crossframe-two"}
        assert all("choose with --disable-plugin" in r.error for r in conflicts)
        assert configure(disabled=["crossframe-two"]).records["shared"].distribution == "crossframe-one"
    finally:
        sys.path[:] = [p for p in sys.path if p not in (str(site / "a"), str(site / "b"))]
