"""Neutral model architectures: canonical parameter tables, seeded init, numpy reference forward."""

from crossframe.models.spec import LAYOUTS, ModelSpec, Params, ParamSpec

__all__ = ["LAYOUTS", "ModelSpec", "ParamSpec", "Params", "build_model", "spec_from_json"]


def build_model(name: str, params: dict, data_info: object) -> ModelSpec:
    """Build the spec of the registered architecture ``name`` from raw ``params``."""
    from crossframe.plugins import component
    from crossframe.validation import validate_params

    comp = component("model", name, "model.name")
    return comp.obj(validate_params(comp.schema, params, "model"), data_info)


def spec_from_json(data: dict) -> ModelSpec:
    """Rebuild a spec from :meth:`ModelSpec.to_json` (as stored in a checkpoint's state.json)."""
    from crossframe.data.dataset import DataInfo

    return build_model(data["name"], data["params"], DataInfo.from_json(data["data_info"]))
