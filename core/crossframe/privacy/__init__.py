"""Differentially private training (DP-SGD), framework-free: the setup a backend's step reads,
the seeded noise every backend adds, Poisson sampling, and privacy accounting with dp-accounting.

A backend's ``privacy.py`` computes per-example gradients, clips each to ``max_grad_norm``, sums
them, adds the noise this package drew for the step (so every backend adds the same numbers) and
divides by the expected batch size. See docs/privacy.md.
"""

from crossframe.privacy.setup import NOISE_PREFIX, WEIGHT_KEY, PrivacySetup, batch_noise, batch_weights, step_noise

__all__ = ["NOISE_PREFIX", "WEIGHT_KEY", "PrivacySetup", "batch_noise", "batch_weights", "step_noise"]
