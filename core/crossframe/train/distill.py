"""Knowledge distillation: a trained teacher run, on any backend, for ``train.distill``.

The teacher is a run directory (or one of its checkpoints, or a compressed model's directory):
its saved ``config.yaml`` names the architecture, its latest checkpoint holds the canonical
weights. Those weights load into the *student's* backend, whichever backend trained them, and
the backend runs the teacher inside the student's compiled step (see
:class:`crossframe.backend.DistillSetup` for the loss).
"""

from __future__ import annotations

from pathlib import Path

from crossframe.backend import DistillSetup
from crossframe.checkpoint import load_checkpoint
from crossframe.config.schema import RunConfig
from crossframe.data.dataset import DataInfo
from crossframe.errors import CheckpointError, ConfigError
from crossframe.models import build_model
from crossframe.models.spec import ModelSpec

FIELD = "train.distill.teacher"
CONFIG_FILE = "config.yaml"  # as crossframe.train.runner.CONFIG_FILE (not imported: the runner imports us)


def teacher_path(teacher: str, output_dir: str | Path) -> Path:
    """Where ``teacher`` points: the path as given, or a run name under ``output_dir``."""
    path = Path(teacher).expanduser()
    if not path.exists() and not path.is_absolute() and (Path(output_dir) / path).exists():
        return Path(output_dir) / path
    return path


def _teacher_model(where: Path, state: dict) -> tuple[str, dict, DataInfo | None]:
    """The teacher's architecture name and params (from its saved config), and its data's shape if recorded.

    The config next to the checkpoint wins (a compressed model's directory holds its own, with the
    changed model params); otherwise the run directory's.
    """
    from crossframe.config.loading import load_config

    saved = state.get("model") or {}
    info = DataInfo.from_json(saved["data_info"]) if "data_info" in saved else None
    run_dir = where.parent.parent
    config_file = where / CONFIG_FILE if (where / CONFIG_FILE).is_file() else run_dir / CONFIG_FILE
    if config_file.is_file():
        try:
            cfg = load_config(config_file, resolve_components=False)
        except ConfigError as exc:
            raise ConfigError(f"{FIELD}: the teacher's {config_file} is not a valid config ({exc})") from None
        return cfg.model.name, cfg.model.params, info
    if "name" in saved:  # a checkpoint copied without its run directory: the spec it recorded
        return saved["name"], dict(saved.get("params", {})), info
    raise ConfigError(f"{FIELD}: '{run_dir}' has no {CONFIG_FILE}; give the teacher's run directory")


def check_compatible(teacher: DataInfo, student: DataInfo, where: str) -> None:
    """Raise :class:`ConfigError` unless the teacher's outputs can teach the student (same task and outputs)."""
    if student.task not in ("classification", "language_modeling"):
        raise ConfigError(f"{FIELD}: distillation matches logits, so the student's data must be classification "
                          f"or language modelling, not {student.task}")
    if teacher.task != student.task:
        raise ConfigError(f"{FIELD}: the teacher '{where}' was trained for {teacher.task}, the student's data is "
                          f"{student.task}")
    what = "vocabulary size" if student.task == "language_modeling" else "number of classes"
    if teacher.num_outputs != student.num_outputs:
        raise ConfigError(f"{FIELD}: the teacher '{where}' has {what} {teacher.num_outputs}, the student's data "
                          f"has {student.num_outputs}")
    if student.task == "classification" and tuple(teacher.input_shape) != tuple(student.input_shape):
        raise ConfigError(f"{FIELD}: the teacher '{where}' takes inputs of shape {tuple(teacher.input_shape)}, the "
                          f"student's data has {tuple(student.input_shape)}")


def load_teacher(cfg: RunConfig, student: DataInfo) -> DistillSetup:
    """The :class:`DistillSetup` for ``cfg.train.distill``, its teacher built for the student's data.

    Raises :class:`ConfigError` naming ``train.distill.teacher`` (one line) when the path holds no
    checkpoint or the teacher cannot teach this student (task, classes or vocabulary, input shape,
    context length).
    """
    distill = cfg.train.distill
    if distill is None:
        raise ConfigError("train.distill: not set")
    path = teacher_path(distill.teacher, cfg.output_dir)
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"{FIELD}: '{distill.teacher}' is not a run directory or checkpoint ({exc})") from None
    name, params, recorded = _teacher_model(checkpoint.path, checkpoint.state)
    check_compatible(recorded or student, student, str(distill.teacher))
    spec = _build(name, params, student, str(distill.teacher))
    try:
        spec.check_weights(checkpoint.weights, f"checkpoint '{checkpoint.path}'")
    except CheckpointError as exc:
        raise ConfigError(f"{FIELD}: {exc}") from None
    return DistillSetup(spec, checkpoint.weights, float(distill.temperature), float(distill.alpha))


def _build(name: str, params: dict, info: DataInfo, where: str) -> ModelSpec:
    """The teacher's spec on the student's data shape (so it reads the student's batches)."""
    try:
        return build_model(name, params, info)
    except ConfigError as exc:
        raise ConfigError(f"{FIELD}: the teacher '{where}' cannot run on this data ({exc})") from None


__all__ = ["check_compatible", "load_teacher", "teacher_path"]
