"""Byte tokenizer: exact round trips, chat layout, and the sampleable mask."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim import tokenizer as tok


@pytest.mark.parametrize(
    "text", ["", "hello", "naïve café", "日本語のテキスト", "emoji 🦙🚀", "a\nb\tc"]
)
def test_round_trip(text: str) -> None:
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_decode_skips_specials_and_replaces_bad_utf8() -> None:
    ids = [tok.BOS, *tok.encode("hi"), tok.END_OF_TURN, tok.EOS]
    assert tok.decode(ids) == "hi"
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # truncated 3-byte sequence
    with pytest.raises(ValueError):
        tok.decode([tok.VOCAB_SIZE])


def test_chat_template_layout() -> None:
    ids = tok.apply_chat_template([("system", "S"), ("user", "héllo"), ("assistant", "ok")])
    expected = (
        [tok.BOS, tok.SYSTEM, ord("S"), tok.END_OF_TURN, tok.USER]
        + list("héllo".encode())
        + [tok.END_OF_TURN, tok.ASSISTANT, ord("o"), ord("k"), tok.END_OF_TURN, tok.ASSISTANT]
    )
    assert ids == expected
    assert tok.apply_chat_template([]) == [tok.BOS, tok.ASSISTANT]
    with pytest.raises(ValueError):
        tok.apply_chat_template([("tool", "x")])


def test_special_ids_and_stop_tokens() -> None:
    specials = [tok.BOS, tok.EOS, tok.SYSTEM, tok.USER, tok.ASSISTANT, tok.END_OF_TURN]
    assert specials == list(range(256, 262)) and tok.VOCAB_SIZE == 262
    assert tok.stop_token_ids == {tok.EOS, tok.END_OF_TURN}


def test_sampleable_mask() -> None:
    mask = tok.sampleable_mask
    assert mask.dtype == bool and mask.shape == (tok.VOCAB_SIZE,)
    allowed = set(range(0x20, 0x7F)) | {ord("\n"), tok.EOS, tok.END_OF_TURN}
    assert set(np.flatnonzero(mask).tolist()) == allowed
    assert not mask.flags.writeable
    # Any string of sampleable bytes is valid UTF-8.
    tok.decode(np.flatnonzero(mask).tolist()).encode("utf-8")
    assert "\ufffd" not in tok.decode(np.flatnonzero(mask[:256]).tolist())
