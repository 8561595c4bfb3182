"""Float tolerances that follow from the arithmetic, not from one machine's result.

Two float32 computations of the same mathematics differ because sums are taken in another
order (another CPU's vector width, a fused kernel, a recomputed backward, an accumulated
gradient). The standard bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
§3.1 and §4.2) for a sum of ``n`` terms is ``|fl(s) - s| <= gamma_n * sum|x_i|`` with
``gamma_n = n u / (1 - n u)`` and ``u = 2**-24`` for float32. The helpers here turn that into
tolerances for the shapes of computation the tests compare: a reduction, a network of some depth,
and the weights after some optimizer steps.

Adam is the exception that needs care: it divides each gradient element by its own running
magnitude, so an element whose exact gradient is at rounding level (a key bias, whose gradient is
zero in exact arithmetic) takes a full-size step in an arbitrary direction. Its per-element bound is
Adam's step size itself: :func:`adam_weight_tolerance`. Tests that want a tight weight
comparison across summation orders use SGD, where rounding propagates linearly
(:func:`sgd_weight_tolerance`).
"""

from __future__ import annotations

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53  # unit roundoff of float64
U_BF16 = 2.0**-8  # unit roundoff of bfloat16


def gamma(n: int, unit: float = U32) -> float:
    """``gamma_n = n u / (1 - n u)``: the relative error bound of an ``n``-term sum (``n u < 1``)."""
    nu = max(1, n) * unit
    if nu >= 1:
        raise ValueError(f"gamma: {n} terms exceed what unit roundoff {unit} can bound")
    return nu / (1 - nu)


def reduction_tolerance(terms: int, magnitude: float, unit: float = U32) -> float:
    """Bound on the difference of two orderings of one sum of ``terms`` values whose absolute values
    add up to at most ``magnitude`` (each ordering is within ``gamma_n * magnitude`` of the exact sum)."""
    return 2.0 * gamma(terms, unit) * magnitude


def network_tolerance(depth: int, width: int, magnitude: float, unit: float = U32) -> float:
    """Bound on an output of ``depth`` chained reductions of ``width`` terms each (a matmul per layer,
    softmax and norms counted as layers), outputs of size ``magnitude``: to first order the relative
    errors of the layers add up."""
    return depth * reduction_tolerance(width, magnitude, unit)


def sgd_weight_tolerance(lr: float, steps: int, grad_error: float, momentum: float = 0.0) -> float:
    """Bound on a weight after ``steps`` SGD steps when each step's gradient is off by at most
    ``grad_error``: with momentum ``mu`` step ``t`` carries ``sum_{j<=t} mu**(t-j)`` gradient errors."""
    total = sum(sum(momentum**j for j in range(t + 1)) for t in range(steps))
    return lr * grad_error * total


def adam_weight_tolerance(lr: float, steps: int, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """Bound on a weight after ``steps`` Adam(W) steps whatever the rounding of its gradients.

    Each bias-corrected step has magnitude at most ``lr * max(1, (1 - beta1) / sqrt(1 - beta2))``
    (Kingma and Ba, *Adam*, ICLR 2015, §2.1), so two runs can drift apart by twice that per step
    on an element whose gradient is at rounding level. Weight decay shrinks both runs alike.
    """
    beta1, beta2 = betas
    return 2.0 * lr * steps * max(1.0, (1.0 - beta1) / (1.0 - beta2) ** 0.5)


__all__ = ["U32", "U64", "U_BF16", "adam_weight_tolerance", "gamma", "network_tolerance", "reduction_tolerance",
           "sgd_weight_tolerance"]
