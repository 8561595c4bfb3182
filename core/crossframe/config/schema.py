"""The run config: pydantic models for everything a run needs, with defaults.

Components (``data``, ``model``, ``train.optimizer``, ``train.schedule``, ``loggers``) are
``{name: ..., <params>}``; their params are validated by the schema their plugin registered
(see :func:`crossframe.config.loading.resolve`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from crossframe.data.augment import AugmentList
from crossframe.losses import LossConfig
from crossframe.validation import ComponentConfig

DEFAULT_STEPS = 1000
#: the largest step or epoch budget accepted (a typo like 1e29 is an error, not a run that never ends)
MAX_STEPS = 10**10
_RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(Strict):
    """``data.split``: a test part, stratified or grouped splits, and k folds (``crossframe cv``)."""

    val: float | None = Field(None, gt=0.0, lt=1.0, description="validation share (default: data.val_fraction)")
    test: float = Field(0.0, ge=0.0, lt=1.0, description="held-out test share, for `crossframe eval --split test`")
    stratify: bool = Field(False, description="every split keeps each class's share (classification)")
    group: str | None = Field(None, min_length=1,
                              description="column (csv, parquet) or array (npz) of group ids kept in one split")
    folds: int | None = Field(None, ge=2, description="k-fold: validation is fold `fold` of this many")
    fold: int | None = Field(None, ge=0, description="which fold validates (with folds)")

    @model_validator(mode="after")
    def _fold_in_range(self) -> SplitConfig:
        if (self.folds is None) != (self.fold is None):
            raise ValueError("give both 'folds' and 'fold' (crossframe cv sets them), or neither")
        if self.folds is not None and self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} of {self.folds}: folds count from 0")
        return self


class ModelConfig(ComponentConfig):
    """``model``: an architecture and its params, optionally starting from existing weights."""

    init_from: str | None = Field(None, description="start from these weights: a run directory, a checkpoint "
                                  "directory or a Hugging Face model directory (docs/pretrained.md)")

    @property
    def params(self) -> dict[str, Any]:
        """The architecture's own params (everything but ``name`` and ``init_from``)."""
        return dict(self.model_extra or {})


class DataConfig(ComponentConfig):
    """``data``: a dataset source plus the split every source shares."""

    name: str = "digits"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="used when the source has no validation part")
    split: SplitConfig = Field(default_factory=SplitConfig)

    @property
    def params(self) -> dict[str, Any]:
        """The source's own params (everything but ``name``, ``val_fraction`` and ``split``)."""
        return dict(self.model_extra or {})


class EarlyStoppingConfig(Strict):
    """``train.early_stopping``: stop when ``monitor`` has not improved for ``patience`` evals."""

    monitor: str = "val/loss"
    mode: Literal["min", "max", "auto"] = "auto"
    patience: PositiveInt = 5
    min_delta: NonNegativeFloat = 0.0


class DistillConfig(Strict):
    """``train.distill``: learn from a trained teacher run (on any backend) as well as the labels."""

    teacher: str = Field(min_length=1, description="run directory (or checkpoint) of the teacher")
    temperature: PositiveFloat = Field(2.0, description="softmax temperature for both teacher and student")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the distillation loss; 1-alpha for labels")


class PrivacyConfig(Strict):
    """``train.privacy``: DP-SGD (per-example clipping, Gaussian noise, accounting); see docs/privacy.md."""

    noise_multiplier: NonNegativeFloat | None = Field(None, description="noise std over max_grad_norm "
                                                      "(or give target_epsilon)")
    target_epsilon: PositiveFloat | None = Field(None, description="solve the noise multiplier for this epsilon "
                                                 "at the end of the run")
    max_grad_norm: PositiveFloat = Field(1.0, description="each example's gradient is clipped to this L2 norm")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="the delta of the (epsilon, delta) guarantee")
    accountant: Literal["rdp", "pld"] = Field("rdp", description="Renyi DP, or privacy loss distributions")
    poisson: bool = Field(False, description="sample each step's examples independently (as the accounting "
                                             "assumes) instead of shuffled fixed-size batches")

    @model_validator(mode="after")
    def _one_noise(self) -> PrivacyConfig:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give either noise_multiplier or target_epsilon")
        return self


