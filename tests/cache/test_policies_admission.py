"""Admission policies: the contract over every registered one, and each one's rule."""

from __future__ import annotations

import pytest

from cache.policies.admission import (
    ADMISSION_POLICIES,
    FrequencyAdmission,
    SecondHitAdmission,
    make_admission_policy,
)


@pytest.mark.parametrize("name", sorted(ADMISSION_POLICIES))
def test_contract_a_block_seen_many_times_is_admitted(name):
    policy = make_admission_policy(name, 16)
    for _ in range(4):
        policy.record_access(b"k" * 32)
    assert policy.should_admit(b"k" * 32)


@pytest.mark.parametrize("name", sorted(set(ADMISSION_POLICIES) - {"always"}))
def test_contract_a_block_never_seen_is_not_admitted(name):
    policy = make_admission_policy(name, 16)
    policy.record_access(1)
    assert not policy.should_admit(2)
    assert not policy.should_admit(1)  # seen once is not enough either


@pytest.mark.parametrize("name", sorted(ADMISSION_POLICIES))
def test_contract_record_accesses_is_record_access_per_key(name):
    """The batched form (one call per admitted request) decides as the per-key calls do."""
    one, batched = make_admission_policy(name, 16), make_admission_policy(name, 16)
    keys = [bytes([i % 3]) * 32 for i in range(7)]
    for key in keys:
        one.record_access(key)
    batched.record_accesses(iter(keys))  # any iterable, read once
    probes = [bytes([i]) * 32 for i in range(4)]
    assert [batched.should_admit(k) for k in probes] == [one.should_admit(k) for k in probes]


def test_always_admits_anything():
    assert make_admission_policy("always", 1).should_admit(123)


def test_second_hit_forgets_beyond_its_ghost_capacity():
    policy = SecondHitAdmission(ghost_capacity=2)
    policy.record_access(1)
    policy.record_access(2)
    policy.record_access(3)  # pushes 1 out of the ghost list
    policy.record_access(1)
    assert not policy.should_admit(1)
    policy.record_access(3)
    assert policy.should_admit(3)


def test_frequency_sketch_never_undercounts_and_halves():
    policy = FrequencyAdmission(width=64, threshold=2)
    for key in range(30):
        policy.record_access(key)
    for _ in range(7):
        policy.record_access(7)
    assert policy.estimate(7) >= 8 and policy.should_admit(7)
    for _ in range(640 - 37):  # the 640th access (10 x width) halves every counter
        policy.record_access(99)
    assert 4 <= policy.estimate(7) < 8


def test_write_through_selective_waits_for_two_hits():
    policy = make_admission_policy("write-through-selective", 16)
    assert policy.writes_through
    policy.record_access(5)
    policy.record_access(5)
    assert not policy.should_admit(5)
    policy.record_access(5)
    assert policy.should_admit(5)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="second-hit"):
        make_admission_policy("nope", 1)
