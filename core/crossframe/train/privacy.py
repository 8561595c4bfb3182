"""``train.privacy`` resolved for a run: checked against the rest of the config, the noise solved
for ``target_epsilon``, the loader wrapped so each batch carries its noise, and the ledger that
reports epsilon at every evaluation (see :mod:`crossframe.privacy`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crossframe.config.schema import RunConfig
from crossframe.data.sharding import shard_rows
from crossframe.errors import CapabilityError, ConfigError
from crossframe.privacy import PrivacySetup
from crossframe.privacy.accounting import PrivacyLedger, solve_noise_multiplier
from crossframe.privacy.loader import PrivateLoader


@dataclass
class RunPrivacy:
    """The resolved DP-SGD of a run: the backend's setup, the wrapped loader and the ledger."""

    setup: PrivacySetup
    loader: PrivateLoader
    ledger: PrivacyLedger


def check_privacy(cfg: RunConfig, task: str) -> None:
    """Refuse, in one line, what DP-SGD cannot be combined with (before anything is built)."""
    if cfg.train.privacy is None:
        return
    if task == "language_modeling":
        raise CapabilityError("train.privacy: DP-SGD trains classifiers and regressors; language models "
                              "(per-sequence clipping) are not supported yet")
    if cfg.train.clip_norm is not None:
        raise ConfigError("train.clip_norm: DP-SGD clips each example to train.privacy.max_grad_norm; "
                          "remove train.clip_norm")
    if cfg.strategy == "fully_sharded":  # the backend's private_strategies say which others it runs
        raise CapabilityError("train.privacy: DP-SGD shards no parameters; use strategy data_parallel "
                              "(each worker clips its own examples, the sums are all-reduced)")
    if cfg.precision == "fp16":
        raise CapabilityError("train.privacy: fp16 loss scaling would scale the per-example norms; use fp32 or bf16")
    if cfg.train.distill is not None:
        raise CapabilityError("train.privacy: distillation from a teacher is not combined with DP-SGD")


def resolve_privacy(cfg: RunConfig, loader: Any, table: list[tuple[str, tuple[int, ...]]], total_steps: int,
                    world: Any = None, replicas: int = 1) -> RunPrivacy | None:
    """The run's DP-SGD, or None when ``train.privacy`` is not set.

    With data parallelism (``world``, a :class:`~crossframe.backend.WorldInfo`, and ``replicas`` per
    process) the expected batch, the sample rate and so the accounting are the *global* step's: the
    workers' clipped sums are added before the one noise draw, as one process with the global batch.
    """
    p = cfg.train.privacy
    if p is None:
        return None
    examples = len(loader.dataset)
    rank, world_size = (world.rank, world.world_size) if world is not None else (0, 1)
    expected = cfg.train.batch_size * cfg.train.grad_accum * replicas * world_size
    rate = expected / examples
    sigma = p.noise_multiplier
    if sigma is None:
        assert p.target_epsilon is not None
        sigma = solve_noise_multiplier(p.target_epsilon, rate, total_steps, p.delta, p.accountant)
    setup = PrivacySetup(float(sigma), p.max_grad_norm, expected, cfg.seed, p.delta, rate, p.accountant, p.poisson)
    ledger = PrivacyLedger(float(sigma), rate, p.delta, p.accountant, p.poisson, p.max_grad_norm, p.target_epsilon)
    micro = cfg.train.grad_accum
    shard = (lambda rows: shard_rows(rows, micro, rank, world_size)) if world_size > 1 else None
    private = PrivateLoader(loader, setup, table, micro, parts=world_size * replicas, shard=shard)
    return RunPrivacy(setup, private, ledger)


__all__ = ["RunPrivacy", "check_privacy", "resolve_privacy"]
