"""From an OpenAI request's sampling fields to the engine's: validated, or a 400.

Everything a request sets is either honoured or rejected: `check_supported` turns the
known OpenAI / vLLM fields this server cannot honour (beam search, tools, structured
output, logprobs, ...) into a clear 400 naming the field, instead of ignoring them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npu_sim.json_constraint import JsonObjectConstraint
from npu_sim.logits_processors import LogitsParams
from npu_sim.sampling import SamplingParams
from npu_sim.tokenizers import Tokenizer
from server.errors import APIError
from server.protocol import _Sampling

LOGIT_BIAS_LIMIT = 100.0  # vLLM and OpenAI clamp biases to [-100, 100]
# JSON-constrained decoding checks every token's bytes at each step: byte-level vocabularies
# only (a 49k-token BPE vocabulary would cost ~50k automaton runs per token).
MAX_CONSTRAINED_VOCAB = 1024


def _set(v: Any) -> bool:
    return v not in (None, False, 0, "", [], {})


# Field -> (is the value one we cannot honour?, why). Fields absent or at their default
# pass. Checked on the declared fields and on the extras a request carries alike.
_UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (_set, "logprobs are not supported by this server"),
    "top_logprobs": (_set, "logprobs are not supported by this server"),
    "prompt_logprobs": (lambda v: v is not None, "prompt_logprobs are not supported"),
    "best_of": (lambda v: v not in (None, 1), "best_of > 1 is not supported"),
    "use_beam_search": (_set, "beam search is not supported"),
    "length_penalty": (lambda v: v not in (None, 1, 1.0), "length_penalty needs beam search"),
    "tools": (_set, "tools are not supported by this server"),
    "tool_choice": (lambda v: v not in (None, "none"), "only tool_choice 'none' is supported"),
    "functions": (_set, "functions are not supported by this server"),
    "function_call": (lambda v: v not in (None, "none"), "function_call is not supported"),
    "response_format": (
        lambda v: (
            not (v is None or (isinstance(v, dict) and v.get("type") in ("text", "json_object")))
        ),
        "only response_format types 'text' and 'json_object' are supported (json_schema "
        "needs schema-constrained decoding, which this server does not do)",
    ),
    "guided_json": (_set, "guided decoding is not supported"),
    "guided_regex": (_set, "guided decoding is not supported"),
    "guided_choice": (_set, "guided decoding is not supported"),
    "guided_grammar": (_set, "guided decoding is not supported"),
    "structured_outputs": (_set, "structured outputs are not supported"),
    "kv_transfer_params": (lambda v: v is not None, "kv_transfer_params are not supported"),
    "chat_template": (_set, "custom chat templates are not supported"),
    "chat_template_kwargs": (_set, "chat_template_kwargs are not supported"),
    "add_generation_prompt": (lambda v: v is False, "add_generation_prompt=false is not supported"),
    "continue_final_message": (_set, "continue_final_message is not supported"),
    "skip_special_tokens": (
        lambda v: v is False,
        "skip_special_tokens=false is not supported (special tokens have no text)",
    ),
    "allowed_token_ids": (_set, "allowed_token_ids are not supported"),
    "logits_processors": (_set, "custom logits processors are not supported"),
    "return_tokens_as_token_ids": (_set, "return_tokens_as_token_ids is not supported"),
    "prompt_embeds": (_set, "prompt_embeds are not supported"),
    "mm_processor_kwargs": (_set, "multimodal inputs are not supported"),
    "audio": (_set, "audio output is not supported"),
    "modalities": (lambda v: v not in (None, ["text"]), "only the text modality is supported"),
    "prediction": (_set, "predicted outputs are not supported"),
    "echo": (_set, "echo is not supported by this server"),
    "suffix": (_set, "suffix is not supported by this server"),
    "documents": (_set, "documents are not supported"),
    "vllm_xargs": (_set, "vllm_xargs are not supported"),
}


def check_supported(body: _Sampling) -> None:
    """Raise a 400 for the first field set to something this server cannot honour."""
    extra = body.model_extra or {}
    for name, (is_unsupported, why) in _UNSUPPORTED.items():
        value = extra[name] if name in extra else getattr(body, name, None)
        if is_unsupported(value):
            raise APIError(400, f"{why} (got {name}={value!r}).", param=name)
    if body.stream_options is not None and not body.stream:
        raise APIError(
            400, "stream_options can only be set when stream is true.", param="stream_options"
        )


@dataclass(frozen=True, slots=True)
class RequestParams:
    """What the engine request gets from the sampling fields."""

    sampling: SamplingParams
    stop_token_ids: frozenset[int]
    min_tokens: int
    constraint: JsonObjectConstraint | None = None


def build_sampling_params(body: _Sampling, tokenizer: Tokenizer) -> RequestParams:
    """Validate the sampling fields against `tokenizer` and build the engine's params."""
    vocab = tokenizer.vocab_size
    extra_stops = body.stop_token_ids or []
    for t in extra_stops:
        _check_token(t, vocab, "stop_token_ids")
    eos = frozenset() if body.ignore_eos else tokenizer.stop_token_ids
    stop_ids = eos | frozenset(extra_stops)
    bias: list[tuple[int, float]] = []
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(
                400, f"logit_bias keys must be token ids, got {key!r}.", param="logit_bias"
            ) from None
        _check_token(token, vocab, "logit_bias")
        bias.append((token, max(-LOGIT_BIAS_LIMIT, min(LOGIT_BIAS_LIMIT, value))))
    # ignore_eos: the EOS tokens are never sampled (rather than sampled and not stopped
    # at), so every output token has text and a client that counts the tokens of the
    # text counts what usage reports (see README, "Token counts and EOS").
    eos_ban = tuple((t,) for t in sorted(tokenizer.stop_token_ids)) if body.ignore_eos else ()
    top_k = body.top_k or 0
    if top_k == -1:
        top_k = 0
    if top_k < 0:
        raise APIError(
            400, f"top_k must be -1, 0 (off) or positive, got {body.top_k}.", param="top_k"
        )
    logits = LogitsParams(
        min_tokens=body.min_tokens,
        stop_token_ids=stop_ids,
        logit_bias=tuple(sorted(bias)),
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        bad_words_ids=bad_words_ids(body.bad_words or [], tokenizer) + eos_ban,
    )
    sampling = SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        top_k=top_k,
        min_p=body.min_p,
        logits=logits,
    )
    return RequestParams(sampling, stop_ids, body.min_tokens, _json_constraint(body, tokenizer))


