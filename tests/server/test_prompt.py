"""`server.prompt`: the one mapping from a request's prompt to the model's ids."""

from __future__ import annotations

import pytest

from npu_sim.tokenizers.byte import ByteTokenizer
from server.errors import APIError
from server.prompt import chat_prompt_ids, completion_prompt_ids
from server.protocol import ChatMessage

TOK = ByteTokenizer()


def test_completion_text_gets_bos_unless_told_not_to():
    assert completion_prompt_ids(TOK, "ab") == [TOK.bos_id, 97, 98]
    assert completion_prompt_ids(TOK, ["ab"], add_special_tokens=False) == [97, 98]
    # Token ids are taken as they are, BOS or not.
    assert completion_prompt_ids(TOK, [[97, 98]]) == [97, 98]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [(["a", "b"], "one prompt"), ("", "empty"), ([1, 10**6], "outside the vocabulary")],
)
def test_completion_prompt_errors(prompt, message):
    with pytest.raises(APIError, match=message) as info:
        completion_prompt_ids(TOK, prompt, add_special_tokens=False)
    assert info.value.status == 400 and info.value.param == "prompt"


def test_chat_maps_developer_to_system_and_adds_bos_on_request():
    developer = [ChatMessage(role="developer", content="be brief")]
    system = [ChatMessage(role="system", content="be brief")]
    ids = chat_prompt_ids(TOK, developer)
    assert ids == chat_prompt_ids(TOK, system) == TOK.apply_chat_template([("system", "be brief")])
    assert chat_prompt_ids(TOK, developer, add_special_tokens=True) == [TOK.bos_id, *ids]
