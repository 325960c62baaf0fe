"""Trace reading and the synthesiser's prefix sharing."""

import json

import pytest

from load.trace import (
    BlockSynthesizer,
    TraceRecord,
    TraceScale,
    default_trace_path,
    read_trace,
    reuse_ceiling,
    sample_conversations,
)
from load.workloads import trace_replay

REAL_TRACE = str(default_trace_path())


def record(ts, n_in, n_out, ids):
    return TraceRecord(float(ts), n_in, n_out, tuple(ids))


def records_of(id_lists):
    return [record(i, 10, 1, ids) for i, ids in enumerate(id_lists)]


def test_same_ids_give_identical_prefixes_and_different_ids_differ():
    synth = BlockSynthesizer(block_tokens=512, salt="0")
    a = synth.prompt((1, 2, 3), 1400, "a")
    b = synth.prompt((1, 2, 4), 1500, "b")
    c = synth.prompt((9, 2, 3), 1400, "c")
    assert len(a) == 1400 and len(b) == 1500
    assert a[:1024] == b[:1024]
    assert a[1024:1100] != b[1024:1100]
    assert a[:512] != c[:512]
    assert a[512:1024] == c[512:1024]  # same id, same block, wherever it appears
    assert BlockSynthesizer(512, salt="0").prompt((1, 2, 3), 1400, "x") == a
    assert BlockSynthesizer(512, salt="1").prompt((1, 2, 3), 1400, "x") != a


def test_prompt_longer_than_its_blocks_is_filled_uniquely():
    synth = BlockSynthesizer(block_tokens=10, salt="0")
    a = synth.prompt((1,), 25, "r1")
    b = synth.prompt((1,), 25, "r2")
    assert len(a) == 25 and a[:10] == b[:10] and a[10:] != b[10:]


def test_trace_replay_scales_lengths_times_and_keeps_sharing():
    records = [
        record(1000, 1024, 100, [0, 1]),
        record(3000, 1300, 50, [0, 1, 2]),
        record(4000, 700, 10, [5, 6]),
    ]
    scale = TraceScale(length=0.25, output=0.5, time=0.5)
    assert scale.block_tokens == 128
    specs = trace_replay(records, scale, seed=0)
    assert [len(s.prompt) for s in specs] == [256, 325, 175]
    assert [s.input_tokens for s in specs] == [256, 325, 175]
    assert [s.max_tokens for s in specs] == [50, 25, 5]
    assert [s.arrival_s for s in specs] == [0.0, 1.0, 1.5]
    assert specs[0].prompt == specs[1].prompt[:256]
    assert specs[2].prompt[:128] != specs[0].prompt[:128]
    assert trace_replay(records, scale, seed=0) == specs
    assert [s.max_tokens for s in trace_replay(records, scale, 0, max_tokens=20)] == [20, 20, 5]


def test_same_timestamp_records_can_be_spaced_in_trace_order():
    records = [record(ts, 10, 1, [i]) for i, ts in enumerate([0, 0, 0, 2000, 2000, 5000])]
    scale = TraceScale(time=0.5)
    assert [s.arrival_s for s in trace_replay(records, scale, 0)] == [0, 0, 0, 1, 1, 2.5]
    spaced = trace_replay(records, scale, 0, tie_spacing_s=0.005)
    assert [s.arrival_s for s in spaced] == pytest.approx([0, 0.005, 0.01, 1, 1.005, 2.5])
    with pytest.raises(ValueError):
        trace_replay(records, scale, 0, tie_spacing_s=-1)
    # A group spaced up to the next timestamp would no longer be in trace order.
    fast = TraceScale(time=0.01)  # the groups are 20 and 30 ms apart
    assert trace_replay(records, fast, 0, tie_spacing_s=0.009)[3].arrival_s == pytest.approx(0.02)
    with pytest.raises(ValueError, match="tie spacing"):
        trace_replay(records, fast, 0, tie_spacing_s=0.01)


def test_unscaled_lengths_are_honoured():
    specs = trace_replay([record(0, 1000, 7, [3, 4])], TraceScale(), seed=0)
    assert len(specs[0].prompt) == 1000 and specs[0].max_tokens == 7


