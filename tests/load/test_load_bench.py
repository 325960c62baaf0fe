"""Benchmark scripts: option parsing, and short runs against live servers."""

import argparse
import json

import pytest

from cache.bench_tiers import INFO_RATIOS, RATIOS
from load.bench import ttft
from load.bench._common import parse_floats, parse_sizes
from load.bench.capacity import TierConfig
from load.cli import main


def test_parse_sizes_and_floats():
    assert parse_sizes("1k, 2k,512") == [1024, 2048, 512]
    assert parse_sizes("0.5k") == [512]
    assert parse_floats("0.1,2") == [0.1, 2.0]
    for bad in ("", "x", "0", "-1k"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_sizes(bad)


def test_tier_config_flags_disable_missing_tiers():
    assert TierConfig("hbm", 0.02, 0.5, 1.0).flags() == [
        "--hbm-gb",
        "0.02",
        "--ddr-gb",
        "0",
        "--flash-gb",
        "0",
    ]
    assert TierConfig("hbm+ddr", 0.02, 0.5, 1.0).flags()[-2:] == ["--flash-gb", "0"]
    assert TierConfig("hbm+ddr+flash", 0.02, 0.5, 1.0).label == "hbm=0.02 ddr=0.5 flash=1"


def test_bench_tiers_short(tmp_path):
    out = tmp_path / "tiers.json"
    assert (
        main(
            [
                "bench",
                "tiers",
                "--blocks",
                "64",
                "--batch",
                "16",
                "--rounds",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["gb_per_s"]) == {
        "ours_ddr",
        "job_ddr",
        "job_ddr_unchecked",
        "raw_redis_mget_pieces",
        "raw_redis_mget",
        "raw_redis_pipelined_get",
        "ours_flash",
        "job_flash",
        "job_flash_unchecked",
        "raw_lmdb_get",
        "memcpy",
    }
    assert all(0 < v["min"] <= v["median"] <= v["max"] for v in result["gb_per_s"].values())
    # every ratio is either a figure at most 1.0 or flagged as a measurement error
    assert set(result["ratios"]) | set(result["measurement_errors"]) == set(RATIOS)
    assert all(r["max"] <= 1.0 for r in result["ratios"].values())
    assert result["blocks"] == 64 and result["batch_blocks"] == 16
    assert set(result["info_ratios"]) == set(INFO_RATIOS)


def test_bench_ttft_against_a_running_server(tierkv, tmp_path):
    out = tmp_path / "ttft.json"
    code = ttft.main(
        ["--base-url", tierkv.base_url, "--lengths", "96,160", "--repeats", "1", "--out", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["lengths"] == [96, 160]
    for cond in ("cold", "hbm", "ddr", "flash"):
        assert all(v > 0 for v in result["ttft_ms"][cond])
    # every hit condition reused all full blocks but the last one
    for cond in ("hbm", "ddr", "flash"):
        assert all(
            c >= n - 32 for c, n in zip(result["cached_tokens"][cond], [96, 160], strict=True)
        )
    assert result["cached_tokens"]["cold"] == [0, 0]
    assert result["moved_blocks"]["hbm"] > 0 and result["moved_blocks"]["ddr"] > 0


def test_bench_overhead_short(tmp_path):
    out = tmp_path / "overhead.json"
    code = main(
        [
            "bench",
            "overhead",
            "--max-tokens",
            "8",
            "--concurrency",
            "1",
            "--requests-per-stream",
            "1",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"bare-sse", "tierkv"}
    assert all(
        r["num_errors"] == 0 and r["output_tokens_per_s"] > 0
        for rows in results.values()
        for r in rows
    )


@pytest.mark.parametrize("length", [1000, 1023, 1024, 3000])
def test_fresh_tail_makes_the_last_full_block_new_for_every_tag(length: int) -> None:
    from load.bench.ttft import cached_before_tail, fresh_tail
    from load.synth import synth_text
    from npu_sim.tokenizers.byte import ByteTokenizer

    tokenizer = ByteTokenizer()
    prompt = synth_text("tail", length)
    bos = tokenizer.bos_id
    assert bos is not None

    def encode(text: str) -> list[int]:  # as the server does for a completion: BOS first
        return [bos, *tokenizer.encode(text)]

    def same_full_blocks(a: str, b: str) -> int:
        x, y = encode(a), encode(b)
        n = 0
        while (n + 1) * 16 <= min(len(x), len(y)) and x[n * 16 : n * 16 + 16] == y[
            n * 16 : n * 16 + 16
        ]:
            n += 1
        return n

    full_blocks = len(encode(prompt)) // 16
    assert cached_before_tail(prompt) == (full_blocks - 1) * 16
    tags = ["d0000001", "d0000002", "f0000001", "h0000009"]
    for i, a in enumerate(tags):
        assert len(fresh_tail(prompt, a)) == len(prompt)
        for b in tags[i + 1 :]:
            # a hit with tag b after a with tag a reuses all but the last full block
            assert same_full_blocks(fresh_tail(prompt, a), fresh_tail(prompt, b)) == full_blocks - 1
    if length == 1024:  # what the first version did: the last full block stayed cached
        assert same_full_blocks(prompt[:-8] + "d0000001", prompt[:-8] + "d0000002") == full_blocks
