"""The conformance kit, run against every first-party backend, and against a broken one."""

from __future__ import annotations

import pytest

from crossframe.testing import BackendConformance

pytest_plugins = ["pytester"]


class TestTorchConformance(BackendConformance):
    backend = "torch"


class TestJaxConformance(BackendConformance):
    backend = "jax"


class TestTensorFlowConformance(BackendConformance):
    backend = "tensorflow"


BROKEN_LAYOUT = '''
import torch

from crossframe.testing import BackendConformance
from crossframe_torch.backend import TorchBackend


class BrokenLayoutBackend(TorchBackend):
    """Loads dense weights by reshaping [in, out] to [out, in] instead of transposing."""

    def _scramble(self, state, weights):
        with torch.no_grad():
            for p in state.setup.spec.table:
                if p.layout == "dense":
                    value = torch.from_numpy(weights[p.name].copy())
                    state.params[p.name].copy_(value.reshape(p.shape[1], p.shape[0]))
        return state

    def create_state(self, setup):
        return self._scramble(super().create_state(setup), setup.weights)

    def inference_state(self, spec, weights, device="cpu", precision="fp32"):
        return self._scramble(super().inference_state(spec, weights, device, precision), weights)


class TestBroken(BackendConformance):
    backend = "torch"

    def make_backend(self):
        return BrokenLayoutBackend()
'''


def test_a_backend_with_a_wrong_weight_layout_fails_with_a_clear_message(pytester: pytest.Pytester) -> None:
    pytest.importorskip("torch")
    pytester.makepyfile(test_broken=BROKEN_LAYOUT)
    result = pytester.runpytest_subprocess("-q", "-k", "forward or round_trip or optimizer_steps or capabilit")
    # one failure per weight check and per optimizer (six); capabilities and capability errors do not touch weights
    result.assert_outcomes(failed=8, passed=2)
    result.stdout.fnmatch_lines([
        "*mlp: round trip changed 'layers.0.weight' (layout 'dense'*the native <-> canonical conversion is wrong*",
        "*mlp: forward differs from the numpy reference by *check the weight layouts*",
        "*sgd step 1: loss *, reference *",
    ], consecutive=False)