def test_bad_scale_is_rejected():
    with pytest.raises(ValueError):
        TraceScale(length=0)


def test_read_trace_limit_offset_and_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [
        {"timestamp": i, "input_length": 10, "output_length": 1, "hash_ids": [i]} for i in range(5)
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert [r.hash_ids for r in read_trace(path, limit=2, offset=1)] == [(1,), (2,)]
    assert len(read_trace(path)) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_trace(bad)


def test_real_trace_head_shares_prefixes():
    records = read_trace(REAL_TRACE, limit=50)
    specs = trace_replay(records, TraceScale(length=0.05), seed=0)
    # the first requests of the conversation trace all start with hash id 0
    assert records[0].hash_ids[0] == records[1].hash_ids[0] == 0
    assert specs[0].prompt[:25] == specs[1].prompt[:25]
    assert all(
        len(s.prompt) == round(r.input_length * 0.05) for s, r in zip(specs, records, strict=True)
    )


def test_trace_paths_absolute_relative_shipped_and_missing(tmp_path, monkeypatch):
    from load.trace import TRACE_NAME, resolve_trace_path

    trace = tmp_path / "sub" / "t.jsonl"
    trace.parent.mkdir()
    trace.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n')
    assert resolve_trace_path(str(trace)) == trace
    monkeypatch.chdir(tmp_path)
    assert resolve_trace_path("sub/t.jsonl") == trace
    assert resolve_trace_path(None) == default_trace_path()
    assert resolve_trace_path(TRACE_NAME) == default_trace_path()  # a shipped name
    with pytest.raises(FileNotFoundError) as exc:
        resolve_trace_path("../nowhere/x.jsonl")
    assert str((tmp_path / "../nowhere/x.jsonl").resolve()) in str(exc.value)
    assert "kvcache-ai/Mooncake" in str(exc.value)
    with pytest.raises(IsADirectoryError):
        resolve_trace_path("sub")


def test_policy_command_finds_a_relative_trace_and_names_a_missing_one(
    tmp_path, monkeypatch, capsys
):
    from load.cli import main

    (tmp_path / "t.jsonl").write_text(
        "".join(
            f'{{"timestamp": {i}, "input_length": 5, "output_length": 1, "hash_ids": [1, {i}]}}\n'
            for i in range(4)
        )
    )
    monkeypatch.chdir(tmp_path)
    assert main(["policy", "--trace", "t.jsonl", "--capacity-blocks", "2"]) == 0
    assert main(["policy", "--trace", "gone.jsonl", "--capacity-blocks", "2"]) == 2
    assert str(tmp_path / "gone.jsonl") in capsys.readouterr().out.replace("\n", "")


def test_sample_conversations_keeps_every_kth_conversation_with_all_its_turns():
    records = [
        record(0, 10, 1, [0, 1]),  # conversation 0
        record(1, 10, 1, [0, 2]),  # conversation 1
        record(2, 10, 1, [0, 3]),  # conversation 2
        record(3, 10, 1, [0, 1, 4]),  # conversation 0, turn 2
        record(4, 10, 1, [0, 2, 5]),  # conversation 1, turn 2
        record(5, 10, 1, [7]),  # conversation 3 (one block)
        record(6, 10, 1, [0, 3, 6, 8]),  # conversation 2, turn 2
    ]
    assert sample_conversations(records, 1) == records
    assert [r.timestamp_ms for r in sample_conversations(records, 2)] == [0, 2, 3, 6]
    assert [r.timestamp_ms for r in sample_conversations(records, 3)] == [0, 3, 5]
    with pytest.raises(ValueError):
        sample_conversations(records, 0)


def test_sampled_conversations_of_the_real_trace_reuse_more_than_a_contiguous_slice():
    contiguous = read_trace(REAL_TRACE, limit=300)
    sampled = sample_conversations(read_trace(REAL_TRACE), 30)[:300]
    assert reuse_ceiling(sampled) > 3 * reuse_ceiling(contiguous)
    assert reuse_ceiling(records_of([[0, 1], [0, 1, 2], [0, 3]])) == 3 / 7
