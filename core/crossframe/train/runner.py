"""Setting a run up from a config, running it, and what comes back: ``crossframe.run(...)``."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from crossframe.backend import Backend, Capabilities, TrainSetup, WorldInfo
from crossframe.checkpoint import Checkpoint, find_checkpoint, load_checkpoint
from crossframe.config.loading import atomic_write_text, dump_yaml, load_config
from crossframe.config.schema import RunConfig
from crossframe.config.validation import validate_params
from crossframe.errors import CapabilityError, ConfigError, PluginError, RunError, one_of
from crossframe.metrics import DEFAULT_METRICS
from crossframe.metrics.lookup import find_metric, metric_function
from crossframe.models import build_model
from crossframe.models.flops import flops_per_step
from crossframe.nn.lora_checkpoint import STATE_KEY
from crossframe.nn.model import check_backend_layers
from crossframe.perf import device_peak, peak_key
from crossframe.plugins import component, get_plugin_manager
from crossframe.rundirs import LATEST_SUFFIX
from crossframe.security import Protection, protecting
from crossframe.threads import ThreadChoice, apply_thread_environment, available_cores, choose_threads
from crossframe.train.compile_choice import choose_compile
from crossframe.train.data import load_training_data
from crossframe.train.distill import load_teacher
from crossframe.train.early_stopping import EarlyStopping
from crossframe.train.loop import Run, Trainer
from crossframe.train.observers import Observers, bounded_line, close_loggers, plugin_of
from crossframe.train.privacy import check_privacy, resolve_privacy
from crossframe.train.progress import Progress
from crossframe.train.result import RunResult

CONFIG_FILE = "config.yaml"


def make_backend(name: str) -> Backend:
    """Instantiate the backend registered as ``name``."""
    comp = component("backend", name, "backend")
    try:
        return comp.obj()
    except ImportError as exc:
        raise CapabilityError(f"backend: '{name}' needs a framework that is not installed ({exc}); "
                              f"install crossframe[{name}]") from None


def check_capabilities(config: RunConfig, caps: Capabilities, device: str, model: str,
                       training: bool = True) -> None:
    """Fail before the run, in one line, if the backend cannot do what the config asks.

    With ``training=False`` (evaluation, prediction) the strategy, optimizer, compile and
    ability to train are not required.
    """
    name = config.backend
    # a backend that lowers graphs runs a plugin's registered model that builds one; checked once it is built
    plugin_model = model not in caps.models and model in get_plugin_manager().components("model")
    models = (*caps.models, model) if "graph" in caps.models and plugin_model else caps.models
    if training and not caps.can_train:
        raise CapabilityError(f"backend: '{name}' is inference-only and cannot train; use it with "
                              f"'crossframe eval RUN_DIR --backend {name}'")
    checks = [
        ("device", device, caps.devices, "found"),
        ("precision", config.precision, caps.precisions, "supports"),
        ("model.name", model, models, "supports"),
    ]
    if training:
        checks += [
            ("strategy", config.strategy, caps.strategies, "supports"),
            ("train.optimizer.name", config.train.optimizer.name, caps.optimizers, "supports"),
        ]
    for field_name, wanted, available, verb in checks:
        if wanted not in available:
            note = caps.notes.get(wanted, "")
            raise CapabilityError(f"{field_name}: '{wanted}' requested, but backend '{name}' {verb} only "
                                  f"{one_of(available)}{f' ({note})' if note else ''}")
    if training and config.train.privacy is not None and config.strategy not in caps.private_strategies:
        raise CapabilityError(f"train.privacy: DP-SGD with strategy '{config.strategy}' on backend '{name}' is not "
                              f"supported; it runs with {one_of(caps.private_strategies)}")
    if training and config.train.compile is True and not caps.compile:
        raise CapabilityError(f"train.compile: backend '{name}' cannot compile steps")
    t = config.train
    if training and not caps.weighted_losses:
        asked = [k for k, on in (("class_weights", t.class_weights is not None),
                                 ("loss", t.loss is not None and t.loss.name != "cross_entropy"),
                                 ("label_smoothing", t.label_smoothing > 0)) if on]
        if asked:
            raise CapabilityError(f"train.{asked[0]}: backend '{name}' trains with plain cross-entropy only "
                                  "(no class weights, focal loss or label smoothing)")


def _unique_dir(base: Path) -> Path:
    if not base.exists():
        return base
    for i in range(1, 10_000):
        candidate = base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return candidate
    raise RunError(f"output_dir: too many runs named '{base.name}'")


def _run_name(config: RunConfig) -> str:
    if config.name:
        return config.name
    return f"{config.model.name}-{config.backend}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(
    config: str | os.PathLike | Mapping[str, Any] | RunConfig | None = None,
    overrides: Iterable[str] = (),
    *,
    backend: str | None = None,
    resume: str | os.PathLike | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train from a config (path, mapping, :class:`RunConfig` or ``None`` for the quickstart).

    With ``resume`` (a run directory or checkpoint), training continues in that run
    directory from its latest checkpoint; the run's saved config is used unless ``config``
    is given. Raises :class:`~crossframe.errors.CrossframeError` with a one-line message.
    """
    checkpoint: Checkpoint | None = None
    run_dir: Path | None = None
    if resume is not None:
        checkpoint = load_checkpoint(Path(resume))
        run_dir = checkpoint.path.parent.parent
        if config is None:
            saved = run_dir / CONFIG_FILE
            if not saved.is_file():
                raise ConfigError(f"--resume: '{run_dir}' has no {CONFIG_FILE}; pass the config file too")
            config = saved
    cfg = load_config(config, overrides, backend=backend)
    get_plugin_manager().hook.check_run_config(config=cfg)  # the whole config, before training
    from crossframe.distributed.world import RUN_DIR_ENV, is_worker, record_failure

    worker = is_worker()
    if checkpoint is None and run_dir is None:
        chosen = os.environ.get(RUN_DIR_ENV) if worker else None  # the launcher picked it for all ranks
        run_dir = Path(chosen) if chosen else _unique_dir(Path(cfg.output_dir) / _run_name(cfg))
    assert run_dir is not None
    threads = _set_threads(cfg, worker)
    where = run_dir

    def announce() -> None:  # once the config and the backend are known to be good
        if not worker and not quiet:
            _announce(where, threads, resumed=checkpoint is not None)

    if not worker and (cfg.launch.nproc_per_node > 1 or cfg.launch.nnodes > 1):
        from crossframe.distributed.launch import check_launch
        from crossframe.train.launch import launch

        check_launch(cfg)  # the launch settings first, then the backend's support for the strategy
        backend = prepare_backend(cfg)[0]
        announce()
        return launch(cfg, run_dir, checkpoint, quiet, backend)
    try:
        with protecting(Protection.from_config(cfg.security)):  # security: seal weights, sign manifests
            return _train(cfg, run_dir, checkpoint, quiet, announce)
    except BaseException as exc:
        if worker:
            record_failure(exc)  # the launcher names this rank and this line
        raise


