"""The compress/export pipeline: trained canonical weights -> compress steps -> export steps -> report.

It runs after training when the config has ``compress`` or ``export`` steps, and on an existing
run through ``crossframe compress RUN_DIR`` and ``crossframe export RUN_DIR --format F``. Each
compress step:

1. builds a :class:`~crossframe.compress.base.CompressContext` from the current spec, weights and masks;
2. applies the compressor (validated against its plugin's schema, after the pipeline's own keys
   ``finetune_steps`` and ``finetune_lr`` are taken out);
3. rebuilds the spec when the compressor changed the architecture (``model_params``);
4. evaluates the result with the chosen backend on the run's validation data;
5. optionally fine-tunes it with the one training loop, masks held inside the backend's step;
6. writes ``RUN_DIR/compressed/<i>-<name>/`` atomically: ``model.safetensors`` (canonical float
   weights, loadable by every backend and by ``crossframe eval``), ``state.json``, ``config.yaml``
   (the config with the changed model params), ``masks.safetensors`` and ``quantized.safetensors``
   (the compressor's ``stored`` tensors) when present.

Then each export step runs on the final weights through :func:`crossframe.export.export_model`
(or, for the deployment quantisers of :mod:`crossframe.compress.deploy`, through ONNX Runtime),
is verified against the native model and, for ONNX artefacts, timed against it. Every step adds
an entry to ``RUN_DIR/report.json`` / ``report.md`` (see :mod:`crossframe.compress.report`).
A model trained on one backend can be compressed and exported through another (``backend``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from crossframe.checkpoint import MODEL_FILE, STATE_FILE, Checkpoint, json_default, load_checkpoint, save_tensors
from crossframe.compress.base import CompressContext, CompressResult
from crossframe.compress.measure import (
    evaluate_predictions,
    headline,
    latency,
    masked_sparsity,
    nonzero_params,
    output_diff,
    scalars,
    size_on_disk,
    sparsity,
)
from crossframe.compress.report import Report
from crossframe.config.loading import atomic_write_text, dump_yaml, load_config, read_config_file
from crossframe.config.schema import ComponentConfig, ModelConfig, RunConfig
from crossframe.config.validation import describe, validate_params
from crossframe.errors import ConfigError, CrossframeError, ExportError, UsageError
from crossframe.export.files import atomic_output
from crossframe.models import build_model, spec_from_json
from crossframe.models.spec import ModelSpec, Params
from crossframe.plugins import component
from crossframe.rundirs import resolve_run_dir
from crossframe.security import Protection, protecting

#: keys of a compress step that the pipeline reads itself (the compressor's schema never sees them)
FINETUNE_KEYS = ("finetune_steps", "finetune_lr")
COMPRESSED_DIR = "compressed"
EXPORTS_DIR = "exports"
MASKS_FILE = "masks.safetensors"
STORED_FILE = "quantized.safetensors"
CONFIG_FILE = "config.yaml"


@dataclass
class Stage:
    """The model as it stands between steps."""

    spec: ModelSpec
    weights: Params
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None  # the checkpoint directory it was loaded from or written to
    metrics: dict[str, float] | None = None

#: ``export: [{name: hf}]``: a Hugging Face directory (crossframe.hf.exporting), not an exporter plugin
HF_FORMAT = "hf"


@dataclass
class Options:
    """How the pipeline measures: latency batch sizes and time, ONNX Runtime threads, output."""

    quiet: bool = False
    latency: bool = True
    latency_batch: int | None = None  # the larger batch (default: 64 examples, 8 sequences)
    latency_budget_s: float = 0.3
    threads: int = 0  # ONNX Runtime intra-op threads (0: its own choice)
    verify_examples: int = 256


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    from crossframe.checkpoint import load_tensors

    return load_tensors(path) if path.is_file() else {}  # sealed (security.encrypt) or plain


def component_list(value: Any, where: str) -> list[ComponentConfig]:
    """Validate a raw ``compress`` / ``export`` list (from a file) as components."""
    try:
        return TypeAdapter(list[ComponentConfig]).validate_python(value or [])
    except ValidationError as exc:
        raise ConfigError(describe(exc, ComponentConfig, where)) from None


def split_step(step: ComponentConfig, where: str) -> tuple[dict[str, Any], int, float | None]:
    """A compress step's own params, and its ``finetune_steps`` / ``finetune_lr``."""
    params = step.params
    steps_raw = params.pop("finetune_steps", 0)
    lr_raw = params.pop("finetune_lr", None)
    if isinstance(steps_raw, bool) or not isinstance(steps_raw, int) or steps_raw < 0:
        raise ConfigError(f"{where}.finetune_steps: expected a whole number >= 0, got {steps_raw!r}")
    if lr_raw is not None and (isinstance(lr_raw, bool) or not isinstance(lr_raw, (int, float)) or lr_raw <= 0):
        raise ConfigError(f"{where}.finetune_lr: expected a number > 0, got {lr_raw!r}")
    return params, steps_raw, None if lr_raw is None else float(lr_raw)


