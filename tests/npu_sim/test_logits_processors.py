"""Logits processors and truncation: each knob's effect, in vLLM's semantics."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim.logits_processors import LogitsParams, apply_logits_processors
from npu_sim.sampling import Sampler, SamplingParams
from npu_sim.tokenizer import EOS, VOCAB_SIZE, sampleable_mask

A, B, C = ord("a"), ord("b"), ord("c")


def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(VOCAB_SIZE).astype(np.float32)


def _row(values: dict[int, float], rest: float = -5.0) -> np.ndarray:
    row = np.full(VOCAB_SIZE, rest, dtype=np.float32)
    for t, v in values.items():
        row[t] = v
    return row


def test_defaults_change_nothing() -> None:
    row = _logits()
    assert LogitsParams().is_noop
    np.testing.assert_array_equal(apply_logits_processors(row, LogitsParams(), [1], [2]), row)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    row = _row({A: 4.0, B: -2.0, C: 3.0})
    out = apply_logits_processors(row, LogitsParams(repetition_penalty=2.0), [A], [B])
    assert out[A] == 2.0 and out[B] == -4.0  # A seen in the prompt, B in the output
    assert out[C] == 3.0  # never seen: unchanged


def test_frequency_and_presence_penalties_count_output_tokens_only() -> None:
    row = _row({A: 1.0, B: 1.0, C: 1.0})
    params = LogitsParams(frequency_penalty=0.5, presence_penalty=0.25)
    out = apply_logits_processors(row, params, [C, C, C], [A, A, A, B])
    assert out[A] == pytest.approx(1.0 - 1.5 - 0.25)
    assert out[B] == pytest.approx(1.0 - 0.5 - 0.25)
    assert out[C] == 1.0  # prompt tokens are not penalised


def test_min_tokens_bans_stop_ids_until_enough_were_generated() -> None:
    row = _row({EOS: 10.0, A: 1.0})
    params = LogitsParams(min_tokens=2, stop_token_ids=frozenset({EOS}))
    assert apply_logits_processors(row, params, [], [A])[EOS] == -np.inf
    assert apply_logits_processors(row, params, [], [A, A])[EOS] == 10.0


def test_logit_bias_is_added() -> None:
    out = apply_logits_processors(_row({A: 1.0}), LogitsParams(logit_bias=((B, 7.0),)), [], [])
    assert out[B] == 2.0 and out[A] == 1.0


def test_bad_words_ban_a_single_token_always_and_a_sequence_s_last_token_after_its_prefix():
    row = _row({A: 1.0, B: 1.0, C: 1.0})
    params = LogitsParams(bad_words_ids=((A,), (B, C)))
    out = apply_logits_processors(row, params, [], [C])
    assert out[A] == -np.inf and out[C] == 1.0  # "bc" not started: c allowed
    out = apply_logits_processors(row, params, [], [C, B])
    assert out[C] == -np.inf  # after "b", "c" would complete "bc"


def test_greedy_honours_processors_through_the_sampler() -> None:
    row = _row({A: 5.0, B: 4.0})
    params = SamplingParams(temperature=0.0, logits=LogitsParams(repetition_penalty=2.0))
    sampler = Sampler(params, sampleable_mask, prompt_token_ids=[A])
    assert sampler.sample(row) == B  # A's 5.0 became 2.5
    # The sampler remembers its output: B is now penalised too (4.0 -> 2.0 < 2.5).
    assert sampler.sample(row) == A


def test_top_k_one_and_min_p_one_equal_greedy() -> None:
    rows = [_logits(i) for i in range(40)]
    greedy = Sampler(SamplingParams(temperature=0.0), sampleable_mask)
    expected = [greedy.sample(r) for r in rows]
    for params in (
        SamplingParams(temperature=1.5, top_k=1, seed=3),
        SamplingParams(temperature=1.5, min_p=1.0, seed=3),
    ):
        sampler = Sampler(params, sampleable_mask)
        assert [sampler.sample(r) for r in rows] == expected


def test_top_k_and_min_p_restrict_the_support() -> None:
    row = _row({A: 3.0, B: 2.9, C: 2.8}, rest=2.7)
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0), sampleable_mask)
    assert {sampler.sample(row) for _ in range(200)} == {A, B}
    # min_p 0.5: keep tokens with at least half the top probability (A and B, not C).
    row = _row({A: 2.0, B: 2.0 - np.log(1.5), C: 2.0 - np.log(3.0)}, rest=-20.0)
    sampler = Sampler(SamplingParams(temperature=1.0, min_p=0.5, seed=0), sampleable_mask)
    assert {sampler.sample(row) for _ in range(300)} == {A, B}


def test_everything_banned_still_returns_a_sampleable_token() -> None:
    params = SamplingParams(
        temperature=0.0, logits=LogitsParams(bad_words_ids=tuple((t,) for t in range(VOCAB_SIZE)))
    )
    assert sampleable_mask[Sampler(params, sampleable_mask).sample(_logits())]


def test_processed_sampling_is_seed_reproducible() -> None:
    rows = [_logits(i) for i in range(30)]
    params = SamplingParams(
        temperature=0.9,
        top_k=20,
        min_p=0.05,
        seed=7,
        logits=LogitsParams(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2),
    )

    def run() -> list[int]:
        sampler = Sampler(params, sampleable_mask, prompt_token_ids=[A, B])
        return [sampler.sample(r) for r in rows]

    assert run() == run()


@pytest.mark.parametrize(
    "bad",
    [
        dict(min_tokens=-1),
        dict(presence_penalty=2.5),
        dict(frequency_penalty=-3),
        dict(repetition_penalty=0),
        dict(bad_words_ids=((),)),
    ],
)
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        LogitsParams(**bad)


def test_sampler_tallies_equal_recounting_prompt_and_output() -> None:
    """The sampler keeps its penalty tallies incrementally; each greedy step must pick
    what the pure function picks when it recounts prompt and output from scratch."""
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, 128, 300).tolist()
    params = LogitsParams(repetition_penalty=1.7, frequency_penalty=0.4, presence_penalty=0.3)
    sampler = Sampler(SamplingParams(temperature=0.0, logits=params), sampleable_mask, prompt)
    output: list[int] = []
    for _ in range(64):
        row = rng.standard_normal(VOCAB_SIZE) * 3
        expected = apply_logits_processors(row, params, prompt, output)
        token = sampler.sample(row)
        assert token == int(np.argmax(np.where(sampleable_mask, expected, -np.inf)))
        output.append(token)