def _set_threads(cfg: RunConfig, worker: bool) -> ThreadChoice:
    """Choose the run's CPU thread count and set it in the environment before a framework loads.

    A launcher divides ``auto`` between the workers it starts on this machine (they inherit the
    environment); a worker keeps what its launcher set unless the config names a count.
    """
    choice = choose_threads(cfg.threads)  # auto keeps OMP_NUM_THREADS, which a launcher sets for its workers
    local = cfg.launch.nproc_per_node if not worker else 1
    if cfg.threads == "auto" and local > 1:
        choice = ThreadChoice(max(1, choice.threads // local), f"{choice.reason}, shared by {local} workers")
    apply_thread_environment(choice.threads)
    return choice


def _announce(run_dir: Path, threads: ThreadChoice, resumed: bool) -> None:
    """Say where the run writes, before anything slow happens (stderr, so stdout stays parseable)."""
    verb = "resuming in" if resumed else "run directory:"
    note = ""
    if not resumed and run_dir.name != run_dir.name.rsplit("-", 1)[0] and run_dir.with_name(
            run_dir.name.rsplit("-", 1)[0]).is_dir():
        note = f" ({run_dir.with_name(run_dir.name.rsplit('-', 1)[0])} exists; '{LATEST_SUFFIX}' names the newest)"
    print(f"{verb} {run_dir}{note}  threads: {threads.threads} ({threads.reason})", file=sys.stderr, flush=True)


def prepare_backend(cfg: RunConfig, training: bool = True) -> tuple[Backend, str]:
    """The configured backend and the device it will use, checked against its capabilities."""
    backend = make_backend(cfg.backend)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # chosen by _set_threads (or the user)
        backend.set_threads(int(os.environ["OMP_NUM_THREADS"]))
    caps = backend.capabilities()
    if cfg.device not in ("auto", *caps.devices):
        check_capabilities(cfg, caps, cfg.device, cfg.model.name, training)
    device = backend.resolve_device(cfg.device)
    check_capabilities(cfg, caps, device, cfg.model.name, training)
    return backend, device


def _train(cfg: RunConfig, run_dir: Path, checkpoint: Checkpoint | None, quiet: bool,
           announce: Callable[[], None] = lambda: None) -> RunResult:
    from crossframe.distributed.world import fault_injector, world_from_env

    backend, device = prepare_backend(cfg)
    announce()
    world = world_from_env(cfg)
    if world.world_size == 1 and cfg.strategy == "single":
        return _train_in(cfg, run_dir, checkpoint, quiet, backend, device, None)
    backend.init_distributed(world, device)
    injector = fault_injector(world)
    try:
        return _train_in(cfg, run_dir, checkpoint, quiet, backend, device, world)
    finally:
        if injector is not None:
            get_plugin_manager().unregister(injector)
        backend.shutdown_distributed()


def _train_in(cfg: RunConfig, run_dir: Path, checkpoint: Checkpoint | None, quiet: bool, backend: Backend,
              device: str, world: WorldInfo | None) -> RunResult:
    """Train in this process (one of ``world``'s workers when given; only rank 0 writes files)."""
    plugins = get_plugin_manager()
    main = world is None or world.is_main
    replicas = backend.local_replicas(world, device) if world is not None else 1
    data = load_training_data(cfg, world, replicas)
    spec = build_model(cfg.model.name, cfg.model.params, data.info)
    if cfg.train.lora is not None:  # adapters on the chosen linears; every base weight is frozen
        from crossframe.nn.lora import apply_lora

        spec = apply_lora(spec, cfg.train.lora)
    if spec.graph is not None:  # a layer the backend cannot run is named before anything is built
        check_backend_layers(spec.graph, cfg.backend)
    elif spec.name not in backend.capabilities().models:
        raise CapabilityError(f"model.name: '{spec.name}' is not a graph of neutral layers, and backend "
                              f"'{cfg.backend}' has no native '{spec.name}'")
    metric_fns = metric_functions(cfg, data.info.task)
    from crossframe.data.augment import augmented

    loader = augmented(data.loader, cfg.train.augment, cfg.seed)  # unchanged without train.augment
    total = cfg.train.steps or (cfg.train.epochs or 1) * loader.steps_per_epoch
    opt_params = cfg.train.optimizer.params
    if "lr" not in opt_params:
        raise ConfigError(f"train.optimizer: '{cfg.train.optimizer.name}' has no 'lr' param; "
                          "its plugin's schema must define one")
    schedule_comp = component("schedule", cfg.train.schedule.name, "train.schedule.name")
    schedule = schedule_comp.obj(validate_params(schedule_comp.schema, cfg.train.schedule.params, "train.schedule"),
                                 float(opt_params["lr"]), total)

    check_privacy(cfg, data.info.task)
    private = resolve_privacy(cfg, loader, [(p.name, tuple(p.shape)) for p in spec.table], total,
                              world, replicas)
    if private is not None:
        loader = private.loader  # each batch carries its DP-SGD noise
    weights = spec.init(cfg.seed)
    from crossframe.train.freezing import frozen_names

    if getattr(cfg.model, "init_from", None):  # fine-tuning: another run's, a checkpoint's or an HF directory's
        from crossframe.models.init_from import initial_weights

        weights = initial_weights(cfg.model.init_from, spec, weights)
    lora_base = None
    if checkpoint is not None and STATE_KEY in checkpoint.state:  # resuming: the base the adapters trained on,
        lora_base = checkpoint.state[STATE_KEY]  # checked by load_checkpoint (not re-resolved, not re-hashed)
    elif cfg.train.lora is not None and spec.params["lora"]["checkpoint"] == "adapters":
        from crossframe.nn.lora_checkpoint import base_reference

        lora_base = base_reference(spec, cfg.seed, getattr(cfg.model, "init_from", None), weights)

    compiled = choose_compile(cfg.train.compile, cfg.backend, backend, device, cfg.strategy, total)
    if main and not quiet and cfg.train.compile == "auto":
        print(compiled.describe(cfg.train.compile), file=sys.stderr, flush=True)
    distill = load_teacher(cfg, data.info) if cfg.train.distill is not None else None
    state = backend.create_state(TrainSetup(
        spec, weights, cfg.train.optimizer.name, opt_params, device, cfg.precision,
        cfg.train.grad_accum, cfg.train.clip_norm, compiled.enabled, cfg.seed,
        cfg.train.activation_checkpointing, masks=None, distill=distill, world=world,
        objective=training_objective(cfg, data),
        privacy=private.setup if private is not None else None,
        frozen=frozen_names(spec, cfg.train.freeze)))
    early = EarlyStopping.from_config(cfg.train.early_stopping) if cfg.train.early_stopping else None
    start = 0
    if checkpoint is not None:
        optimizer_state = checkpoint.optimizer_state
        if STATE_KEY in checkpoint.state:  # adapters only: the frozen base's slots are zeros
            from crossframe.nn.lora_checkpoint import FrozenSlots

            optimizer_state = FrozenSlots(optimizer_state, checkpoint.weights)
        spec.check_checkpoint(checkpoint.weights, optimizer_state, f"checkpoint '{checkpoint.path}'")
        state = backend.load_state(state, checkpoint.weights, optimizer_state or None)
        start = checkpoint.step
        if early and checkpoint.state.get("early_stopping"):
            early.restore(checkpoint.state["early_stopping"])
        if hasattr(schedule, "restore") and checkpoint.state.get("schedule"):
            schedule.restore(checkpoint.state["schedule"])  # reduce-on-plateau's state
        if start >= total:
            budget = "train.steps" if cfg.train.steps else f"train.epochs ({total} steps)"
            raise ConfigError(f"--resume: the checkpoint is at step {start}, the budget {budget} is {total}; "
                              f"raise train.steps to train further")

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, dump_yaml(cfg))
        if data.transform is not None:  # tabular: eval and serve apply the training split's statistics
            from crossframe.data.tabular import save_transform

            save_transform(run_dir, data.transform)
        if data.tokenizer_dir is not None and not (run_dir / "tokenizer").exists():
            shutil.copytree(data.tokenizer_dir, run_dir / "tokenizer")  # generation needs it
    run = Run(cfg, run_dir, backend, spec, total, device, step=start, world=world,
              privacy=private.ledger if private is not None else None, lora_base=lora_base)
    tokens_per_step = getattr(loader, "tokens_per_step", None)
    if tokens_per_step:
        run.flops_per_step = flops_per_step(spec, tokens_per_step)
        if run.flops_per_step:
            threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or available_cores()
            peak = device_peak(peak_key(f"{cfg.backend}-{backend.framework_version()}", device, cfg.precision,
                                        threads), lambda: backend.measure_peak_flops(device, cfg.precision))
            run.peak_flops, run.peak_source, run.peak_key = peak.flops, peak.source, peak.key
        if run.peak_flops and world is not None:
            run.peak_flops *= world.world_size * replicas  # every replica's device works on the global step
    loggers: list[Any] = []
    progress = Progress(total, start, f"{cfg.backend}:{cfg.model.name}", enabled=False)
    observers = Observers(plugins.hook, loggers)  # a hook or logger that raises is disabled, not fatal
    try:  # on_run_end always comes before the loggers close, so they can record how the run ended
        if main:
            _make_loggers(cfg, run_dir, loggers)
        progress = Progress(total, start, f"{cfg.backend}:{cfg.model.name}", enabled=main and not quiet)
        trainer = Trainer(run, state, loader, data.val, schedule, metric_fns, loggers, observers, progress, early)
        observers.call("on_run_start", run=run)
        status = trainer.fit()
        observers.call("on_run_end", run=run, status=status, metrics=run.last_eval)
    except KeyboardInterrupt:
        observers.call("on_run_end", run=run, status="interrupted", metrics=run.last_eval)
        raise
    except Exception:
        run.status = "failed"
        observers.call("on_run_end", run=run, status="failed", metrics=run.last_eval)
        raise
    finally:
        progress.close()
        close_loggers(loggers)
    metrics = {k: v for k, v in run.last_eval.items() if k != "step"}
    run_world = getattr(run, "world", None)
    if (cfg.compress or cfg.export) and (run_world is None or run_world.is_main):
        plugins.hook.on_run_finished(config=cfg, run_dir=run_dir, quiet=quiet)  # compress, export, report
    return RunResult(run_dir, status, run.step, metrics, run.last_checkpoint)


def training_objective(cfg: RunConfig, data: Any) -> Any:
    """The run's :class:`~crossframe.losses.LossSetup` (class weights, focal, smoothing), or None."""
    from crossframe.losses import loss_setup

    t = cfg.train
    labels = getattr(getattr(data.loader, "dataset", None), "y", None)
    return loss_setup(t.class_weights, t.loss, t.label_smoothing, labels, data.info.num_outputs, data.info.task)


def metric_functions(cfg: RunConfig, task: str) -> dict[str, Any]:
    """The configured metrics (or the task's defaults) by name, checked against the task."""
    names = cfg.train.metrics or DEFAULT_METRICS[task]
    out = {}
    for i, name in enumerate(names):
        comp = find_metric(name, f"train.metrics.{i}")
        tasks = comp.extra.get("tasks", ("classification",))
        if task not in tasks:
            raise ConfigError(f"train.metrics.{i}: '{name}' is for {' or '.join(tasks)} data; this dataset is {task}")
        out[name] = metric_function(comp)
    return out


def _make_loggers(cfg: RunConfig, run_dir: Path, loggers: list[Any]) -> None:
    """Create the loggers into ``loggers`` (so those made before a failure still get closed)."""
    if not any(lg.name == "jsonl" for lg in cfg.loggers):
        loggers.append(component("logger", "jsonl").obj(validate_params(
            component("logger", "jsonl").schema, {}, "loggers"), run_dir))
    for i, lg in enumerate(cfg.loggers):
        comp = component("logger", lg.name, f"loggers.{i}.name")
        params = validate_params(comp.schema, lg.params, f"loggers.{i}")
        try:  # a plugin's logger that cannot start is named, not a traceback
            loggers.append(comp.obj(params, run_dir))
        except Exception as exc:
            raise PluginError(f"loggers.{i}: plugin '{comp.plugin}' logger '{lg.name}' failed to start: "
                              f"{type(exc).__name__}: {bounded_line(str(exc))}") from None
    for logger in loggers:
        try:
            logger.log_config(cfg.model_dump(mode="json"))
        except Exception as exc:
            raise PluginError(f"plugin '{plugin_of(logger)}' logger {type(logger).__name__}.log_config raised "
                              f"{type(exc).__name__}: {bounded_line(str(exc))}") from None


__all__ = ["RunResult", "check_capabilities", "find_checkpoint", "make_backend", "run"]
