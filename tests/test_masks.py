"""Pruning masks kept inside each backend's compiled step: pruned weights stay exactly zero.

Fine-tuning with ``TrainSetup.masks`` (adamw with weight decay, clipping, accumulation) must
leave every pruned entry exactly 0 on torch, jax and tensorflow, for the mlp and the gpt; the
unpruned ones keep learning; ``grad_accum`` still equals one big batch; ``load_state`` re-prunes.
"""

from __future__ import annotations

import numpy as np
import pytest

from crossframe.backend import Backend, TrainSetup
from crossframe.data.dataset import DataInfo
from crossframe.errors import CapabilityError, ConfigError
from crossframe.models import build_model
from crossframe.models.spec import ModelSpec
from crossframe.testing.tolerance import network_tolerance, sgd_weight_tolerance

BACKENDS = ("torch", "jax", "tensorflow")
CASES = {
    "mlp": ({"hidden": [10], "activation": "relu"}, DataInfo("classification", (6,), 4)),
    "gpt": ({"n_layer": 1, "n_head": 2, "d_model": 8, "max_seq_len": 6}, DataInfo("language_modeling", (6,), 11)),
}


def _backend(name: str) -> Backend:
    from crossframe.train.runner import make_backend

    try:
        return make_backend(name)
    except CapabilityError as exc:
        pytest.skip(str(exc))


def _batch(info: DataInfo, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if info.task == "language_modeling":
        x = rng.integers(0, info.num_outputs, (n, *info.input_shape)).astype(np.int64)
        mask = (rng.random(x.shape) < 0.7).astype(np.float32)
        return {"x": x, "y": np.roll(x, -1, axis=1), "mask": mask}
    return {"x": rng.normal(size=(n, *info.input_shape)).astype(np.float32),
            "y": rng.integers(0, info.num_outputs, n).astype(np.int64)}


def _masks(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Random 50% masks on every matrix (dense and embedding weights); biases and norms unmasked."""
    rng = np.random.default_rng(seed)
    return {p.name: (rng.random(p.shape) < 0.5).astype(np.float32)
            for p in spec.table if p.layout in ("dense", "embedding")}


def _setup(model: str, masks: bool = True, grad_accum: int = 1) -> TrainSetup:
    spec = build_model(model, *CASES[model])
    # SGD with momentum and decay: buffers that would move pruned entries, and rounding that stays linear
    # when grad_accum reorders the sums (Adam turns a rounding-level gradient, such as a key bias's, into
    # a full step: crossframe.testing.tolerance)
    return TrainSetup(spec, spec.init(3), "sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
                      grad_accum=grad_accum,
                      clip_norm=1.0, masks=_masks(spec, 7) if masks else None)


@pytest.mark.parametrize("model", sorted(CASES))
@pytest.mark.parametrize("name", BACKENDS)
def test_sparsity_is_exactly_preserved_and_accumulation_stays_exact(name: str, model: str) -> None:
    """SGD with momentum + weight decay + clipping, one batch and grad_accum=2: pruned entries stay 0, the rest
    learn, and accumulation changes the weights by no more than the reordered sums' rounding."""
    impl = _backend(name)
    setups = [_setup(model, grad_accum=k) for k in (1, 2)]
    states = [impl.create_state(s) for s in setups]
    for i in range(3):
        batch = _batch(CASES[model][1], 8, 10 + i)
        steps = [impl.train_step(s, batch, 0.1) for s in states]
        states = [state for state, _ in steps]
    assert all(np.isfinite(float(impl.fetch(out)["loss"])) for _, out in steps)
    a, b = (impl.export_state(s)[0] for s in states)
    masks, before = setups[0].masks, setups[0].weights
    assert masks is not None
    for weights in (a, b):
        for pname, mask in masks.items():
            w, pruned, kept = weights[pname], mask == 0, mask == 1
            assert np.count_nonzero(w[pruned]) == 0, f"{name}/{model}: '{pname}' has non-zero pruned entries"
            assert np.count_nonzero(w) <= int(kept.sum()), f"{name}/{model}: '{pname}' sparsity dropped"
            moved = np.mean(w[kept] != before[pname][kept])
            assert moved > 0.9, f"{name}/{model}: only {moved:.0%} of the kept entries of '{pname}' changed"
        biases = [p.name for p in setups[0].spec.table if p.layout == "bias"]
        assert any(not np.array_equal(weights[n], before[n]) for n in biases), "unmasked biases stopped learning"
    # clipping to 1.0 bounds each step's gradient norm; depth counts the chained reductions
    depth = 2 * setups[0].spec.params.get("n_layer", len(setups[0].spec.table)) + 2
    terms = 8 * max(int(np.prod(p.shape)) for p in setups[0].spec.table)
    allowed = sgd_weight_tolerance(0.1, 3, network_tolerance(depth, terms, 1.0), 0.9)
    assert max(float(np.max(np.abs(a[n] - before[n]))) for n in a) > 100 * allowed  # the comparison has teeth
    for pname in a:
        diff = float(np.max(np.abs(a[pname].astype(np.float64) - b[pname])))
        assert diff <= allowed, (f"{name}/{model}: grad_accum=2 with masks differs from one batch on {pname!r}: "
                                 f"{diff:.3g} > {allowed:.3g}")


@pytest.mark.parametrize("name", BACKENDS)
def test_load_state_reprunes_and_the_unmasked_path_is_unchanged(name: str) -> None:
    impl = _backend(name)
    masked, plain = _setup("mlp"), _setup("mlp", masks=False)
    assert masked.masks is not None
    state = impl.load_state(impl.create_state(masked), plain.weights, None)  # dense weights come in
    weights = impl.export_state(state)[0]
    for pname, mask in masked.masks.items():
        assert np.array_equal(weights[pname], plain.weights[pname] * mask), f"{name}: load_state did not re-prune"
    # without masks nothing is pruned: the same steps give the same weights as a masked run on ones
    ones = TrainSetup(plain.spec, plain.weights, plain.optimizer, plain.optimizer_params, clip_norm=1.0,
                      masks={n: np.ones_like(m) for n, m in masked.masks.items()})
    states = [impl.create_state(plain), impl.create_state(ones)]
    for i in range(2):
        batch = _batch(plain.spec.data_info, 8, 30 + i)
        states = [impl.train_step(s, batch, 0.02)[0] for s in states]
    a, b = (impl.export_state(s)[0] for s in states)
    for pname in a:
        assert np.array_equal(a[pname], b[pname]), f"{name}: an all-ones mask changed '{pname}'"


@pytest.mark.parametrize("name", BACKENDS)
def test_a_mask_that_does_not_fit_is_a_one_line_error(name: str) -> None:
    impl = _backend(name)
    setup = _setup("mlp", masks=False)
    for masks, match in (({"layers.9.weight": np.ones((2, 2))}, "masks: 'layers.9.weight' is not a parameter"),
                         ({"layers.0.weight": np.ones((4, 6))}, "masks: 'layers.0.weight' has shape \\(4, 6\\)")):
        setup.masks = masks
        with pytest.raises(ConfigError, match=match):
            impl.create_state(setup)
