"""``crossframe explain RUN --method ...``: load a run, attribute, write the report."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import ConfigError
from crossframe.explain.gradients import integrated_gradients, saliency
from crossframe.explain.load import load_run
from crossframe.explain.permutation import permutation_importance
from crossframe.explain.report import write_report

METHODS = ("permutation", "integrated-gradients", "saliency", "attention")


def explain(run: str | os.PathLike, method: str, *, overrides: Iterable[str] = (), backend: str | None = None,
            samples: int = 256, steps: int = 64, repeats: int = 5, out_dir: str | os.PathLike | None = None,
            seed: int = 0) -> dict[str, Any]:
    """Explain a run's latest checkpoint with ``method``; writes PNG, HTML and JSON and returns the summary.

    ``samples`` validation examples are used (the first ones); ``steps`` is the integrated-gradients
    quadrature; ``repeats`` the permutations per feature. The report goes to ``RUN/explain`` by default.
    """
    if method not in METHODS:
        raise ConfigError(f"--method: '{method}' is not a method; use one of {', '.join(METHODS)}")
    if samples < 1 or steps < 1 or repeats < 1:
        raise ConfigError("explain: --samples, --steps and --repeats must each be >= 1")
    if method == "attention":
        return _attention(run, overrides, samples, out_dir)
    loaded = load_run(run, overrides, backend)
    x = np.asarray(loaded.dataset.x[:samples], np.float32)
    y = np.asarray(loaded.dataset.y[:samples])
    task = loaded.spec.data_info.task
    impl, state = loaded.backend, loaded.state
    summary: dict[str, Any] = {"run": loaded.run_dir.name, "step": loaded.step, "backend": loaded.config.backend,
                               "method": method, "samples": len(x)}
    examples = None
    if method == "permutation":
        per_feature, baseline = permutation_importance(lambda a: impl.predict(state, a), x, y, task, repeats, seed)
        summary.update(repeats=repeats, baseline_score=baseline,
                       score="accuracy" if task == "classification" else "negative mse")
    else:
        targets = _targets(impl, state, x, task)
        if method == "saliency":
            maps = saliency(impl, state, x, targets)
        else:
            maps, gap = integrated_gradients(impl, state, x, targets, steps)
            summary.update(steps=steps, baseline="zeros", completeness_gap_max=float(np.max(np.abs(gap))))
        per_feature = np.mean(np.abs(maps), axis=0)
        examples = maps
        summary["target"] = "predicted class" if task == "classification" else "output 0"
    out = Path(out_dir) if out_dir is not None else loaded.run_dir / "explain"
    paths = write_report(out, method, per_feature, summary, examples)
    return {**summary, "files": {k: str(v) for k, v in paths.items()}, "top_features": _top(per_feature)}


def _targets(impl: Any, state: Any, x: np.ndarray, task: str) -> np.ndarray:
    """The output each example is explained for: the predicted class, or output 0 for regression."""
    if task == "classification":
        return np.argmax(impl.predict(state, x), axis=1)
    return np.zeros(len(x), dtype=np.int64)


def _top(per_feature: np.ndarray, k: int = 5) -> list[int]:
    return [int(j) for j in np.argsort(-per_feature.reshape(-1))[:k]]


def robustness(run: str | os.PathLike, method: str, eps: float, steps: int = 10, *, overrides: Iterable[str] = (),
               backend: str | None = None, split: str = "val") -> dict[str, float]:
    """``{split}/accuracy`` and ``{split}/{method}_accuracy`` at ``eps`` (``crossframe eval --attack``)."""
    from crossframe.explain.attacks import robust_accuracy

    loaded = load_run(run, overrides, backend, split)
    if loaded.spec.data_info.task != "classification":
        raise ConfigError("--attack: attacks measure accuracy, so they need a classification run")
    x = np.asarray(loaded.dataset.x, np.float32)
    y = np.asarray(loaded.dataset.y)
    result = robust_accuracy(loaded.backend, loaded.state, x, y, method, eps, steps,
                             loaded.config.train.eval_batch_size)
    return {f"{split}/{k}": v for k, v in result.items()} | {"attack_eps": eps}


def _attention(run: str | os.PathLike, overrides: Iterable[str], samples: int,
               out_dir: str | os.PathLike | None) -> dict[str, Any]:
    """Attention maps of a ``gpt`` run on its first validation sequences (at most ``samples``, at most 4)."""
    from crossframe.checkpoint import load_checkpoint
    from crossframe.config.loading import load_config
    from crossframe.explain.attention import attention_maps, draw_maps, has_attention
    from crossframe.explain.report import write_attention_report
    from crossframe.models import spec_from_json
    from crossframe.train.data import load_training_data
    from crossframe.train.runner import CONFIG_FILE

    checkpoint = load_checkpoint(Path(run))
    run_dir = checkpoint.path.parent.parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"explain: '{run_dir}' has no {CONFIG_FILE}")
    spec = spec_from_json(checkpoint.state["model"])
    if not has_attention(spec):
        raise ConfigError(f"--method: 'attention' needs a model with attention layers; this run's model "
                          f"'{spec.name}' has none")
    cfg = load_config(run_dir / CONFIG_FILE, overrides)
    val = load_training_data(cfg).val
    seq_len = spec.data_info.input_shape[0]
    count = max(1, min(samples, 4, (len(val.tokens) - 1) // seq_len))
    tokens = np.asarray(val.tokens[: count * seq_len], dtype=np.int64).reshape(count, seq_len)
    maps, _ = attention_maps(spec, checkpoint.weights, tokens)
    summary: dict[str, Any] = {"run": run_dir.name, "step": checkpoint.step, "method": "attention",
                               "sequences": count, "layers": int(maps.shape[0]), "heads": int(maps.shape[2]),
                               "seq_len": seq_len, "source": "numpy reference on the canonical weights"}
    png = draw_maps(maps, f"attention - {run_dir.name} (step {checkpoint.step})")
    out = Path(out_dir) if out_dir is not None else run_dir / "explain"
    paths = write_attention_report(out, png, maps, summary)
    return {**summary, "files": {k: str(v) for k, v in paths.items()}, "top_features": []}