class TrainConfig(Strict):
    """``train``: the loop's budget, batching, optimisation and intervals."""

    steps: PositiveInt | None = Field(None, le=MAX_STEPS,
                                      description=f"optimizer steps (or give epochs); {DEFAULT_STEPS} if neither")
    epochs: PositiveInt | None = Field(None, le=MAX_STEPS)
    batch_size: PositiveInt = 64
    grad_accum: PositiveInt = Field(1, description="micro-batches of batch_size per optimizer step")
    clip_norm: PositiveFloat | None = Field(None, description="global gradient-norm clip")
    optimizer: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="adamw"))
    schedule: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="constant"))
    eval_every: NonNegativeInt = Field(0, description="steps between evals; 0 = only at the end")
    eval_batch_size: PositiveInt = 512
    log_every: PositiveInt = 10
    checkpoint_every: NonNegativeInt = Field(0, description="steps between checkpoints; 0 = only at the end")
    keep_checkpoints: PositiveInt = 3
    early_stopping: EarlyStoppingConfig | None = None
    metrics: list[str] | None = Field(None, description="eval metrics; default depends on the task")
    compile: bool | Literal["auto"] = Field(False, description="compile the step (torch.compile, XLA jit_compile; "
                                            "jax always jits): true, false, or auto (the setting measured faster "
                                            "for this backend and device, see docs/compile.md)")
    activation_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    distill: DistillConfig | None = Field(None, description="knowledge distillation from a teacher run")
    class_weights: Literal["balanced"] | list[NonNegativeFloat] | None = Field(
        None, description="per-class loss weights: 'balanced' (N / (K * count)) or one weight per class")
    loss: LossConfig | None = Field(None, description="{name: focal, gamma: 2.0}; default cross-entropy")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="mix eps / K into every target")
    sampler: Literal["shuffle", "oversample"] = Field(
        "shuffle", description="oversample: every class drawn as often as the largest (seeded, resumable)")
    augment: AugmentList = Field(default_factory=list, description="numpy augmentations, in order, e.g. "
                                 "[{flip: horizontal}, {random_crop: {padding: 2}}, {noise: 0.05}]")
    privacy: PrivacyConfig | None = Field(None, description="differentially private training (DP-SGD)")
    lora: dict[str, Any] | None = Field(None, description="low-rank adapters: {rank, alpha, dropout, targets}; only "
                                        "they train (docs/pretrained.md)")
    freeze: list[str] = Field(default_factory=list, description="canonical weight names or fnmatch patterns "
                              "(embed_tokens.*, layers.0.*) kept exactly as they start (docs/pretrained.md)")
    profile_steps: NonNegativeInt = Field(0, description="run the backend's profiler over this many steps "
                                          "(after profile_warmup); the trace goes to RUN_DIR/profile; 0 = off")
    profile_warmup: NonNegativeInt = Field(2, description="steps before the profiled window (compilation)")
    resource_metrics: bool = Field(True, description="sys/ metrics per log window: RSS, CPU %, device memory, "
                                   "data-wait share, step time p50/p95")

    @model_validator(mode="before")
    @classmethod
    def _default_budget(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("steps") is None and data.get("epochs") is None:
            return {**data, "steps": DEFAULT_STEPS}
        return data

    @model_validator(mode="after")
    def _budget(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        return self


class TextConfig(Strict):
    """``text``: how a text source becomes token sequences (language models only)."""

    tokenizer: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="bytes"))
    seq_len: PositiveInt = Field(128, description="tokens per training sequence")
    store: str | None = Field(None, description="token store directory; default <output_dir>/.tokens/<hash>")
    max_eval_tokens: PositiveInt | None = Field(None, description="cap on validation tokens per evaluation")
    eval_stride: PositiveInt | None = Field(
        None, description="evaluate in sliding windows advancing this many tokens (<= seq_len); "
                          "default: non-overlapping blocks")

    @model_validator(mode="after")
    def _stride_fits(self) -> TextConfig:
        if self.eval_stride is not None and self.eval_stride > self.seq_len:
            raise ValueError(f"eval_stride ({self.eval_stride}) must not exceed seq_len ({self.seq_len})")
        return self


class SecurityConfig(Strict):
    """``security``: protection at rest for what the run writes; keys come from files, never the config."""

    encrypt: bool = Field(False, description="seal weights (checkpoints, compressed steps) and token stores "
                                             "with AES-256-GCM; "
                                             "key from CROSSFRAME_KEY_FILE or --key-file")
    sign: bool = Field(False, description="ed25519-sign every artefact manifest; key from "
                                          "CROSSFRAME_SIGNING_KEY_FILE")


class LaunchConfig(Strict):
    """``launch``: how many worker processes run the job, and where (``strategy`` says how they share it)."""

    nproc_per_node: PositiveInt = Field(1, description="worker processes on this machine")
    nnodes: PositiveInt = Field(1, description="machines taking part")
    node_rank: NonNegativeInt = Field(0, description="this machine's index, 0..nnodes-1")
    master_addr: str = Field("127.0.0.1", description="address of node 0")
    master_port: int = Field(29500, ge=1, le=65535, description="port of node 0's rendezvous")
    launcher: Literal["local", "ray"] = Field("local", description="start workers here, or on a Ray cluster")
    collective_timeout_s: PositiveFloat = Field(120.0, description="a collective waiting longer ends the job")


class RunConfig(Strict):
    """The whole run. Defaults make ``RunConfig()`` a valid (if small) job."""

    name: str | None = Field(None, description="run directory inside output_dir (letters, digits, . _ -, not "
                                               "starting with '.'); default <model>-<backend>-<time>")
    backend: str = "torch"
    device: Literal["auto", "cpu", "gpu", "tpu"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    strategy: Literal["single", "data_parallel", "fully_sharded"] = "single"
    seed: int = 0
    threads: PositiveInt | Literal["auto"] = Field(
        "auto", description="CPU threads for the framework's ops: a count >= 1, or auto (idle cores; see "
                            "crossframe.threads)")
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="mlp"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    loggers: list[ComponentConfig] = Field(default_factory=list)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    security: SecurityConfig | None = Field(None, description="encryption at rest and signed artefacts")
    compress: list[ComponentConfig] = Field(default_factory=list,
                                            description="compressors applied in order after training")
    export: list[ComponentConfig] = Field(default_factory=list,
                                          description="exporters run after training and compression")
    tune: dict[str, Any] | None = Field(None, description="hyperparameter search, read by `crossframe tune` "
                                        "(validated there; `crossframe run` ignores it)")
    registry: str | None = Field(None, description="model registry for 'crossframe models': a directory, or "
                                 "NAME:LOCATION of a plugin's backend (mlflow:http://host:5000); "
                                 "default: $CROSSFRAME_REGISTRY, else the user's data directory")
    requires: list[str] = Field(default_factory=list,
                                description="plugin distributions this config needs, e.g. 'crossframe-mlflow>=0.1'")

    @field_validator("name")
    @classmethod
    def _name_stays_inside_output_dir(cls, value: str | None) -> str | None:
        if value is not None and (not _RUN_NAME.match(value) or value.startswith(".")):
            raise ValueError("must be letters, digits, '.', '_' or '-', not starting with '.' "
                             "(it names a directory inside output_dir)")
        return value