class Pipeline:
    """Compress and export one run's model on one backend, writing the report as it goes."""

    def __init__(self, cfg: RunConfig, run_dir: Path, options: Options | None = None, training: bool = False) -> None:
        from crossframe.train.data import load_training_data
        from crossframe.train.runner import metric_functions, prepare_backend

        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.options = options or Options()
        self.backend, self.device = prepare_backend(cfg, training=training)
        self.data = load_training_data(cfg)
        self.task = self.data.info.task
        self.metric_fns = metric_functions(cfg, self.task)
        self._applied: list[ComponentConfig] = []  # the compress steps done so far (for each step's config.yaml)
        self._native_latency: dict[str, Any] | None = None
        self._native_state: tuple[int, Any] | None = None

    # ------------------------------------------------------------------ measuring

    def evaluate(self, spec: ModelSpec, weights: Params) -> dict[str, float]:
        """Validation metrics of ``weights`` on the pipeline's backend (scalars only)."""
        from crossframe.train.loop import evaluate_dataset

        state = self.backend.inference_state(spec, weights, self.device, self.cfg.precision)
        return scalars(evaluate_dataset(self.backend, state, self.data.val, self.cfg.train.eval_batch_size,
                                        self.metric_fns))

    def _native_predictor(self, stage: Stage) -> Callable[[np.ndarray], np.ndarray]:
        if self._native_state is None or self._native_state[0] != id(stage):
            self._native_state = (id(stage), self.backend.inference_state(stage.spec, stage.weights, self.device,
                                                                          self.cfg.precision))
        state = self._native_state[1]
        return lambda x: self.backend.predict(state, x)

    def sample(self, n: int | None = None) -> np.ndarray:
        """A real input batch (``x`` of the first training batch), cut or tiled to ``n`` rows."""
        x = np.asarray(self.data.loader.batch(0)["x"])
        if n is None:
            return x
        reps = -(-n // len(x))
        return np.concatenate([x] * reps)[:n] if reps > 1 else x[:n]

    def calibration(self, batches: int) -> list[np.ndarray]:
        """``x`` of the first ``batches`` training batches (calibration for static quantisation)."""
        return [np.asarray(self.data.loader.batch(step)["x"]) for step in range(batches)]

    def _verify_batches(self) -> list[dict[str, np.ndarray]]:
        out, seen = [], 0
        for batch in self.data.val.eval_batches(min(self.cfg.train.eval_batch_size, self.options.verify_examples)):
            out.append(batch)
            seen += len(batch["x"])
            if seen >= self.options.verify_examples:
                break
        return out

    def _latency(self, predict: Callable[[np.ndarray], Any], stage: Stage) -> dict[str, Any]:
        big = self.options.latency_batch or (8 if self.task == "language_modeling" else 64)
        sizes = {"batch_1": 1, f"batch_{big}": big}
        budget = self.options.latency_budget_s
        runtime = {key: latency(predict, self.sample(n), budget) for key, n in sizes.items()}
        if self._native_latency is None or self._native_latency.get("_stage") != id(stage):
            native_fn = self._native_predictor(stage)
            self._native_latency = {"_stage": id(stage), **{key: latency(native_fn, self.sample(n), budget)
                                                            for key, n in sizes.items()}}
        native = {k: v for k, v in self._native_latency.items() if k != "_stage"}
        return {"runtime": runtime, "native": native, "ort_threads": self.options.threads,
                "native_backend": self.cfg.backend}

    def _base_entry(self, stage: Stage) -> dict[str, Any]:
        metric, value = headline(self.task, stage.metrics or {})
        return {"backend": self.cfg.backend, "model": stage.spec.name, "param_count": stage.spec.param_count,
                "nonzero_params": nonzero_params(stage.weights), "sparsity": sparsity(stage.weights),
                "masked_sparsity": masked_sparsity(stage.masks), "metric": metric, "metric_after": value,
                "metrics_after": stage.metrics}

    # ------------------------------------------------------------------ compress

    def start(self, checkpoint: Checkpoint) -> Stage:
        """The stage a checkpoint holds (a training checkpoint or a compressed step), evaluated."""
        spec = spec_from_json(checkpoint.state["model"]) if "model" in checkpoint.state else build_model(
            self.cfg.model.name, self.cfg.model.params, self.data.info)
        spec.check_weights(checkpoint.weights, f"checkpoint '{checkpoint.path}'")
        masks = _load_tensors(checkpoint.path / MASKS_FILE)
        stage = Stage(spec, checkpoint.weights, masks, checkpoint.path)
        stage.metrics = self.evaluate(spec, stage.weights)
        return stage

    def compress(self, stage: Stage, steps: Sequence[ComponentConfig], report: Report) -> Stage:
        """Apply ``steps`` in order from ``stage``; returns the final stage.

        Step directories of an earlier, longer pass (no longer in the report) are removed afterwards.
        """
        for i, step in enumerate(steps, start=1):
            stage = self.compress_step(stage, i, step, report)
        written = {f"{i}-{step.name}" for i, step in enumerate(steps, start=1)}
        root = self.run_dir / COMPRESSED_DIR
        if steps and root.is_dir():
            for old in root.iterdir():
                if old.is_dir() and not old.name.startswith(".") and old.name not in written:
                    shutil.rmtree(old, ignore_errors=True)
        return stage

    def compress_step(self, stage: Stage, index: int, step: ComponentConfig, report: Report) -> Stage:
        """One compress step: apply, rebuild, evaluate, fine-tune, write, report."""
        where = f"compress.{index - 1}"
        comp = component("compressor", step.name, f"{where}.name")
        own, ft_steps, ft_lr = split_step(step, where)
        params = validate_params(comp.schema, own, where)
        started = time.perf_counter()
        compressor = comp.obj(params)
        context = CompressContext(stage.spec, stage.spec.name, dict(stage.spec.params), stage.weights,
                                  dict(stage.masks), self.cfg.seed)
        try:
            result: CompressResult = compressor.apply(context)
        except CrossframeError as exc:  # the compressor names its param; say which step of the list it was
            message = str(exc)
            raise type(exc)(message if message.startswith(where) else f"{where}: {message}") from None
        spec = stage.spec
        if result.model_params is not None:
            spec = build_model(stage.spec.name, result.model_params, stage.spec.data_info)
        spec.check_weights(result.weights, f"{where} ('{step.name}') result")
        masks = {k: v for k, v in {**stage.masks, **result.masks}.items()
                 if k in result.weights and np.shape(result.weights[k]) == np.shape(v)}
        weights = dict(result.weights)
        metrics = self.evaluate(spec, weights)
        before_ft = metrics
        finetune_info = None
        if ft_steps:
            if result.stored:
                raise ConfigError(f"{where}.finetune_steps: '{step.name}' stores quantised values that fine-tuning "
                                  "would discard; fine-tune an earlier step instead")
            from crossframe.compress.finetune import finetune

            lr = ft_lr if ft_lr is not None else 0.1 * float(self.cfg.train.optimizer.params["lr"])
            weights, _ = finetune(self.cfg, self.backend, self.device, spec, weights, masks, self.data,
                                  self.metric_fns, ft_steps, lr, self.run_dir / COMPRESSED_DIR,
                                  f"finetune {index}-{step.name}", self.options.quiet)
            metrics = self.evaluate(spec, weights)
            finetune_info = {"steps": ft_steps, "lr": lr, "metrics_before": before_ft}
        self._applied.append(step)
        final = self.run_dir / COMPRESSED_DIR / f"{index}-{step.name}"
        new = Stage(spec, weights, masks, final, metrics)
        self._write_stage(new, index, step, result, stage)
        metric, before = headline(self.task, stage.metrics or {})
        _, after = headline(self.task, metrics)
        entry = {
            "index": index, "kind": "compress", "name": step.name, "backend": self.cfg.backend,
            "format": "safetensors", "path": str(final), "size_bytes": size_on_disk(final / MODEL_FILE),
            "stored_bytes": size_on_disk(final / STORED_FILE) if result.stored else None,
            "sparsity": sparsity(weights), "masked_sparsity": masked_sparsity(masks),
            "param_count": spec.param_count, "nonzero_params": nonzero_params(weights),
            "metric": metric, "metric_before": before, "metric_after": after,
            "metrics_before": stage.metrics, "metrics_after": metrics,
            "params": {**own, **({"finetune_steps": ft_steps} if ft_steps else {}),
                       **({"finetune_lr": ft_lr} if ft_lr is not None else {})},
            "finetune": finetune_info, "summary": result.summary, "verify": None, "latency": None,
            "seconds": time.perf_counter() - started,
        }
        report.add(entry)
        return new

    def _write_stage(self, stage: Stage, index: int, step: ComponentConfig, result: CompressResult,
                     source: Stage) -> None:
        cfg = self.cfg.model_copy(deep=True)
        # the stage's own weights are complete: no init_from
        cfg.model = ModelConfig.model_validate({"name": stage.spec.name, **stage.spec.params})
        cfg.compress = [ComponentConfig.model_validate(s.model_dump()) for s in self._applied]
        state = {"step": 0, "model": stage.spec.to_json(), "backend": self.cfg.backend,
                 "compress": {"index": index, "name": step.name, "params": step.params,
                              "summary": result.summary, "source": str(source.path) if source.path else None},
                 "metrics": stage.metrics, "time": time.time()}
        if source.path is not None and (source.path / STATE_FILE).is_file():
            with contextlib.suppress(OSError, ValueError):
                state["step"] = int(json.loads((source.path / STATE_FILE).read_text()).get("step", 0))

        def write(tmp: Path) -> None:
            save_tensors(stage.weights, tmp / MODEL_FILE)
            if stage.masks:
                save_tensors(stage.masks, tmp / MASKS_FILE)
            if result.stored:
                save_tensors(result.stored, tmp / STORED_FILE)
            atomic_write_text(tmp / CONFIG_FILE, dump_yaml(cfg))
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2, default=json_default))
            from crossframe.integrity import write_manifest

            write_manifest(tmp)  # a compressed step is a checkpoint: sha256 of each file, checked on load

        assert stage.path is not None
        with atomic_output(stage.path, directory=True) as tmp:
            write(tmp)

    # ------------------------------------------------------------------ export

    def export(self, stage: Stage, steps: Sequence[ComponentConfig], report: Report) -> list[dict[str, Any]]:
        """Run the export steps on ``stage``; returns their report entries."""
        return [self.export_step(stage, i, step, report) for i, step in enumerate(steps, start=1)]

    def _request(self, stage: Stage, out_dir: Path) -> Any:
        from crossframe.export.base import ExportRequest

        return ExportRequest(stage.spec, stage.weights, self.cfg.backend, out_dir, self.sample(),
                             self.device, self.cfg.precision)

    def _run_exporter(self, name: str, params: dict[str, Any], stage: Stage, out_dir: Path) -> tuple[Any, dict]:
        from crossframe.export import export_model

        out_dir.mkdir(parents=True, exist_ok=True)
        artifact, info = export_model(name, params, self._request(stage, out_dir))
        return artifact, dict(info or {})

    def export_step(self, stage: Stage, index: int, step: ComponentConfig, report: Report) -> dict[str, Any]:
        """One export step: write the artefact, verify it, measure it, report it."""
        from crossframe.compress import deploy

        where = f"export.{index - 1}"
        started = time.perf_counter()
        out_dir = self.run_dir / EXPORTS_DIR / f"{step.name}-{self.cfg.backend}"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        info: dict[str, Any] = {}
        tolerance = None
        if step.name in deploy.DEPLOY:
            from crossframe.security.artifacts import UNSEALABLE, refuse_unsealable

            refuse_unsealable(f"{where}.name: '{step.name}'", UNSEALABLE[step.name])
            params = deploy.parse_params(step.name, step.params, where)
            tolerance = params.tolerance

            def fp32_export(exporter: str, directory: Path) -> Path:
                artifact, _ = self._run_exporter(exporter, {}, stage, directory)
                return Path(artifact.path)

            req = deploy.DeployRequest(step.name, params, out_dir, fp32_export, self.calibration,
                                       lambda directory: self._request(stage, directory))
            made = deploy.DEPLOY[step.name](req)
            fmt, path, extra = made.format, made.path, dict(made.extra)
            if made.fp32_path is not None:
                extra["fp32_size_bytes"] = size_on_disk(made.fp32_path)
            predict = deploy.predictor(made, self.options.threads)
        else:
            artifact, info = self._run_exporter(step.name, step.params, stage, out_dir)
            fmt, path, extra = artifact.format, Path(artifact.path), dict(artifact.extra)
            if fmt == "onnx":
                from crossframe.compress.ort_quant import ort_predictor

                predict = ort_predictor(path, self.options.threads)
            else:
                comp = component("exporter", step.name, f"{where}.name")
                predict = comp.obj(validate_params(comp.schema, step.params, where)).load(artifact)
        batches = self._verify_batches()
        native = self._native_predictor(stage)
        max_abs = max_rel = 0.0
        for batch in batches:
            a, r = output_diff(predict(batch["x"]), native(batch["x"]))
            max_abs, max_rel = max(max_abs, a), max(max_rel, r)
        verify = {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "examples": sum(len(b["x"]) for b in batches),
                  "tolerance": tolerance, "against": f"{self.cfg.backend} fp32"}
        if isinstance(info.get("verify"), dict):  # the exporter's own check (other batch shapes)
            verify["exporter"] = info["verify"]
        if tolerance is not None:
            verify["passed"] = bool(max_rel <= tolerance)
            if not verify["passed"]:
                raise ExportError(f"{where} ('{step.name}'): outputs differ from the {self.cfg.backend} fp32 model by "
                                  f"{max_rel:.4f} of their scale, over the tolerance {tolerance}")
        metrics_after = evaluate_predictions(predict, self.data.val.eval_batches(self.cfg.train.eval_batch_size),
                                             self.task)
        metric, before = headline(self.task, stage.metrics or {})
        _, after = headline(self.task, metrics_after)
        entry = {
            "index": index, "kind": "export", "name": step.name, "backend": self.cfg.backend, "format": fmt,
            "path": str(path), "size_bytes": size_on_disk(path), "sparsity": sparsity(stage.weights),
            "masked_sparsity": masked_sparsity(stage.masks), "param_count": stage.spec.param_count,
            "nonzero_params": nonzero_params(stage.weights), "metric": metric, "metric_before": before,
            "metric_after": after, "metrics_before": stage.metrics, "metrics_after": metrics_after,
            "params": step.params, "source": str(stage.path) if stage.path else None, "verify": verify,
            "extra": {**{k: v for k, v in extra.items() if k != "verify"},
                      **{k: v for k, v in info.items() if k not in ("verify", "path", "size_bytes", "format")}},
            "latency": self._latency(predict, stage) if fmt in ("onnx", "tflite", "torch-int8") and self.options.latency
            else None,
            "seconds": time.perf_counter() - started,
        }
        runtime_b1 = (entry["latency"] or {}).get("runtime", {}).get("batch_1", {})
        entry["latency_p50_ms"], entry["latency_p99_ms"] = runtime_b1.get("p50_ms"), runtime_b1.get("p99_ms")
        from crossframe.integrity import write_manifest

        write_manifest(out_dir)  # sha256 of each exported file, checked when it is loaded or registered
        report.add(entry)
        return entry


