"""Ground-floor config primitives: a component reference (``{name: ..., <params>}``) and turning
pydantic's errors into one line that names the field and what is allowed.

They live below every floor that validates params (models, text, config) so none of those imports
upward; :mod:`crossframe.config.validation` and :mod:`crossframe.config.schema` re-export them.
"""

from __future__ import annotations

import reprlib
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crossframe.errors import ConfigError, did_you_mean


class ComponentConfig(BaseModel):
    """``{name: ..., <params>}``: the params are validated by the component's own schema."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)

    @property
    def params(self) -> dict[str, Any]:
        """Everything but ``name``."""
        return dict(self.model_extra or {})


def _model_at(model: Any, loc: tuple) -> Any:
    """The pydantic model class reached by following ``loc`` through field annotations."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current


def _unwrap(annotation: Any) -> Any:
    """The first BaseModel inside Optional[...] / list[...] / Union[...], else the annotation."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation
    for arg in typing.get_args(annotation):
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation if origin is not types.UnionType else None


_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 2, 3, 3, 3, 3
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40


def _short(value: Any) -> str:
    """A bounded repr: only a prefix of a (possibly huge, alias-expanded) value is ever formatted."""
    text = _SHORT.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(exc: ValidationError, model: Any, prefix: str = "") -> str:
    """One line for the first error of ``exc`` raised while validating ``model``."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    # pydantic appends the tag of a failed union member ('function-after[...]') to loc: drop it
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"int", "float", "str", "bool"}
                                                        or p.startswith("constrained-") or p.startswith("literal"))))
    path = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = list(owner.model_fields) if isinstance(owner, type) and issubclass(owner, BaseModel) else []
        hint = did_you_mean(str(loc[-1]), allowed)
        known = f"; allowed keys: {', '.join(allowed)}" if allowed and not hint else ""
        return f"{path}: unknown key{hint}{known}"
    if err["type"] == "missing":
        return f"{path}: required but missing"
    message = err["msg"]
    message = message[0].lower() + message[1:]
    if message.startswith("value error, "):
        message = message[len("value error, "):]
    got = f" (got {_short(err['input'])})" if "input" in err and not isinstance(err["input"], dict) else ""
    return f"{path}: {message}{got}"


def validate_params(schema: type[BaseModel] | None, params: dict, where: str) -> BaseModel | dict:
    """Validate a component's params against the schema its plugin registered."""
    if schema is None:
        if params:
            raise ConfigError(f"{where}: takes no params (got {', '.join(sorted(params))})")
        return {}
    try:
        return schema.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(describe(exc, schema, where)) from None
