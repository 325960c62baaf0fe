"""JSON-object constrained decoding: which prefixes are allowed, and sampling under it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npu_sim.json_constraint import JsonObjectConstraint, _Machine
from npu_sim.sampling import Sampler, SamplingParams
from npu_sim.tokenizer import EOS, VOCAB_SIZE, sampleable_mask, stop_token_ids
from npu_sim.tokenizers import ByteTokenizer


def _accepts(text: str) -> tuple[bool, bool]:
    m = _Machine()
    ok = all(m.feed(ch) for ch in text)
    return ok, ok and m.mode == "done"


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        '{"a":1}',
        '{"a":[1,-2.5e+3,true,false,null,"x\\n\\u00e9"],"b":{"c":{}}}',
        '{"":""}',
        '{"n":0.5E2}',
        '{"a":[]}',
    ],
)
def test_complete_objects_are_accepted(text: str):
    assert _accepts(text) == (True, True)
    json.loads(text)


@pytest.mark.parametrize("text", ['{"a"', '{"a":[1,', '{"a":tr', '{"a":-', '{"a":"\\u00'])
def test_prefixes_are_accepted_but_not_complete(text: str):
    assert _accepts(text) == (True, False)


@pytest.mark.parametrize(
    "text",
    [
        "[",
        '"a"',
        "{a",
        '{"a" :1}',
        '{"a":01}',
        '{"a":1,}',
        '{"a":tru}',
        '{"a":"\\x"}',
        '{"a":1}}',
        '{"a":1} ',
        '{"a":[1}',
        "{,",
        '{"a":1.}',
        '{"a":-}',
        '{"a":1e}',
    ],
)
def test_invalid_text_is_rejected(text: str):
    assert _accepts(text)[0] is False


def _constraint() -> JsonObjectConstraint:
    tok = ByteTokenizer()
    return JsonObjectConstraint(
        (int(t) for t in sampleable_mask.nonzero()[0]),
        tok.token_bytes,
        stop_token_ids,
        VOCAB_SIZE,
    )


def test_stop_tokens_only_once_the_object_is_complete():
    c = _constraint()
    assert c.allowed_mask().nonzero()[0].tolist() == [ord("{")]
    for ch in '{"a":1':
        c.advance(ord(ch))
    allowed = c.allowed_mask()
    assert not allowed[EOS] and allowed[ord("}")] and allowed[ord("0")] and not allowed[ord("x")]
    c.advance(ord("}"))
    assert sorted(c.allowed_mask().nonzero()[0].tolist()) == sorted(stop_token_ids)


def test_sampling_under_the_constraint_yields_json_objects():
    rng = np.random.default_rng(0)
    for seed in range(3):
        sampler = Sampler(
            SamplingParams(temperature=1.0, seed=seed), sampleable_mask, constraint=_constraint()
        )
        # Logits that favour closing quotes and braces, so objects end in a few hundred steps.
        bias = np.zeros(VOCAB_SIZE)
        bias[[ord('"'), ord("}"), ord("]")]] = 4.0
        out = []
        for _ in range(3000):
            token = sampler.sample(rng.standard_normal(VOCAB_SIZE) + bias)
            if token in stop_token_ids:
                break
            out.append(token)
        else:
            raise AssertionError("no EOS")
        assert isinstance(json.loads(bytes(out).decode()), dict)


def test_memoised_masks_equal_fresh_ones_and_are_read_only():
    c = _constraint()
    text = '{"a":[1,{"b":"x\\"y"},true],"c":{"d":[]},"e":-0.5e+3,"f":null}'
    for ch in text:
        first = c.allowed_mask()
        assert not first.flags.writeable
        assert (c.allowed_mask() is first) and np.array_equal(first, c._compute_mask())
        c.advance(ord(ch))
    assert c.is_complete and np.array_equal(c.allowed_mask(), c._compute_mask())