# ---------------------------------------------------------------------- entry points


def _run_config(run_dir: Path, overrides: Iterable[str], backend: str | None) -> RunConfig:
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise UsageError(f"RUN_DIR: '{run_dir}' is not a run directory (no {CONFIG_FILE})")
    return load_config(saved, overrides, backend=backend)


def _steps_from_file(path: str | os.PathLike, key: str) -> list[ComponentConfig]:
    data = read_config_file(path)
    return component_list(data.get(key), f"{path}: {key}")


def _needs_training(steps: Sequence[ComponentConfig]) -> bool:
    return any(isinstance(s.params.get("finetune_steps"), int) and s.params["finetune_steps"] > 0 for s in steps)


def _check_names(steps: Sequence[ComponentConfig], kind: str, field: str) -> None:
    """Fail before any work if a step names an unknown compressor / exporter (one line, exit 2)."""
    from crossframe.compress.deploy import DEPLOY
    from crossframe.errors import did_you_mean
    from crossframe.plugins import get_plugin_manager

    available = [*get_plugin_manager().components(kind), *((*DEPLOY, HF_FORMAT) if kind == "exporter" else [])]
    for i, step in enumerate(steps):
        if step.name not in available:
            raise ConfigError(f"{field}.{i}.name: unknown {kind} '{step.name}'{did_you_mean(step.name, available)} "
                              f"(available: {', '.join(sorted(available)) or 'none installed'})")


