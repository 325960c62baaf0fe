"""Workload generators and synthetic text: deterministic from the seed."""

import pytest

from load import workloads
from load.synth import synth_text
from load.workloads import Api


def test_synth_text_is_deterministic_ascii_and_extends():
    a = synth_text("k", 1000)
    assert a == synth_text("k", 1000)
    assert len(a) == 1000 and a.isascii() and a.isprintable()
    assert synth_text("k", 10) == a[:10]
    assert synth_text("other", 1000) != a
    assert synth_text("k", 0) == ""
    with pytest.raises(ValueError):
        synth_text("k", -1)


GENERATORS = {
    "multiturn": lambda seed: workloads.multiturn(3, 4, 50, 20, 8, seed),
    "shared-prefix": lambda seed: workloads.shared_prefix(3, 4, 100, 10, 8, seed),
    "random": lambda seed: workloads.random_prompts(10, 64, 8, seed),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_deterministic_from_seed(name):
    make = GENERATORS[name]
    assert make(7) == make(7)
    assert make(7) != make(8)


def test_multiturn_structure():
    specs = workloads.multiturn(
        num_users=3, num_turns=4, system_len=50, user_len=20, max_tokens=8, seed=1
    )
    assert len(specs) == 12
    assert all(s.api is Api.CHAT for s in specs)
    assert len({s.system for s in specs}) == 1 and len(specs[0].system) == 50
    # interleaved: turn 0 of every user, then turn 1, ...
    assert [s.session for s in specs[:6]] == [0, 1, 2, 0, 1, 2]
    by_user = [s for s in specs if s.session == 1]
    assert by_user[0].previous is None
    assert [s.previous for s in by_user[1:]] == [s.index for s in by_user[:-1]]
    assert all(len(s.prompt) == 20 for s in specs)
    assert len({s.prompt for s in specs}) == 12
    assert by_user[2].input_tokens == 50 + 3 * 20 + 2 * 8
    assert len(workloads.multiturn(3, 4, 50, 20, 8, seed=1, num_requests=5)) == 5


def test_shared_prefix_shares_documents():
    specs = workloads.shared_prefix(
        num_docs=3, questions_per_doc=4, doc_len=100, question_len=10, max_tokens=8, seed=2
    )
    assert len(specs) == 12
    assert all(len(s.prompt) == 110 and s.input_tokens == 110 for s in specs)
    docs = {s.prompt[:100] for s in specs}
    assert len(docs) == 3
    for s in specs:
        assert sum(t.prompt[:100] == s.prompt[:100] for t in specs) == 4
    assert len({s.prompt for s in specs}) == 12
    # shuffled: not all questions of one document in a row
    assert [s.session for s in specs] != sorted(s.session for s in specs)


def test_random_prompts_share_no_prefix():
    specs = workloads.random_prompts(num_requests=20, input_len=64, max_tokens=8, seed=3)
    assert all(len(s.prompt) == 64 and s.api is Api.COMPLETIONS for s in specs)
    assert len({s.prompt[:8] for s in specs}) == 20


@pytest.mark.parametrize(
    "bad",
    [
        lambda: workloads.multiturn(0, 1, 1, 1, 1, 0),
        lambda: workloads.shared_prefix(1, 1, 0, 1, 1, 0),
        lambda: workloads.random_prompts(1, 1, 0, 0),
        lambda: workloads.multiturn(1, 1, 1, 1, 1, 0, num_requests=0),
    ],
)
def test_bad_lengths_are_rejected(bad):
    with pytest.raises(ValueError):
        bad()
