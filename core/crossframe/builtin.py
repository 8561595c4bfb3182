"""The core's own plugin: it registers the neutral pieces through the same hooks as everyone.

Each hook imports what it registers only when it runs, so loading this plugin costs nothing.
"""

from __future__ import annotations

from typing import Any

from crossframe import hookimpl


@hookimpl
def register_models(register: Any) -> None:
    """Register ``mlp``, ``cnn`` and ``gpt``."""
    from crossframe.models import gpt
    from crossframe.nn import presets

    register("mlp", presets.build_mlp, schema=presets.MLPParams, description="multi-layer perceptron")
    register("cnn", presets.build_cnn, schema=presets.CNNParams, description="small conv net on NHWC images")
    register("gpt", presets.build_gpt, schema=gpt.GPTParams, description="decoder-only transformer (GPT-2 style)")
    from crossframe.nn.model import GraphParams, build_graph_model

    register("graph", build_graph_model, schema=GraphParams, description="neutral layers written in the config")
    from crossframe.hf.loading import HFParams, build_hf_model

    register("hf", build_hf_model, schema=HFParams, description="a local Hugging Face decoder (GPT-2, Llama, ...)")


@hookimpl
def register_layers(register: Any) -> None:
    """Register the built-in neutral layers (``dense``, ``conv2d``, ``attention``, ...)."""
    from crossframe.nn.layers import BUILTIN_LAYERS

    for cls in BUILTIN_LAYERS:
        register(cls.kind, cls, description=(cls.__doc__ or "").strip().splitlines()[0])


@hookimpl
def register_datasets(register: Any) -> None:
    """Register ``digits``, ``synthetic``, ``npz``, ``csv``, ``parquet``, ``arrow`` and the text sources."""
    from crossframe.data import sources as s

    register("digits", s.load_digits, schema=s.DigitsParams, description="scikit-learn's 8x8 digits")
    register("synthetic", s.load_synthetic, schema=s.SyntheticParams, description="seeded generated data")
    register("npz", s.load_npz, schema=s.NpzParams, description="arrays from a .npz file")
    from crossframe.data import tabular as t

    register("csv", t.load_csv, schema=t.CsvParams, description="CSV with a header row (categorical columns too)")
    register("parquet", t.load_parquet, schema=t.TabularParams, description="a Parquet table (pyarrow)")
    register("arrow", t.load_arrow, schema=t.TabularParams, description="an Arrow IPC / Feather table (pyarrow)")
    from crossframe.text import registry as text

    text.register_datasets(register)  # text-files, jsonl, python-stdlib


@hookimpl
def register_tokenizers(register: Any) -> None:
    """Register ``bytes``, ``chars`` and ``bpe``."""
    from crossframe.text import registry

    registry.register_tokenizers(register)
    from crossframe.hf.tokenizer import HFTokenizerParams, make_hf_tokenizer

    register("hf", make_hf_tokenizer, schema=HFTokenizerParams, description="a Hugging Face tokenizer.json directory")


@hookimpl
def register_optimizers(register: Any) -> None:
    """Register ``sgd``, ``adam`` and ``adamw``."""
    from crossframe import optimizers as o

    register("sgd", o.SGDParams, description="SGD with optional momentum")
    register("adam", o.AdamParams, description="Adam (L2 weight decay)")
    register("adamw", o.AdamWParams, description="Adam, decoupled weight decay")
    register("rmsprop", o.RMSpropParams, description="RMSprop (torch's rule, eps outside the root)")
    register("adagrad", o.AdagradParams, description="Adagrad (sum of squared gradients)")
    register("lion", o.LionParams, description="Lion (sign of interpolated momentum), decoupled decay")


@hookimpl
def register_schedules(register: Any) -> None:
    """Register ``constant``, ``step``, ``exponential``, ``cosine`` and ``linear``."""
    from crossframe import schedules as s

    register("constant", s.constant, schema=s.WarmupParams, description="flat after warmup")
    register("step", s.step_decay, schema=s.StepParams, description="x gamma every step_size")
    register("exponential", s.exponential, schema=s.ExponentialParams, description="x gamma per step")
    register("cosine", s.cosine, schema=s.CosineParams, description="warmup + cosine decay")
    register("linear", s.linear, schema=s.LinearParams, description="warmup + linear decay")
    register("one_cycle", s.one_cycle, schema=s.OneCycleParams, description="cosine up, then cosine down")
    register("plateau", s.plateau, schema=s.PlateauParams, description="x factor when an eval metric stalls")


