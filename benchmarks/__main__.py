"""``python -m benchmarks [--quick | --smoke] [--out FILE.json]``: run the benchmarks, print Markdown, write JSON.

A benchmark is a module of this package with ``TITLE``, ``run(quick=..., log=...)`` returning a list
of result dicts, and ``table(rows)`` returning Markdown; ``startup`` runs first, then the
``<framework>_step`` modules (``torch_step`` first). A ``<framework>_step`` whose framework is not
installed is skipped and says so (``gpt_step`` covers every backend and skips a missing one itself).
When more than one benchmark runs, each runs in a fresh subprocess (``python -m benchmarks --only
NAME``) so frameworks, their thread pools and their allocators never share a process; the parent
merges their JSON and leads the report with one table of crossframe / native ratios from every
``*_step`` benchmark (MLP cases and the GPT, per backend). ``--smoke`` is ``--quick`` made smaller
still (one round, a few steps): CI runs it to check that every benchmark runs and reports.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchmarks
from benchmarks.common import SMOKE_ENV, machine_info, markdown_table

#: untracked (runs/ is ignored): a benchmark never overwrites a file in the repository
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "runs" / "benchmarks" / "results.json"
NOT_BENCHMARKS = {"common"}
#: ``*_step`` modules that cover several frameworks and skip a missing one themselves
MULTI_FRAMEWORK = {"gpt_step"}


def available() -> list[str]:
    """Benchmark module names: ``startup``, then ``torch_step``, then the other ``*_step`` modules."""
    names = [m.name for m in pkgutil.iter_modules(benchmarks.__path__)
             if not m.name.startswith("_") and m.name not in NOT_BENCHMARKS]
    first = [n for n in ("startup", "torch_step") if n in names]
    return first + sorted(n for n in names if n not in first)


def missing_framework(name: str) -> str | None:
    """The framework a ``<framework>_step`` benchmark needs, if it is not installed."""
    if not name.endswith("_step") or name in MULTI_FRAMEWORK:
        return None
    framework = name[: -len("_step")]
    return None if importlib.util.find_spec(framework) is not None else framework


def is_tracked(path: Path) -> bool:
    """Whether git tracks ``path`` (False outside a git checkout or without git)."""
    try:
        proc = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent,
                              capture_output=True, check=False)
    except OSError:
        return False
    return proc.returncode == 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="crossframe benchmarks, each beside a native baseline measured in the same run.")
    parser.add_argument("--quick", action="store_true",
                        help="few steps and repeats (a smoke test: about a minute on 2 cores)")
    parser.add_argument("--smoke", action="store_true",
                        help="--quick, smaller still: one round of a few steps per case (CI's smoke test)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run N benchmark processes at once (default 1; more skews the timings)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="FILE.json",
                        help=f"where to write the JSON results (default: {DEFAULT_OUT})")
    parser.add_argument("--only", action="append", choices=available(), metavar="NAME",
                        help=f"run only this benchmark (repeatable; one of {', '.join(available())})")
    parser.add_argument("--threads", "--torch-threads", dest="threads", type=int, default=1, metavar="N",
                        help="intra-op threads of the framework in the *_step benchmarks, the same for "
                             "crossframe and native (default: 1; 0: the framework's own choice)")
    args = parser.parse_args(argv)
    if args.out.parent.is_dir() and is_tracked(args.out):
        parser.exit(2, f"error: --out: '{args.out}' is tracked by git; benchmarks write to untracked files "
                       f"(default {DEFAULT_OUT})\n")
    if args.smoke:
        args.quick = True
        os.environ[SMOKE_ENV] = "1"  # this process and every benchmark process it starts
    return args


def run_one(name: str, quick: bool, threads: int) -> dict[str, Any]:
    """Run benchmark ``name`` in this process; its JSON section (title, seconds, rows, table)."""
    module = importlib.import_module(f"benchmarks.{name}")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    kwargs: dict[str, Any] = {"quick": quick, "log": log}
    if "threads" in inspect.signature(module.run).parameters:
        kwargs["threads"] = threads
    start = time.perf_counter()
    rows = module.run(**kwargs)
    return {"title": module.TITLE, "seconds": time.perf_counter() - start, "rows": rows,
            "table": module.table(rows)}


def run_isolated(name: str, quick: bool, threads: int) -> dict[str, Any]:
    """Run benchmark ``name`` in a fresh ``python -m benchmarks --only NAME``; its JSON section."""
    with tempfile.TemporaryDirectory(prefix="crossframe-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks", "--only", name, "--out", str(out), "--threads", str(threads)]
        if quick:
            cmd.append("--quick")
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, check=False)
        if proc.returncode != 0 or not out.is_file():
            return {"title": name, "error": f"exited {proc.returncode} (see its output above)", "rows": []}
        return json.loads(out.read_text())["benchmarks"][name]


#: the ``*_step`` benchmarks whose rows carry one backend's crossframe / native ``ratio`` per case
STEP_BACKENDS = {"torch_step": "torch", "jax_step": "jax", "tensorflow_step": "tensorflow"}


def ratio_rows(benchmarks_json: dict[str, Any]) -> list[dict[str, Any]]:
    """Every crossframe / native throughput ratio measured: ``{backend, case, ratio, unit}`` per row."""
    out = []
    for name, section in benchmarks_json.items():
        for row in section.get("rows", []):
            if name in STEP_BACKENDS and "ratio" in row:
                out.append({"backend": STEP_BACKENDS[name], "case": row["case"], "ratio": row["ratio"],
                            "crossframe": row["crossframe_steps_per_s"], "native": row["native_steps_per_s"],
                            "unit": "steps/s"})
            elif name == "gpt_step" and row.get("status") == "ok":
                out.append({"backend": row["backend"], "case": "gpt", "ratio": row["ratio"],
                            "crossframe": row["crossframe_tokens_per_s"], "native": row["native_tokens_per_s"],
                            "unit": "tokens/s"})
    return out


def ratio_table(rows: list[dict[str, Any]]) -> str:
    """Backends down, cases across: crossframe / native throughput (1.0 = no overhead)."""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    cases = sorted(dict.fromkeys(r["case"] for r in rows), key=lambda c: c == "gpt")  # the MLP cases, then gpt
    cell = {(r["backend"], r["case"]): f"{r['ratio']:.3f}" for r in rows}
    return markdown_table(["backend", *cases], [[b, *(cell.get((b, c), "-") for c in cases)] for b in backends])


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; print a Markdown report and write the JSON results."""
    args = parse_args(argv)
    selected = [name for name in available() if not args.only or name in args.only]
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    results: dict[str, Any] = {"command": command, "quick": args.quick, "smoke": args.smoke, "threads": args.threads,
                               "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
                               "benchmarks": {}}

    def one(name: str) -> dict[str, Any]:
        framework = missing_framework(name)
        if framework:
            print(f"== {name}: skipped ({framework} is not installed)", file=sys.stderr, flush=True)
            return {"title": name, "skipped": f"{framework} is not installed", "rows": []}
        if len(selected) == 1:
            print(f"== {name}", file=sys.stderr, flush=True)
            return run_one(name, args.quick, args.threads)
        return run_isolated(name, args.quick, args.threads)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        sections = list(pool.map(one, selected))
    results["benchmarks"] = dict(zip(selected, sections, strict=True))
    failed = any("error" in section for section in sections)
    results["ratios"] = ratio_rows(results["benchmarks"])
    results["machine"] = machine_info()
    results["seconds"] = time.perf_counter() - started

    m = results["machine"]
    print(f"`{command}` on {m['cpu']} ({m['cores_available']} cores), Python {m['python']}, "
          f"torch {m['torch']}, {args.threads or 'default'} intra-op thread(s) in *_step, {m['date']}\n")
    parts = []
    if results["ratios"]:
        parts.append("### crossframe / native throughput, per backend and case (1.0 = no overhead)\n\n"
                     + ratio_table(results["ratios"]))
    for name, section in results["benchmarks"].items():
        body = section.get("table") or f"{name}: {section.get('skipped') or section.get('error')}"
        parts.append(f"### {section['title']}\n\n{body}")
    print("\n\n".join(parts))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {args.out} ({results['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
