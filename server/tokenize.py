"""Tokenizer endpoints and export: vLLM's `/tokenize` and `/detokenize`, and the served
tokenizer as HuggingFace files that benchmark tools load offline.

The exported `tokenizer.json` is `Tokenizer.to_hf_json()` plus, for a model whose raw
completion prompts start with BOS, a post-processor that adds it: `encode(text)` with
special tokens then gives exactly the ids `/v1/completions` feeds the model, so a tool's
prompt token count equals `usage.prompt_tokens`. `tokenizer_config.json` names the
class (`PreTrainedTokenizerFast`), the EOS/BOS tokens and the model length.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field
from tokenizers import Tokenizer as HFTokenizer

from npu_sim.tokenizers import Tokenizer
from server.errors import APIError
from server.prompt import chat_prompt_ids, completion_prompt_ids
from server.protocol import ChatMessage, _Request

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class TokenizeCompletionRequest(_Request):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True  # completions prepend BOS (if the model has one)
    return_token_strs: bool = False


class TokenizeChatRequest(_Request):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class TokenizerService:
    """Tokenize, detokenize and export with the served model's tokenizer (thread-safe:
    the tokenizer is immutable)."""

    def __init__(self, tokenizer: Tokenizer, model_name: str, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len

    @cached_property
    def hf_json(self) -> str:
        return hf_tokenizer_json(self.tokenizer)

    @cached_property
    def hf_config(self) -> dict[str, Any]:
        return hf_tokenizer_config(self.tokenizer, self.hf_tokenizer, self.max_model_len)

    @cached_property
    def hf_tokenizer(self) -> HFTokenizer:
        return HFTokenizer.from_str(self.hf_json)

    def tokenize(self, body: TokenizeCompletionRequest | TokenizeChatRequest) -> dict[str, Any]:
        tok = self.tokenizer
        if isinstance(body, TokenizeChatRequest):
            if not body.add_generation_prompt or body.continue_final_message:
                raise APIError(
                    400,
                    "Only add_generation_prompt=true without continue_final_message is supported.",
                    param="add_generation_prompt",
                )
            ids = chat_prompt_ids(tok, body.messages, body.add_special_tokens)
        else:
            ids = completion_prompt_ids(tok, body.prompt, body.add_special_tokens)
        out: dict[str, Any] = {
            "count": len(ids),
            "max_model_len": self.max_model_len,
            "tokens": ids,
            "token_strs": None,
        }
        if body.return_token_strs:
            out["token_strs"] = [self.hf_tokenizer.id_to_token(t) for t in ids]
        return out

    def detokenize(self, body: DetokenizeRequest) -> dict[str, Any]:
        bad = [t for t in body.tokens if not 0 <= t < self.tokenizer.vocab_size]
        if bad:
            raise APIError(
                400,
                f"Token id {bad[0]} is outside the vocabulary [0, {self.tokenizer.vocab_size}).",
                param="tokens",
            )
        return {"prompt": self.tokenizer.decode(body.tokens)}


def hf_tokenizer_json(tokenizer: Tokenizer) -> str:
    """`tokenizer.to_hf_json()`, with a BOS-adding post-processor if the model has BOS."""
    if tokenizer.bos_id is None:
        return tokenizer.to_hf_json()
    data = json.loads(tokenizer.to_hf_json())
    bos = HFTokenizer.from_str(tokenizer.to_hf_json()).id_to_token(tokenizer.bos_id)
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [tokenizer.bos_id], "tokens": [bos]}},
    }
    return json.dumps(data, ensure_ascii=False)


def hf_tokenizer_config(
    tokenizer: Tokenizer, hf: HFTokenizer, max_model_len: int
) -> dict[str, Any]:
    eos = min(tokenizer.stop_token_ids) if tokenizer.stop_token_ids else None
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_model_len,
        "eos_token": None if eos is None else hf.id_to_token(eos),
        "bos_token": None if tokenizer.bos_id is None else hf.id_to_token(tokenizer.bos_id),
        "clean_up_tokenization_spaces": False,
    }


def export_tokenizer(tokenizer: Tokenizer, out_dir: Path, max_model_len: int) -> list[Path]:
    """Write `tokenizer.json` and `tokenizer_config.json` into `out_dir` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = hf_tokenizer_json(tokenizer)
    config = hf_tokenizer_config(tokenizer, HFTokenizer.from_str(text), max_model_len)
    paths = [out_dir / name for name in TOKENIZER_FILES]
    paths[0].write_text(text, encoding="utf-8")
    paths[1].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