def check_steps(compress: Sequence[ComponentConfig], export: Sequence[ComponentConfig], encrypt: bool = False
                ) -> None:
    """Validate every compress and export step (names and params) before any work: one line, exit 2.

    ``crossframe run`` calls this before training and ``crossframe config show`` when showing a config,
    so a typo in ``compress:`` never costs a training run. With ``encrypt`` (``security.encrypt``) an
    export that can only be opened from files is refused here too.
    """
    from crossframe.compress import deploy
    from crossframe.security.artifacts import UNSEALABLE, unsealable

    _check_names(compress, "compressor", "compress")
    _check_names(export, "exporter", "export")
    for i, step in enumerate(compress):
        where = f"compress.{i}"
        own, _, _ = split_step(step, where)
        validate_params(component("compressor", step.name, f"{where}.name").schema, own, where)
    for i, step in enumerate(export):
        where = f"export.{i}"
        if encrypt and step.name in UNSEALABLE:
            raise unsealable(f"{where}.name: '{step.name}'", UNSEALABLE[step.name])
        if step.name == HF_FORMAT:
            if step.params:
                raise ConfigError(f"{where}: '{HF_FORMAT}' takes no params (got {', '.join(sorted(step.params))})")
        elif step.name in deploy.DEPLOY:
            deploy.parse_params(step.name, step.params, where)
        else:
            validate_params(component("exporter", step.name, f"{where}.name").schema, step.params, where)


