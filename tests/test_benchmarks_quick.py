"""CI's smoke test of the benchmark suite: ``python -m benchmarks --smoke`` runs every benchmark
module (each in its own process) and reports numeric, positive figures and Markdown tables."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: keys of a row that are measured figures and must be finite and positive
FIGURE = re.compile(r"(per_s$|_s_[0n]_plugins$|ratio|_mfu$|_bytes$|_p\d\d_ms|throughput"
                    r"|^(plain|dp|opacus)_ms$|_over_|^vs_)")


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if FIGURE.search(k) and not isinstance(v, (list, dict))}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One smoke run of the whole suite, two benchmark processes at a time."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.__main__ import available
    finally:
        sys.path.remove(str(ROOT))
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--jobs", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    return {"proc": proc, "names": available(), "json": json.loads(out.read_text()) if out.is_file() else None}


def test_every_benchmark_ran(smoke: dict[str, Any]) -> None:
    proc, results = smoke["proc"], smoke["json"]
    assert results is not None, proc.stderr[-3000:]
    failed = {name: section["error"] for name, section in results["benchmarks"].items() if "error" in section}
    assert not failed and proc.returncode == 0, (failed, proc.stderr[-3000:])
    assert results["smoke"] and results["quick"]
    assert set(results["benchmarks"]) == set(smoke["names"])
    for name in ("startup", "torch_step", "jax_step", "tensorflow_step", "gpt_step", "token_store"):
        assert name in results["benchmarks"]


def test_figures_are_numeric_and_positive(smoke: dict[str, Any]) -> None:
    for name, section in smoke["json"]["benchmarks"].items():
        assert "error" not in section and "skipped" not in section, (name, section.get("error"))
        assert section["rows"], name
        assert section["seconds"] > 0
        for row in section["rows"]:
            if row.get("status") not in (None, "ok"):
                continue
            figures = _figures(row)
            assert figures, (name, sorted(row))
            for key, value in figures.items():
                assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, key, value)


def test_one_combined_ratio_table(smoke: dict[str, Any]) -> None:
    ratios = smoke["json"]["ratios"]
    cases = {(r["backend"], r["case"]) for r in ratios}
    for backend in ("torch", "jax", "tensorflow"):
        assert (backend, "gpt") in cases
        assert (backend, "mlp-digits") in cases
    assert all(r["ratio"] > 0 for r in ratios)
    stdout = smoke["proc"].stdout
    head = stdout.split("### crossframe / native throughput")[1].split("###")[0]
    assert re.search(r"^\| backend \| .*mlp-digits.*\| gpt \|$", head, re.M), head
    for backend in ("torch", "jax", "tensorflow"):
        assert re.search(rf"^\| {backend} \| [0-9]", head, re.M), head
    for section in smoke["json"]["benchmarks"].values():
        assert section["table"].startswith("| ") and "|---" in section["table"]
        assert section["title"] in stdout


def test_bench_command_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    from crossframe.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "benchmarks/" in err[0]


def test_bench_command_forwards_to_the_benchmarks(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
                                                   ) -> None:
    from crossframe.cli.main import main

    monkeypatch.chdir(ROOT)
    assert main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "python -m benchmarks" in out and "--smoke" in out


def test_benchmarks_refuse_to_overwrite_a_tracked_file() -> None:
    """The recorded results in the repository are a reference: a run may not write over them."""
    root = Path(__file__).resolve().parents[1]
    tracked = root / "benchmarks" / "results.json"
    if subprocess.run(["git", "ls-files", "--error-unmatch", "benchmarks/results.json"], cwd=root,
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("not a git checkout with benchmarks/results.json tracked")
    before = tracked.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "startup", "--out", str(tracked)],
                          cwd=root, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "is tracked by git" in proc.stderr
    assert tracked.read_bytes() == before