@hookimpl
def register_metrics(register: Any) -> None:
    """Register classification and regression metrics."""
    from crossframe import metrics as m

    cls, reg = ("classification",), ("regression",)
    register("accuracy", m.accuracy, tasks=cls, description="fraction correct")
    register("precision", m.macro_precision, tasks=cls, description="macro precision")
    register("recall", m.macro_recall, tasks=cls, description="macro recall")
    register("f1", m.macro_f1, tasks=cls, description="macro F1")
    register("confusion_matrix", m.confusion_matrix, tasks=cls, description="[C, C] counts")
    register("mae", m.mae, tasks=reg, description="mean absolute error")
    register("rmse", m.rmse, tasks=reg, description="root mean squared error")
    register("per_class", m.per_class, tasks=cls, description="[C, 4] precision, recall, f1, support")
    register("perplexity", m.perplexity, tasks=("language_modeling",), description="exp(mean token loss)")


@hookimpl
def register_score_metrics(register: Any) -> None:
    """Register ROC-AUC, PR-AUC, top-k, log-loss and ECE (they see every example's scores)."""
    from crossframe.metrics import scores as s

    cls = ("classification",)
    register("roc_auc", s.roc_auc, tasks=cls, description="ROC-AUC (binary, or one-vs-rest macro)")
    register("pr_auc", s.pr_auc, tasks=cls, description="average precision (binary, or macro)")
    register("top_k", s.top_5, tasks=cls, description="top-5 accuracy")
    register("top_3", s.top_3, tasks=cls, description="top-3 accuracy")
    register("log_loss", s.log_loss, tasks=cls, description="mean -log p(true class)")
    register("ece", s.expected_calibration_error, tasks=cls, description="expected calibration error, 15 bins")


@hookimpl
def register_loggers(register: Any) -> None:
    """Register ``jsonl``, ``csv`` and ``tensorboard``."""
    from crossframe import loggers as lg
    from crossframe import tensorboard as tb

    register("jsonl", lg.JsonlLogger, schema=lg.FileParams, description="metrics.jsonl (always on)")
    register("csv", lg.CsvLogger, schema=lg.FileParams, description="metrics.csv")
    register("tensorboard", tb.TensorBoardLogger, schema=tb.TensorBoardParams,
             description="TensorBoard event files (tensorboardX): scalars, config, hparams, histograms")


@hookimpl
def register_compressors(register: Any) -> None:
    """Register ``prune``, ``lowrank`` and ``quantize`` (neutral: they act on canonical weights)."""
    from crossframe.compress import lowrank, pruning, quantize

    register("prune", pruning.make_pruner, schema=pruning.PruneParams,
             description="magnitude pruning: unstructured, N:M, rows or attention heads")
    register("lowrank", lowrank.make_lowrank, schema=lowrank.LowRankParams,
             description="truncated-SVD factorisation of dense layers (changes the model)")
    register("quantize", quantize.make_quantizer, schema=quantize.QuantizeParams,
             description="symmetric round-to-nearest int8 / int4 weights")


@hookimpl
def register_exporters(register: Any) -> None:
    """Register ``onnx``, ``native``, ``torch-export``, ``saved-model``, ``tflite`` and ``stablehlo``."""
    from crossframe.export import registry

    registry.register(register)


@hookimpl
def register_model_registries(register: Any) -> None:
    """Register ``sqlite``: the embedded registry (``sqlite:DIR``; a plain directory selects it too)."""
    from crossframe.registry.store import open_sqlite

    register("sqlite", open_sqlite, description="embedded SQLite registry in a directory (the default)")


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``run``, ``plugins`` and ``config``."""
    from crossframe.cli import commands, compress, cv, model, serve, tune
    from crossframe.cli import explain as explain_cli
    from crossframe.cli import models as models_cli
    from crossframe.cli import runs as runs_cli
    from crossframe.cli import security as security_cli

    for command in [*commands.COMMANDS, *compress.COMMANDS, *model.COMMANDS, *tune.COMMANDS, *serve.COMMANDS,
                    *runs_cli.COMMANDS, *models_cli.COMMANDS, *cv.COMMANDS,
                    *explain_cli.COMMANDS, *security_cli.COMMANDS]:
        cli.add_command(command)


@hookimpl
def check_run_config(config: Any) -> None:
    """Validate the compress and export steps (names and params) before any training."""
    if config.compress or config.export:
        from crossframe.compress.pipeline import check_hf_export, check_steps

        security = getattr(config, "security", None)
        check_steps(config.compress, config.export, encrypt=bool(security is not None and security.encrypt))
        check_hf_export(config)


@hookimpl
def on_run_finished(config: Any, run_dir: Any, quiet: bool) -> None:
    """Compress and export what the config asks for, then write the run's report."""
    if config.compress or config.export:
        from crossframe.compress.pipeline import after_training as compress_and_export

        compress_and_export(config, run_dir, quiet)