def model_bytes(checkpoint: Checkpoint) -> int:
    """The baseline model's size: its checkpoint file, or, for an adapter-only LoRA checkpoint, the whole
    model it loads as (base + adapters, the weights compression starts from)."""
    if "lora_base" in checkpoint.state:
        return int(sum(np.asarray(v).nbytes for v in checkpoint.weights.values()))
    return size_on_disk(checkpoint.path / MODEL_FILE)


def check_hf_export(cfg: RunConfig) -> None:
    """``export: [{name: hf}]`` needs a model imported from a Hugging Face directory: one line before training."""
    for i, step in enumerate(cfg.export):
        if step.name == HF_FORMAT and cfg.model.name != "hf":
            raise ConfigError(f"export.{i}.name: 'hf' writes a Hugging Face directory of a model imported from one "
                              f"(model.name: hf); this run trains '{cfg.model.name}'")


def run_pipeline(cfg: RunConfig, run_dir: Path, checkpoint: Checkpoint, compress: Sequence[ComponentConfig],
                 export: Sequence[ComponentConfig], options: Options | None = None) -> Report | None:
    """Compress from ``checkpoint`` with ``compress``, then export the result with ``export``; the report
    (None when the only export is ``hf``, a Hugging Face directory of ``checkpoint``, which is not measured)."""
    check_steps(compress, export)
    others = [s for s in export if s.name != HF_FORMAT]
    report = None
    if compress or others:
        pipeline = Pipeline(cfg, run_dir, options, training=_needs_training(compress))
        report = Report.open(run_dir, fresh=bool(compress))
        stage = pipeline.start(checkpoint)
        if compress or "baseline" not in report.data:
            report.set_baseline({**pipeline._base_entry(stage), "path": str(checkpoint.path),
                                 "size_bytes": model_bytes(checkpoint)})
        stage = pipeline.compress(stage, compress, report)
        if compress:
            report.data["final"] = str(stage.path)
        pipeline.export(stage, others, report)
        report.write()
    if len(others) < len(export):  # export: [{name: hf}]: the trained (not compressed) model, adapters merged
        from crossframe.hf.exporting import export_run_hf

        written = export_run_hf(run_dir, str(checkpoint.path))
        if not (options or Options()).quiet:
            print(f"hf: {written}", file=sys.stderr, flush=True)
    return report


