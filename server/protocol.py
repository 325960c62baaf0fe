"""OpenAI request schemas (the subset tierkv honours, plus vLLM-style extensions).

Unknown fields are ignored, as OpenAI-compatible servers do; fields we cannot honour
(`logprobs`, `tools`, `echo`, n > 1, batched prompts) are rejected by the serving layer
with a 400 rather than silently dropped.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Lone UTF-16 surrogates are valid in JSON ("\ud800") and in a Python str, but not
# Unicode text: they cannot be encoded to UTF-8 (tokenizer, cache salt, logs).
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: Any) -> Any:
    """Return `value` (a str, or lists / dicts holding them) if all its text is valid
    Unicode; else raise ValueError naming the first lone surrogate. Runs on raw input
    (mode="before"), so it sees content parts as dicts; other types pass through."""
    if isinstance(value, str):
        if not value.isascii():
            found = _SURROGATE.search(value)
            if found is not None:
                raise ValueError(
                    f"contains a lone UTF-16 surrogate (U+{ord(found.group()):04X}) at "
                    f"character {found.start()}, which is not valid Unicode text"
                )
    elif isinstance(value, dict):
        for item in value.values():
            check_text(item)
    elif isinstance(value, list) and value and not isinstance(value[0], int):
        # A list starting with an int can only validate as token ids: no text to walk.
        for item in value:
            check_text(item)
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    _check_text = field_validator("content", "name", mode="before")(check_text)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Sampling(_Request):
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logprobs: Any = None
    # Extensions (vLLM names): generate exactly max_tokens; isolate a tenant's cache.
    ignore_eos: bool = False
    cache_salt: str | None = Field(None, min_length=1)

    _check_text = field_validator("model", "stop", "user", "cache_salt", mode="before")(check_text)

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None

    _check_prompt = field_validator("prompt", "suffix", mode="before")(check_text)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class OffloadRequest(_Request):
    tier: Literal["hbm", "ddr"]
