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

    params = dict(data["params"])
    lora = params.pop("lora", None)  # LoRA adapters sit on top of the model's own params
    spec = build_model(data["name"], params, DataInfo.from_json(data["data_info"]))
    if lora is not None:
        from crossframe.nn.lora import apply_lora

        spec = apply_lora(spec, lora)
    return spec
