"""Privacy accounting with Google's ``dp-accounting``: epsilon after some steps, and the noise for a target.

A DP-SGD step is a Poisson-sampled Gaussian mechanism: each example is in the step's sample with
probability ``q`` (the sample rate) and the sum of clipped gradients gets Gaussian noise of standard
deviation ``noise_multiplier * max_grad_norm``. ``steps`` of them compose; the accountant (Renyi DP,
``rdp``, or privacy loss distributions, ``pld``, the tighter and slower one) turns that into the
smallest ``epsilon`` for the run's ``delta``. Without Poisson sampling (shuffled fixed-size batches)
the same numbers are reported, as most DP libraries do; docs/privacy.md says what that assumes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from crossframe.errors import ConfigError

ACCOUNTANTS = ("rdp", "pld")


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting logs (through absl) each Renyi order it drops while searching; keep those off the run's output."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dp_accounting() -> Any:
    """The ``dp_accounting`` module, or one line saying how to install it."""
    try:
        import dp_accounting
    except ImportError:
        raise ConfigError("train.privacy: privacy accounting needs Google's dp-accounting; "
                          "pip install 'crossframe[privacy]'") from None
    return dp_accounting


def _accountant(kind: str) -> Any:
    dp_accounting = _dp_accounting()

    if kind == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    if kind == "pld":
        return dp_accounting.pld.PLDAccountant()
    raise ConfigError(f"train.privacy.accountant: '{kind}' is not one of {', '.join(ACCOUNTANTS)}")


def _event(noise_multiplier: float, sample_rate: float) -> Any:
    dp_accounting = _dp_accounting()

    return dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """The run's epsilon after ``steps`` DP-SGD steps (``inf`` without noise, 0 before the first step)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = _accountant(accountant)
    with _quiet_absl():
        acc.compose(_event(noise_multiplier, sample_rate), int(steps))
        return float(acc.get_epsilon(delta))


def solve_noise_multiplier(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                           accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose epsilon after ``steps`` steps is at most ``target_epsilon``."""
    dp_accounting = _dp_accounting()

    def make_event(sigma: float) -> Any:
        return dp_accounting.SelfComposedDpEvent(_event(sigma, sample_rate), int(steps))

    try:
        with _quiet_absl():
            sigma = dp_accounting.calibrate_dp_mechanism(
                lambda: _accountant(accountant), make_event, target_epsilon, delta,
                dp_accounting.LowerEndpointAndGuess(0.05, 1.0), tol=1e-4)
    except Exception as exc:  # the bracket search failed: the target is out of reach
        raise ConfigError(f"train.privacy.target_epsilon: no noise multiplier reaches epsilon {target_epsilon} "
                          f"in {steps} steps at sample rate {sample_rate:.4g} "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    # calibrate returns a point of the bracket within tol; step up to a value that meets the target
    while epsilon(float(sigma), sample_rate, steps, delta, accountant) > target_epsilon:
        sigma = float(sigma) * (1 + 1e-4)
    return float(sigma)


@dataclass
class PrivacyLedger:
    """What a run reports: epsilon at a step (cached), and the summary stored with checkpoints."""

    noise_multiplier: float
    sample_rate: float
    delta: float
    accountant: str = "rdp"
    poisson: bool = False
    max_grad_norm: float = 1.0
    target_epsilon: float | None = None
    _cache: dict[int, float] = field(default_factory=dict, repr=False)

    def epsilon(self, steps: int) -> float:
        """Epsilon spent after ``steps`` optimizer steps."""
        if steps not in self._cache:
            self._cache[steps] = epsilon(self.noise_multiplier, self.sample_rate, steps, self.delta, self.accountant)
        return self._cache[steps]

    def summary(self, steps: int) -> dict[str, Any]:
        """The privacy guarantee after ``steps`` steps, as stored in ``state.json`` and ``privacy.json``."""
        return {"epsilon": self.epsilon(steps), "delta": self.delta, "steps": int(steps),
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                "sample_rate": self.sample_rate, "accountant": self.accountant, "poisson_sampling": self.poisson,
                "target_epsilon": self.target_epsilon}


__all__ = ["ACCOUNTANTS", "PrivacyLedger", "epsilon", "solve_noise_multiplier"]
