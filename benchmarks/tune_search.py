"""Hyperparameter search: what pruning saves, and what ``--jobs 2`` gains.

What is measured
----------------
pruning
    For each seed (0, 1, 2; quick mode: 0) the same study, its runs and its sampler seeded with it,
    run with ``pruner: none`` and then with each of ``median``, ``hyperband`` and
    ``successive_halving`` (Optuna's pruners, crossframe's defaults), first on the loop's
    evaluations (``budget: evaluations``), then on budget-aware rungs (``budget: schedule``: each
    budget a run whose schedule ends there, see ``crossframe.tune.budgets``), on digits-mlp with a
    log-uniform learning rate over [1e-5, 1] and a cosine schedule. The sampler is ``random``, so
    every study of a seed draws the very same trials and any difference is the pruner's (TPE would
    draw different trials once pruned ones enter its history). Reported per method and seed: the
    best value each study reaches, the optimizer steps it trained in all (``steps_ratio`` = without
    pruning / with it), and the steps each spent until it first reached the best value both reach
    (``steps_to_common_best_ratio``). ``python -m benchmarks.tune_search --pruning [--seeds=0,1]``
    runs these alone.
jobs
    The same study (random sampler, no pruning) as ``crossframe tune --jobs 1`` and ``--jobs 2``,
    each a fresh process (``python -m crossframe tune``), wall time from start to exit. ``--jobs 1``
    trains in the tuner's own process, once with ``OMP_NUM_THREADS=1`` and once with all available
    cores; ``--jobs 2`` runs two worker processes with cores / 2 threads each (set by crossframe).
    Reported: the wall times and ``speedup_ratio`` = the better jobs-1 time / the jobs-2 time. The
    baseline is what a user would otherwise do: one trial at a time, threads as they like.

Run it alone with ``python -m benchmarks.tune_search [--quick]``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import markdown_table, pick, smoke

#: (pruner, budget) pairs measured against ``pruner: none``: Optuna's pruners on the loop's evaluations,
#: and on budget-aware rungs (``budget: schedule``, see crossframe.tune.budgets)
METHODS = (("median", "evaluations"), ("hyperband", "evaluations"), ("successive_halving", "evaluations"),
           ("median", "schedule"), ("hyperband", "schedule"), ("successive_halving", "schedule"))
#: study seeds of the full run (the runs' seed and the sampler's); quick mode runs the first
SEEDS = (0, 1, 2)
TITLE = "Hyperparameter search: pruning vs none (total training steps), --jobs 2 vs --jobs 1 (wall time)"


def study(out: Path, name: str, trials: int, steps: int, pruner: str, hidden: list[int], seed: int = 0,
          budget: str = "evaluations") -> dict[str, Any]:
    """A digits-mlp study config with a ``tune:`` section over the learning rate (``seed``: the runs' and
    the sampler's)."""
    return {
        "name": name, "backend": "torch", "device": "cpu", "seed": seed, "output_dir": str(out),
        "data": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "mlp", "hidden": hidden},
        "train": {"steps": steps, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 0.003},
                  "schedule": {"name": "cosine", "warmup_steps": max(1, steps // 20)},
                  "eval_every": max(1, steps // 10), "log_every": max(1, steps // 10), "checkpoint_every": 0,
                  "keep_checkpoints": 1},
        "tune": {"metric": "val/loss", "sampler": "random", "pruner": pruner, "budget": budget, "trials": trials,
                 "seed": seed, "space": {"train.optimizer.lr": {"log_uniform": [1.0e-5, 1.0]}}},
    }


def _steps_to_reach(rows: list[dict[str, Any]], target: float) -> int:
    """Training steps a study spent, in trial order, until a complete trial's value was <= ``target``."""
    spent = 0
    for row in sorted(rows, key=lambda r: r["number"]):
        spent += row["steps"] or 0
        if row["state"] == "complete" and row["value"] <= target:
            return spent
    return spent


def pruning_rows(out: Path, quick: bool, log: Callable[[str], None],
                 seeds: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """For each seed, run the study without pruning, then with each method; one row per method and seed."""
    from crossframe.tune.api import tune

    trials, steps = pick(40, 16, 4, quick), pick(300, 150, 30, quick)
    if seeds is None:
        seeds = SEEDS if not quick else SEEDS[:1]
    methods = METHODS if not smoke() else (METHODS[0], METHODS[-1])
    rows = []
    for seed in seeds:
        results = {}
        for pruner, budget in (("none", "evaluations"), *methods):
            start = time.perf_counter()
            name = f"prune-{seed}-{pruner}-{budget}"
            result = tune(study(out, name, trials, steps, pruner, [64], seed, budget), quiet=True)
            summary = result.summary
            results[pruner, budget] = {"best": result.best_value, "steps": summary["total_steps"],
                                       "rows": summary["rows"], "pruned": summary["counts"]["pruned"],
                                       "seconds": time.perf_counter() - start}
            log(f"  seed {seed}, pruner {pruner}, budget {budget}: best {result.best_value:.4f}, "
                f"{summary['total_steps']} steps ({summary['counts']['pruned']} trials pruned) "
                f"in {results[pruner, budget]['seconds']:.1f} s")
        none = results["none", "evaluations"]
        for pruner, budget in methods:
            got = results[pruner, budget]
            target = max(none["best"], got["best"])  # the best value both studies reach
            to_none, to_got = _steps_to_reach(none["rows"], target), _steps_to_reach(got["rows"], target)
            rows.append({"case": f"pruning ({pruner}, budget {budget}), seed {seed}, {trials} trials x {steps} steps",
                         "pruner": pruner, "budget": budget, "seed": seed,
                         "trials": trials, "steps_per_trial": steps, "best_none": none["best"],
                         "best_pruned": got["best"], "same_best": none["best"] == got["best"],
                         "steps_none": none["steps"], "steps_pruned": got["steps"], "pruned": got["pruned"],
                         "common_best": target, "steps_to_common_best_none": to_none,
                         "steps_to_common_best_pruned": to_got, "steps_ratio": none["steps"] / max(1, got["steps"]),
                         "steps_to_common_best_ratio": to_none / max(1, to_got)})
    return rows


def _spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation of two equally long lists without ties (the Pearson of their ranks)."""
    import numpy as np

    rx, ry = (np.argsort(np.argsort(v)).astype(float) for v in (xs, ys))
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_rows(out: Path, seeds: tuple[int, ...], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """How well each early value ranks a seed's trials by their final value: the loop's evaluations at
    steps 30, 90 and 150 of one 300-step run, against runs of 33 and 100 steps whose schedule ends
    there (``budget: schedule``, nothing pruned). Spearman's rho, and the final best trial's rank."""
    import json

    import optuna

    from crossframe.tune.api import tune

    rows = []
    for seed in seeds:
        unpruned = tune(study(out, f"ranks-{seed}-none", 40, 300, "none", [64], seed), quiet=True)
        config = study(out, f"ranks-{seed}-budgets", 40, 300, "median", [64], seed, "schedule")
        config["tune"]["pruner_options"] = {"n_startup_trials": 10**6}  # report every budget, prune nothing
        budgeted = tune(config, quiet=True)
        early: dict[str, dict[int, float]] = {}
        final: dict[int, float] = {}
        for result, steps, label in ((unpruned, (30, 90, 150), "evaluation at step {} of 300"),
                                     (budgeted, (33, 100), "run of {} steps")):
            storage = f"sqlite:///{result.study_dir}/study.db"
            name = json.loads((result.study_dir / "study.json").read_text())["name"]
            for trial in optuna.load_study(study_name=name, storage=storage).trials:
                if result is unpruned:
                    final[trial.number] = trial.value
                for step in steps:
                    early.setdefault(label.format(step), {})[trial.number] = trial.intermediate_values[step]
        numbers = sorted(final)
        best = min(numbers, key=final.__getitem__)
        for label, values in early.items():
            rank = sorted(numbers, key=values.__getitem__).index(best) + 1
            rho = _spearman([values[n] for n in numbers], [final[n] for n in numbers])
            rows.append({"seed": seed, "value": label, "spearman": rho, "best_trial_rank": rank})
            log(f"  seed {seed}, {label}: spearman {rho:.3f}, the best trial ranks {rank} of {len(numbers)}")
    return rows


def _wall(config: Path, jobs: int, cwd: Path, threads: int, limit_s: float | None = None) -> tuple[float, bool]:
    """Wall time of ``crossframe tune CONFIG --jobs N`` in a fresh process, and whether it hit ``limit_s``."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "core"), str(root / "plugins"),
                                                    env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "crossframe", "tune", str(config), "-q", "--jobs", str(jobs)],
                              cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, True
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"crossframe tune --jobs {jobs} exited {proc.returncode}: {proc.stderr[-1000:]}")
    return wall, False


def jobs_row(out: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Wall time of one study with ``--jobs 1`` (1 thread, and all cores) and ``--jobs 2`` (cores / 2 each).

    The all-cores ``--jobs 1`` run is stopped at 4x the one-thread run's time: on a machine whose cores
    other processes also use, OpenMP threads that spin-wait for each other can slow it many times over.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    trials, steps = pick(12, 8, 2, quick), pick(3000, 400, 20, quick)
    walls: dict[str, float] = {}
    stopped = False
    for jobs, threads in ((1, 1), (2, 1), (1, cores)):
        key = f"jobs{jobs}_threads{threads}"
        if key in walls or (smoke() and jobs == 1 and threads > 1):  # smoke: one --jobs 1 run is enough
            continue
        config = out / f"{key}.yaml"
        config.write_text(yaml.safe_dump(study(out, key.replace("_", "-"), trials, steps, "none", [128, 64])))
        limit = 4 * walls["jobs1_threads1"] if jobs == 1 and threads > 1 else None
        walls[key], hit = _wall(config, jobs, out, threads, limit)
        stopped = stopped or hit
        log(f"  --jobs {jobs} ({threads} thread(s) per trial): {walls[key]:.1f} s{' (stopped)' if hit else ''}")
    all_cores = walls.get(f"jobs1_threads{cores}")  # None: not measured (smoke mode)
    one = min(walls["jobs1_threads1"], all_cores or math.inf)  # the better single-trial setting
    two = walls["jobs2_threads1"]
    return {"case": f"jobs, {trials} trials x {steps} steps", "trials": trials, "steps_per_trial": steps,
            "cores": cores, "jobs1_1thread_s": walls["jobs1_threads1"],
            "jobs1_all_cores_s": all_cores, "jobs1_all_cores_stopped": stopped,
            "jobs2_s": two, "speedup_ratio": one / two}


def run(quick: bool = False, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Both measurements, in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="crossframe-bench-tune-") as tmp:
        return [*pruning_rows(Path(tmp), quick, log), jobs_row(Path(tmp), quick, log)]


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per measurement."""
    out = []
    for r in rows:
        if "steps_ratio" in r:
            out.append([r["case"], f"best {r['best_none']:.4f} vs {r['best_pruned']:.4f}"
                        f" ({'same' if r['same_best'] else 'different'})",
                        f"{r['steps_none']} vs {r['steps_pruned']} steps ({r['pruned']} pruned)",
                        f"{r['steps_ratio']:.2f}x fewer steps in all; "
                        f"{r['steps_to_common_best_ratio']:.2f}x to reach {r['common_best']:.4f}"])
        else:
            over = ">" if r["jobs1_all_cores_stopped"] else ""
            all_cores = "-" if r["jobs1_all_cores_s"] is None else f"{over}{r['jobs1_all_cores_s']:.1f} s"
            out.append([r["case"], f"{r['cores']} cores", f"{r['jobs1_1thread_s']:.1f} s (1 thread), "
                        f"{all_cores} ({r['cores']} threads) vs {r['jobs2_s']:.1f} s",
                        f"{r['speedup_ratio']:.2f}x sooner than the better --jobs 1"])
    return markdown_table(["case", "result", "no pruning / jobs 1 vs pruning / jobs 2", "gain"], out)


if __name__ == "__main__":
    import json

    if "--ranks" in sys.argv:  # how early values rank the trials, on --seeds S,S,... (default: all of SEEDS)
        seeds = next((tuple(int(x) for x in a.split("=", 1)[1].split(",")) for a in sys.argv
                      if a.startswith("--seeds=")), SEEDS)
        with tempfile.TemporaryDirectory(prefix="crossframe-bench-tune-") as tmp:
            results = rank_rows(Path(tmp), seeds, print)
        print(markdown_table(["seed", "early value", "Spearman rho with the final value", "best trial's rank"],
                             [[r["seed"], r["value"], f"{r['spearman']:.3f}", r["best_trial_rank"]]
                              for r in results]))
        print(json.dumps(results, indent=2))
        sys.exit(0)
    elif "--pruning" in sys.argv:  # the pruning studies alone, on --seeds S,S,... (default: all of SEEDS)
        seeds = next((tuple(int(x) for x in a.split("=", 1)[1].split(",")) for a in sys.argv
                      if a.startswith("--seeds=")), None)
        with tempfile.TemporaryDirectory(prefix="crossframe-bench-tune-") as tmp:
            results = pruning_rows(Path(tmp), "--quick" in sys.argv, print, seeds)
    else:
        results = run(quick="--quick" in sys.argv)
    print(table(results))
    print(json.dumps(results, indent=2))
