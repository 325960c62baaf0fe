"""Prompt token ids from a request: the one place that maps chat messages and completion
prompts to the ids the model sees (and `usage.prompt_tokens` counts).

Used by the completions endpoints (`server/serving.py`), `/tokenize`
(`server/tokenize.py`) and the router's prefix scorer (`server/router/app.py`), so the
three always agree. vLLM's conventions:

* A text completion prompt gets the tokenizer's special tokens (BOS, if the model has
  one) when `add_special_tokens` is true, the default for `/v1/completions`; a prompt of
  token ids is taken as is.
* A chat prompt is the chat template's ids; its template puts in the special tokens, so
  `add_special_tokens` defaults to false there and true puts a BOS before the template,
  as vLLM's `tokenizer(rendered, add_special_tokens=True)` does.
* `developer` is `system` to the template.

Raises `APIError` (400) for a batch of several prompts, an empty prompt or token ids
outside the vocabulary. Pure functions of their arguments: safe from any thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from npu_sim.tokenizers import Tokenizer
from server.errors import APIError
from server.protocol import ChatMessage

CompletionPrompt = str | list[int] | list[str] | list[list[int]]


def chat_turns(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """(role, text) pairs the chat template takes."""
    return [("system" if m.role == "developer" else m.role, m.text()) for m in messages]


def chat_prompt_ids(
    tok: Tokenizer, messages: Sequence[ChatMessage], add_special_tokens: bool = False
) -> list[int]:
    """The ids of a chat prompt, ending with the assistant generation prompt."""
    ids = tok.apply_chat_template(chat_turns(messages))
    return _with_bos(tok, ids, add_special_tokens)


def completion_prompt_ids(
    tok: Tokenizer,
    prompt: CompletionPrompt,
    add_special_tokens: bool = True,
    max_model_len: int | None = None,
) -> list[int]:
    """The ids of a completion prompt (a batch of one is unwrapped).

    `max_model_len`: a list of ids at least this long is returned unchecked (the caller
    rejects it as too long), so a huge list does not cost a per-id loop.
    """
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise APIError(
                400,
                "Send one prompt per request (batched prompts are not supported).",
                param="prompt",
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = _with_bos(tok, tok.encode(prompt), add_special_tokens)
    else:
        ids = list(prompt)  # type: ignore[arg-type]
        too_long = max_model_len is not None and len(ids) >= max_model_len
        bad = [] if too_long else [t for t in ids if not 0 <= t < tok.vocab_size]
        if bad:
            raise APIError(
                400,
                f"Token id {bad[0]} is outside the vocabulary [0, {tok.vocab_size}).",
                param="prompt",
            )
    if not ids:
        raise APIError(400, "The prompt is empty.", param="prompt")
    return ids


def _with_bos(tok: Tokenizer, ids: list[int], add_special_tokens: bool) -> list[int]:
    if add_special_tokens and tok.bos_id is not None:
        return [tok.bos_id, *ids]
    return ids
