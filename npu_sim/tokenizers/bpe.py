"""`BPETokenizer`: GPT-2-style byte-level BPE built from a GGUF's tokenizer metadata.

The vocabulary, merges and special tokens of `tokenizer.ggml.*` become a HuggingFace
`tokenizer.json` (pre-tokenizer "smollm": every digit split on its own, then GPT-2's
byte-level regex split; byte-level decoder) that the `tokenizers` package (Rust) encodes
with, so `encode` and `to_hf_json` agree by construction. Special-token strings in the
text (e.g. "<|im_end|>") encode as their special ids, as HF does (and vLLM for a raw
completion prompt). Chat message content is different: `apply_chat_template` encodes it
as plain text, special-token strings included, so a user cannot close their own turn and
forge a system or assistant one by typing "<|im_end|>\n<|im_start|>system"; only the
template's own markers become special ids.

The chat template is read from `tokenizer.chat_template` and must be SmolLM2's ChatML
template (any default system prompt); it is rendered by hand, exactly as its Jinja does
for plain-text messages, so no Jinja dependency is needed. Another template raises
`ValueError` when the tokenizer is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from npu_sim.gguf import GGUFFile, MetadataValue
from npu_sim.tokenizers.base import bytes_to_unicode, check_role, hf_bpe_model

# llama.cpp token types (`llama_token_type`).
TOKEN_NORMAL: Final = 1
TOKEN_CONTROL: Final = 3
TOKEN_USER_DEFINED: Final = 4

# SmolLM2's chat template (tokenizer.chat_template) with its default system prompt
# replaced by SYSTEM_SLOT.
SYSTEM_SLOT: Final = "<SYSTEM_PROMPT>"
CHATML_TEMPLATE: Final = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n<SYSTEM_PROMPT><|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
END_OF_TEXT: Final = "<|endoftext|>"
IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"


def parse_default_system_prompt(template: str) -> str:
    """The default system prompt of a SmolLM2-style ChatML `template`.

    Raises `ValueError` if `template` is not that template (modulo the prompt).
    """
    before, after = CHATML_TEMPLATE.split(SYSTEM_SLOT)
    match = re.fullmatch(re.escape(before) + "(.*)" + re.escape(after), template, re.DOTALL)
    if match is None or "'" in match.group(1):
        raise ValueError("unsupported chat template (expected SmolLM2's ChatML template)")
    return match.group(1)


class BPETokenizer:
    """Byte-level BPE with special tokens and a ChatML chat template. Immutable."""

    def __init__(
        self,
        name: str,
        tokens: Sequence[str],
        token_types: Sequence[int],
        merges: Sequence[str],
        eos_id: int,
        bos_id: int | None,
        default_system_prompt: str,
    ) -> None:
        """`tokens[i]` is id i spelled in GPT-2's byte alphabet (specials verbatim);
        `token_types` are llama.cpp's (1 normal, 3 control, 4 user-defined; any other
        type is treated as control); `merges` are "left right" strings in rank order.
        Generation stops on `eos_id` and on "<|endoftext|>" if the vocab has it."""
        if len(tokens) != len(token_types) or not tokens:
            raise ValueError("tokens and token_types must be non-empty and equally long")
        for label, token_id in (("eos", eos_id), ("bos", bos_id)):
            if token_id is not None and not 0 <= token_id < len(tokens):
                raise ValueError(f"{label} id {token_id} outside the vocabulary")
        self._name = name
        self._tokens = tuple(tokens)
        self._types = tuple(token_types)
        self._merges = tuple(merges)
        self._bos_id = bos_id
        self._system_prompt = default_system_prompt
        stops = {eos_id}
        if END_OF_TEXT in self._tokens:
            stops.add(self._tokens.index(END_OF_TEXT))
        self._stop_ids = frozenset(stops)

        decoder = {char: byte for byte, char in bytes_to_unicode().items()}
        spelled: list[bytes] = []
        mask = np.zeros(len(tokens), dtype=bool)
        for token_id, (text, kind) in enumerate(zip(tokens, token_types, strict=True)):
            if kind == TOKEN_NORMAL:
                try:
                    spelled.append(bytes(decoder[c] for c in text))
                except KeyError:
                    raise ValueError(f"token {token_id} {text!r} is not byte-level") from None
                mask[token_id] = True
            elif kind == TOKEN_USER_DEFINED:
                spelled.append(text.encode("utf-8"))
                mask[token_id] = True
            else:
                spelled.append(b"")
        mask[list(self._stop_ids)] = True
        mask.flags.writeable = False
        self._bytes = tuple(spelled)
        self._mask = mask
        self._json = self._build_hf_json()
        self._hf = HFTokenizer.from_str(self._json)
        # The same tokenizer, but special-token strings in the text stay text.
        self._plain = HFTokenizer.from_str(self._json)
        self._plain.encode_special_tokens = True
        markers = {m: self._hf.token_to_id(m) for m in (IM_START, IM_END)}
        if None in markers.values():
            raise ValueError("vocabulary lacks the ChatML markers <|im_start|> / <|im_end|>")
        self._marker_ids: dict[str, int] = markers  # type: ignore[assignment]

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, MetadataValue], name: str) -> BPETokenizer:
        """Build from `tokenizer.*` GGUF metadata (model "gpt2"); `ValueError` if absent."""
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"tokenizer model {model!r} is not byte-level BPE ('gpt2')")

        def get(key: str, kind: type) -> object:
            value = metadata.get(key)
            if not isinstance(value, kind):
                raise ValueError(f"tokenizer metadata {key} missing or not {kind.__name__}")
            return value

        tokens = get("tokenizer.ggml.tokens", list)
        types = get("tokenizer.ggml.token_type", list)
        merges = get("tokenizer.ggml.merges", list)
        eos = get("tokenizer.ggml.eos_token_id", int)
        add_bos = metadata.get("tokenizer.ggml.add_bos_token", False) is True
        bos = get("tokenizer.ggml.bos_token_id", int) if add_bos else None
        template = get("tokenizer.chat_template", str)
        return cls(
            name,
            tokens,  # type: ignore[arg-type]
            types,  # type: ignore[arg-type]
            merges,  # type: ignore[arg-type]
            eos,  # type: ignore[arg-type]
            bos,  # type: ignore[arg-type]
            parse_default_system_prompt(template),  # type: ignore[arg-type]
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def bos_id(self) -> int | None:
        """None for SmolLM2 (its metadata says add_bos_token = false)."""
        return self._bos_id

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return self._stop_ids

    @property
    def sampleable_mask(self) -> np.ndarray:
        """Every normal token plus the stop tokens; never another special."""
        return self._mask

    @property
    def default_system_prompt(self) -> str:
        return self._system_prompt

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._hf.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self._bytes):
            raise ValueError(f"token id {token_id} outside vocabulary [0, {len(self._bytes)})")
        return self._bytes[token_id]

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """The chat template's text for `messages` plus the generation prompt."""
        return "".join(piece for piece, _ in self._chat_pieces(messages))

    def apply_chat_template(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """The template's markers as special ids, everything else (roles, the system
        prompt, message content) as plain text. Where the content holds no special-token
        string this equals `encode(render_chat(messages))`, HF's and vLLM's ids: HF
        splits the text at special tokens before the byte-level split, as the pieces here
        are split at the markers."""
        ids: list[int] = []
        for piece, is_marker in self._chat_pieces(messages):
            if is_marker:
                ids.append(self._marker_ids[piece])
            else:
                ids += self._plain.encode(piece, add_special_tokens=False).ids
        return ids

    def _chat_pieces(self, messages: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
        """The rendered template as (text, is a marker) pieces."""
        turns = []
        for index, (role, content) in enumerate(messages):
            check_role(role)
            if index == 0 and role != "system":
                turns.append(("system", self._system_prompt))
            turns.append((role, content))
        pieces: list[tuple[str, bool]] = []
        for role, content in turns:
            pieces += [(IM_START, True), (f"{role}\n{content}", False), (IM_END, True)]
            pieces.append(("\n", False))
        return [*pieces, (IM_START, True), ("assistant\n", False)]

    def to_hf_json(self) -> str:
        return self._json

    def _build_hf_json(self) -> str:
        vocab = {text: token_id for token_id, text in enumerate(self._tokens)}
        if len(vocab) != len(self._tokens):
            raise ValueError("duplicate token strings in the vocabulary")
        added = [
            {
                "id": token_id,
                "content": text,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": kind != TOKEN_USER_DEFINED,
            }
            for token_id, (text, kind) in enumerate(zip(self._tokens, self._types, strict=True))
            if kind != TOKEN_NORMAL
        ]
        byte_level = {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        }
        return json.dumps(
            {
                "version": "1.0",
                "truncation": None,
                "padding": None,
                "added_tokens": added,
                "normalizer": None,
                "pre_tokenizer": {
                    "type": "Sequence",
                    "pretokenizers": [
                        {"type": "Digits", "individual_digits": True},
                        byte_level,
                    ],
                },
                "post_processor": None,
                "decoder": byte_level,
                "model": hf_bpe_model(vocab, list(self._merges)),
            },
            ensure_ascii=False,
        )


def load_gguf_tokenizer(path: Path | str, name: str) -> BPETokenizer:
    """The tokenizer stored in the GGUF file at `path` (reads metadata only)."""
    return BPETokenizer.from_gguf_metadata(GGUFFile(path).metadata, name)
