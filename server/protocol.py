"""OpenAI request schemas (the subset tierkv honours, plus vLLM-style extensions).

Unknown fields are ignored, as OpenAI-compatible servers do; the known OpenAI and vLLM
fields we cannot honour (`logprobs`, `tools`, `best_of`, `response_format` json, ...) are
rejected by the serving layer with a 400 (server/sampling_params.py) rather than silently
dropped. An explicit JSON null for an optional field means its default.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # OpenAI accepts an explicit JSON null for an optional field: it means "default".
        if isinstance(data, dict):
            return {
                k: v
                for k, v in data.items()
                if not (
                    v is None and k in cls.model_fields and not cls.model_fields[k].is_required()
                )
            }
        return data


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage in every chunk


class ContentPart(_Request):
    """One part of a message's content; only `text` parts are served (see serving)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    _check_text = field_validator("content", "name", mode="before")(check_text)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class _Sampling(_Request):
    # Extra fields are kept (not dropped) so the serving layer can reject the known ones
    # it does not honour (server/sampling_params.py) instead of ignoring them.
    model_config = ConfigDict(extra="allow")
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
    # Sampling extensions (OpenAI and vLLM names; server/sampling_params.py applies them).
    top_k: int | None = None  # None, 0 or -1: off
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    bad_words: list[str] | None = None
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: int | None = None  # keep the last k prompt tokens; -1: max
    priority: int = 0  # lower runs first (vLLM's priority scheduling)

    _check_text = field_validator(
        "model", "stop", "user", "cache_salt", "bad_words", mode="before"
    )(check_text)

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
    # vLLM: the chat template adds the special tokens; true puts a BOS before it.
    add_special_tokens: bool = False

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None
    # vLLM: a text prompt gets the tokenizer's special tokens (BOS) unless this is false.
    add_special_tokens: bool = True

    _check_prompt = field_validator("prompt", "suffix", mode="before")(check_text)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class OffloadRequest(_Request):
    tier: Literal["hbm", "ddr"]
