"""Request bodies, in the OpenAI API's shapes where one exists; unknown fields are refused."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class StreamOptions(_Strict):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage counts."""

    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, description="crossframe extension: sample among the k likeliest")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = None

    def stops(self) -> list[str]:
        """The stop strings, as a list without empties."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str = ""
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False


class ChatMessage(_Strict):
    """One message of a chat."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    name: str | None = None


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)


class PredictRequest(_Strict):
    """``POST /v1/predict``: examples as nested arrays (each of the model's input shape, or flat), or,
    for a model trained on a table, raw ``rows`` (``{column: value}``) that go through its saved transform."""

    model: str | None = None
    inputs: list[Any] | None = Field(None, min_length=1)
    rows: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _one_kind(self) -> PredictRequest:
        if (self.inputs is None) == (self.rows is None):
            raise ValueError("give either 'inputs' (model-ready numbers) or 'rows' (a table's raw records)")
        return self

    top_k: int = Field(1, ge=1, description="scores of the k likeliest classes per example")