def after_training(cfg: RunConfig, run_dir: Path, quiet: bool = False) -> Report | None:
    """Run the config's compress and export steps on a run that just finished training."""
    if not cfg.compress and not cfg.export:
        return None
    checkpoint = load_checkpoint(Path(run_dir))
    return run_pipeline(cfg, Path(run_dir), checkpoint, cfg.compress, cfg.export, Options(quiet=quiet))


def compress_run(run_dir: str | os.PathLike, overrides: Iterable[str] = (), *, backend: str | None = None,
                 config: str | os.PathLike | None = None, export: bool = True,
                 options: Options | None = None) -> tuple[Report, int]:
    """``crossframe compress``: apply the run's (or ``config``'s) compress list to its trained checkpoint.

    Returns the report and how many of its steps this call added. With ``export`` the export
    list runs too.
    """
    run_dir = resolve_run_dir(run_dir)
    cfg = _run_config(run_dir, overrides, backend)
    if config is not None:
        steps, exports = _steps_from_file(config, "compress"), _steps_from_file(config, "export")
    else:
        steps, exports = list(cfg.compress), list(cfg.export)
    if not steps:
        raise UsageError(f"compress: '{run_dir}' has no compress steps in its config; pass --config FILE "
                         "with a 'compress:' list or --set compress.0.name=prune")
    checkpoint = load_checkpoint(run_dir / "checkpoints")
    with protecting(Protection.from_config(cfg.security)):  # security: seal and sign what it writes
        report = run_pipeline(cfg, run_dir, checkpoint, steps, exports if export else [], options)
    assert report is not None  # compress steps always make one
    return report, len(steps) + (len(exports) if export else 0)


