"""Sampler: greedy over sampleable tokens, seeded reproducibility, nucleus support."""

from __future__ import annotations

import numpy as np
import pytest

from npu_sim.sampling import Sampler, SamplingParams
from npu_sim.tokenizer import EOS, VOCAB_SIZE, sampleable_mask


def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(VOCAB_SIZE).astype(np.float32)


def test_greedy_picks_argmax_among_sampleable() -> None:
    logits = _logits()
    logits[3] = 100.0  # not sampleable (control byte)
    logits[ord("q")] = 50.0
    sampler = Sampler(SamplingParams(temperature=0.0), sampleable_mask)
    assert sampler.sample(logits) == ord("q")
    logits[EOS] = 60.0
    assert sampler.sample(logits) == EOS


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    rows = [_logits(i) for i in range(50)]

    def run(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(temperature=0.8, top_p=0.95, seed=seed), sampleable_mask)
        return [sampler.sample(r) for r in rows]

    assert run(42) == run(42)
    assert run(42) != run(43)
    assert all(sampleable_mask[t] for t in run(1))


def test_top_p_restricts_support() -> None:
    logits = np.full(VOCAB_SIZE, -10.0, dtype=np.float32)
    logits[[ord("a"), ord("b"), ord("c")]] = [5.0, 4.0, 0.0]
    # p(a) ~ 0.73, p(b) ~ 0.27, p(c) ~ 0.005: top_p=0.9 keeps {a, b}; 0.5 keeps {a}.
    wide = Sampler(SamplingParams(temperature=1.0, top_p=0.9, seed=0), sampleable_mask)
    assert {wide.sample(logits) for _ in range(400)} == {ord("a"), ord("b")}
    narrow = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0), sampleable_mask)
    assert {narrow.sample(logits) for _ in range(100)} == {ord("a")}
    full = Sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=0), sampleable_mask)
    seen = {full.sample(logits) for _ in range(4000)}
    assert {ord("a"), ord("b"), ord("c")} <= seen and all(sampleable_mask[t] for t in seen)


def test_unseeded_samplers_have_independent_streams() -> None:
    logits = np.zeros(VOCAB_SIZE, dtype=np.float32)
    a, b = (Sampler(SamplingParams(), sampleable_mask) for _ in range(2))
    assert [a.sample(logits) for _ in range(30)] != [b.sample(logits) for _ in range(30)]


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"temperature": float("nan")}]
)
def test_invalid_params(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_wrong_logits_shape_is_rejected() -> None:
    with pytest.raises(ValueError):
        Sampler(SamplingParams(), sampleable_mask).sample(np.zeros(10))


def test_any_integer_seed_is_accepted_and_reproducible():
    logits = np.linspace(0.0, 1.0, VOCAB_SIZE, dtype=np.float32)

    def draw(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed), sampleable_mask)
        return [sampler.sample(logits) for _ in range(32)]

    assert draw(-1) == draw(-1)
    assert draw(-1) != draw(1)  # the sign is part of the seed
    assert draw(2**70) == draw(2**70)


@pytest.mark.parametrize("temperature", [1e-320, 1e-7, 1e-5])
def test_tiny_temperatures_are_greedy_not_a_crash(temperature: float):
    logits = np.linspace(0.0, 50.0, VOCAB_SIZE, dtype=np.float32)
    greedy = Sampler(SamplingParams(temperature=0.0), sampleable_mask).sample(logits)
    sampler = Sampler(SamplingParams(temperature=temperature, seed=0), sampleable_mask)
    assert sampler.sample(logits) == greedy


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0])
def test_non_finite_temperature_is_rejected(bad: float):
    with pytest.raises(ValueError):
        SamplingParams(temperature=bad)
