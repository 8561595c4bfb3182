"""Turning a stream of token ids into text: incremental decoding, stop strings, chat templates."""

from __future__ import annotations

from typing import Any

from crossframe.errors import ConfigError


class TextStream:
    """Decodes tokens as they come, yielding only text that is final.

    Text is held back while it could still be the start of a stop string, or while its end is an
    incomplete character (a byte-level tokenizer decodes half a UTF-8 sequence to U+FFFD). The
    pieces returned by :meth:`push` and :meth:`finish` concatenate to the whole completion.
    """

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.tokens: list[int] = []
        self.sent = 0  # characters of the decoded text already returned
        self.stopped = False
        self.text = ""

    def push(self, token: int) -> str:
        """Add ``token``; the new final text (maybe empty). Sets :attr:`stopped` at a stop string."""
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = self.text[:cut]
            return self._take(len(self.text))
        safe = len(self.text)
        while safe > self.sent and self.text[safe - 1] == "\ufffd":
            safe -= 1
        for stop in self.stops:  # a suffix that starts a stop string waits
            for k in range(min(len(stop) - 1, safe - self.sent), 0, -1):
                if self.text[safe - k:safe] == stop[:k]:
                    safe -= k
                    break
        return self._take(safe)

    def finish(self) -> str:
        """Whatever is still held back."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        piece = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece


def render_chat(template: str, messages: list[dict[str, Any]], eos_token: str) -> str:
    """The prompt for ``messages`` under a Jinja chat template (sandboxed), ending ready for the reply."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                bos_token="", eos_token=eos_token)
    except TemplateError as exc:
        raise ConfigError(f"chat template: {exc}") from None
