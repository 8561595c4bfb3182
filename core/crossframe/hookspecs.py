"""Every crossframe hook, one function each; the docstring is the contract.

A plugin implements hooks with ``@crossframe.hookimpl`` and is registered through the
``crossframe`` entry-point group (the core registers its own pieces the same way).

Registration hooks (``register_*``) receive a ``register`` callback. They run lazily, the
first time a component of that kind is needed, once per process, and must stay cheap: a
plugin registers *factories* and imports its framework only when a factory is called.

Lifecycle hooks (``on_*``) are called by the training loop. They receive the live
:class:`crossframe.train.Run` and may read anything on it; setting ``run.should_stop = True``
ends training after the current step (a checkpoint is written first).
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("crossframe")


# --------------------------------------------------------------------------- registration


@hookspec
def register_backends(register: Any) -> None:
    """Register training backends.

    Called the first time a backend is looked up or listed.
    ``register(name, factory, *, description="")``: ``factory()`` returns an object that
    implements :class:`crossframe.backend.Backend`; it may import its framework.
    Returns nothing.
    """


@hookspec
def register_models(register: Any) -> None:
    """Register model architectures.

    Called the first time a model is looked up or listed.
    ``register(name, builder, *, schema, description="")``: ``schema`` is a pydantic model
    of the architecture's params; ``builder(params, data_info)`` returns a
    :class:`crossframe.models.ModelSpec` (canonical parameter table, seeded initialiser,
    numpy reference forward). Returns nothing.
    """


@hookspec
def register_layers(register: Any) -> None:
    """Register neutral layer types for ``model: {name: graph, layers: [...]}``.

    Called the first time a layer kind is looked up or listed.
    ``register(kind, layer_class, *, description="", torch=..., jax=..., tensorflow=...)``:
    ``layer_class`` subclasses :class:`crossframe.nn.layers.Layer` (a pydantic model of the layer's
    config with its parameter table, shape inference, FLOPs and float64 numpy reference); each backend
    keyword is the ``"package.module:function"`` of that backend's implementation (see docs/layers.md
    for each signature). A backend without an implementation names the layer in one line before the
    run starts. Returns nothing.
    """


@hookspec
def register_datasets(register: Any) -> None:
    """Register dataset sources.

    Called the first time a dataset is looked up or listed.
    ``register(name, loader, *, schema, description="")``: ``loader(params)`` returns a
    :class:`crossframe.data.Dataset` of numpy arrays. Returns nothing.
    """


@hookspec
def register_optimizers(register: Any) -> None:
    """Register optimizer names and their param schemas.

    Called the first time an optimizer is looked up or listed.
    ``register(name, schema, *, description="")``: ``schema`` is a pydantic model that
    validates ``train.optimizer`` and must have an ``lr`` field (the schedule's base rate);
    each backend maps the name to its native optimizer and lists the names it supports in
    its capabilities. Returns nothing.
    """


@hookspec
def register_schedules(register: Any) -> None:
    """Register learning-rate schedules.

    Called the first time a schedule is looked up or listed.
    ``register(name, factory, *, schema, description="")``: ``factory(params, base_lr,
    total_steps)`` returns a pure function ``step -> lr`` (``step`` counts optimizer steps
    from 0). Returns nothing.
    """


@hookspec
def register_metrics(register: Any) -> None:
    """Register evaluation metrics.

    Called the first time a metric is looked up or listed.
    ``register(name, fn, *, tasks=("classification",), description="")``: ``fn(totals)``
    takes :class:`crossframe.metrics.EvalTotals` (host numpy sums gathered once per eval)
    and returns a float or an array. Returns nothing.
    """


@hookspec
def register_score_metrics(register: Any) -> None:
    """Register evaluation metrics of every example's scores (ROC-AUC, log-loss, calibration, ...).

    Called the first time a metric is looked up or listed; names share ``train.metrics`` with
    :func:`register_metrics` (a name both provide is an error naming both plugins).
    ``register(name, fn, *, tasks=("classification",), description="")``: ``fn(scores)`` takes a
    :class:`crossframe.metrics.ScoreSet` (``labels`` int64 ``[N]``, ``logits`` float64 ``[N, C]``,
    ``probs`` their softmax: the whole evaluation, fetched from the device once) and returns a float
    or an array. The loop keeps the evaluation's logits only when such a metric is configured.
    Returns nothing.
    """


@hookspec
def register_loggers(register: Any) -> None:
    """Register metric loggers.

    Called the first time a logger is looked up or listed.
    ``register(name, factory, *, schema, description="")``: ``factory(params, run_dir)``
    returns an object with ``log_config(config)``, ``log_metrics(step, metrics)`` and
    ``close()``. Returns nothing.
    """


@hookspec
def register_tokenizers(register: Any) -> None:
    """Register text tokenizers.

    Called the first time a tokenizer is looked up or listed.
    ``register(name, factory, *, schema, description="")``: ``factory(params)`` returns a
    tokenizer with ``encode(text) -> list[int]``, ``decode(ids) -> str`` and ``vocab_size``.
    Returns nothing.
    """


@hookspec
def register_compressors(register: Any) -> None:
    """Register model compressors (pruning, quantisation, low-rank, ...).

    Called the first time a compressor is looked up or listed.
    ``register(name, factory, *, schema, description="")``: ``factory(params)`` returns a
    compressor that acts on canonical weights. Returns nothing.
    """


@hookspec
def register_exporters(register: Any) -> None:
    """Register model exporters (ONNX, native formats).

    Called the first time an exporter is looked up or listed.
    ``register(name, factory, *, schema, description="")``: ``factory(params)`` returns an
    exporter for one or more backends. Returns nothing.
    """


@hookspec
def register_model_registries(register: Any) -> None:
    """Register model registry backends for ``crossframe models`` and ``models:/`` URIs.

    Called the first time a registry is opened (``--registry``, a config's ``registry``,
    ``$CROSSFRAME_REGISTRY``). ``register(name, factory, *, description="")``: a value
    ``NAME:LOCATION`` (or the bare ``NAME``) selects the backend ``NAME``, and ``factory(location)``
    returns an object that implements :class:`crossframe.registry.backends.ModelRegistry`
    (``location`` is the text after the colon, ``""`` for a bare name); a plain path selects the
    built-in SQLite registry in that directory. The factory may import its client library.
    Returns nothing.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``crossframe`` command line.

    Called once when the CLI is built, before arguments are parsed, so it must be cheap.
    ``cli`` is the root :class:`click.Group`; call ``cli.add_command(...)``. Returns nothing.
    """


# --------------------------------------------------------------------------- lifecycle


@hookspec
def on_run_start(run: Any) -> None:
    """Called once the run directory, backend, model and data are ready, before step one.

    ``run`` is the :class:`crossframe.train.Run` (config, run_dir, step, backend name).
    Returns nothing.
    """


@hookspec
def on_step_end(run: Any, step: int, batch: dict, logs: dict | None) -> None:
    """Called after every optimizer step.

    ``step`` is the number of optimizer steps done so far (1 after the first step);
    ``batch`` is the host numpy batch just consumed; ``logs`` holds host metrics on log steps
    (every ``train.log_every``) and is ``None`` otherwise, so implementations never force a
    device sync. Set ``run.should_stop = True`` to stop after this step. Returns nothing.
    """


@hookspec
def on_eval_end(run: Any, step: int, metrics: dict) -> None:
    """Called after each evaluation with the host metrics (``val/loss``, ``val/accuracy``...).

    Set ``run.should_stop = True`` to end the run after this evaluation (``crossframe tune``
    prunes trials this way). Returns nothing.
    """


@hookspec
def on_checkpoint_saved(run: Any, step: int, path: Any) -> None:
    """Called after a checkpoint has been written and made durable at ``path``.

    Returns nothing.
    """


@hookspec
def on_run_end(run: Any, status: str, metrics: dict) -> None:
    """Called once when the run ends.

    ``status`` is ``"completed"``, ``"stopped"`` (early stopping or ``run.should_stop``),
    ``"interrupted"`` (Ctrl-C) or ``"failed"``; ``metrics`` are the last eval metrics.
    Returns nothing.
    """


@hookspec
def check_run_config(config: Any) -> None:
    """Called by the runner with a run's resolved :class:`crossframe.config.schema.RunConfig` before
    anything is built or trained (and by ``crossframe config show``).

    Raise :class:`crossframe.errors.ConfigError` (one line naming the field) to refuse the config.
    The core implements it to validate the ``compress:`` and ``export:`` steps, whose pipeline sits
    on a higher floor than the runner, so a typo there never costs a training run. Returns nothing.
    """


@hookspec
def on_run_finished(config: Any, run_dir: Any, quiet: bool) -> None:
    """Called by the runner once a run that asks for ``compress`` or ``export`` has ended, on the main
    process, after the loggers have closed.

    ``config`` is the resolved :class:`crossframe.config.schema.RunConfig`, ``run_dir`` the run's
    directory (its checkpoints are final). The core implements it with the compress / export pipeline,
    which sits on a higher floor than the loop; a plugin may add its own post-training step.
    Returns nothing.
    """