def export_run(run_dir: str | os.PathLike, formats: Sequence[str], *, backend: str | None = None,
               checkpoint: str | os.PathLike | None = None, overrides: Iterable[str] = (),
               options: Options | None = None) -> tuple[Report, list[dict[str, Any]]]:
    """``crossframe export``: export the run's final model (its last compressed step when there is one).

    ``checkpoint`` picks another (a ``checkpoints/step_N`` or ``compressed/<i>-<name>`` directory).
    """
    run_dir = resolve_run_dir(run_dir)
    cfg = _run_config(run_dir, overrides, backend)
    if not formats:
        raise UsageError("export: name at least one --format (e.g. --format onnx)")
    steps = [ComponentConfig(name=f) for f in formats]
    if checkpoint is None:
        report = Report.open(run_dir, fresh=False)
        final = report.data.get("final")
        source = Path(final) if final and (Path(final) / MODEL_FILE).is_file() else run_dir / "checkpoints"
    else:
        source = Path(checkpoint)
    ckpt = load_checkpoint(source)
    _check_names(steps, "exporter", "--format")
    pipeline = Pipeline(cfg, run_dir, options)
    report = Report.open(run_dir, fresh=False)
    stage = pipeline.start(ckpt)
    if "baseline" not in report.data:
        report.set_baseline({**pipeline._base_entry(stage), "path": str(ckpt.path),
                             "size_bytes": model_bytes(ckpt)})
    with protecting(Protection.from_config(cfg.security)):  # security.sign: sign the export manifests
        entries = pipeline.export(stage, steps, report)
    report.write()
    return report, entries