def _json_constraint(body: _Sampling, tokenizer: Tokenizer) -> JsonObjectConstraint | None:
    """The constraint of `response_format: {"type": "json_object"}`, or None."""
    fmt = (body.model_extra or {}).get("response_format")
    if not (isinstance(fmt, dict) and fmt.get("type") == "json_object"):
        return None
    if tokenizer.vocab_size > MAX_CONSTRAINED_VOCAB:
        raise APIError(
            400,
            f"response_format json_object is not supported for this model: "
            f"constrained decoding over its {tokenizer.vocab_size}-token "
            "vocabulary is not feasible here.",
            param="response_format",
        )
    if body.ignore_eos:
        raise APIError(
            400,
            "response_format json_object cannot be combined with ignore_eos "
            "(the object ends with EOS).",
            param="ignore_eos",
        )
    mask = tokenizer.sampleable_mask
    return JsonObjectConstraint(
        (int(t) for t in mask.nonzero()[0]),
        tokenizer.token_bytes,
        tokenizer.stop_token_ids,
        tokenizer.vocab_size,
    )


def truncate_prompt(prompt: list[int], body: _Sampling, max_model_len: int) -> list[int]:
    """Apply `truncate_prompt_tokens` (keep the last k tokens; -1: max_model_len)."""
    k = body.truncate_prompt_tokens
    if k is None:
        return prompt
    if k == -1:
        k = max_model_len
    if not 1 <= k <= max_model_len:
        raise APIError(
            400,
            f"truncate_prompt_tokens must be -1 or in [1, {max_model_len}], "
            f"got {body.truncate_prompt_tokens}.",
            param="truncate_prompt_tokens",
        )
    return prompt[-k:]


def bad_words_ids(words: list[str], tokenizer: Tokenizer) -> tuple[tuple[int, ...], ...]:
    """Token sequences of `bad_words` as vLLM builds them: each word as given (left-
    stripped) and, if that makes a different first token of the same length, with a
    leading space."""
    out: list[tuple[int, ...]] = []
    for word in words:
        plain = tuple(tokenizer.encode(word.lstrip()))
        if not plain:
            raise APIError(400, f"bad_words entry {word!r} has no tokens.", param="bad_words")
        out.append(plain)
        spaced = tuple(tokenizer.encode(" " + word.lstrip()))
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            out.append(spaced)
    return tuple(out)


def _check_token(token: int, vocab: int, param: str) -> None:
    if not 0 <= token < vocab:
        raise APIError(
            400, f"Token id {token} in {param} is outside the vocabulary [0, {vocab}).", param=param
        )
