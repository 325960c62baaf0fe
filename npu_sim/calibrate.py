"""Calibration: the cost model against published end-to-end measurements.

`python -m npu_sim.calibrate` prints a markdown table, modelled vs published, for:

* vllm-ascend's nightly baseline (tests/e2e/nightly/single_node/models/test_qwen3_8b.py):
  Qwen3-8B on one A2 card, 128 tokens in / 100 out, 1,000 prompts at 20 req/s with at
  most 40 in flight -> 1,622 output tokens/s;
* vLLM's CI latency test: Llama-3.1-8B on one H100, batch 8, 32 tokens in / 128 out ->
  997.5 ms per batch.

Both are replayed by `simulate_serving`, a small discrete simulation of a vLLM-style
engine whose every step lasts `step_cost(...).seconds`: continuous batching, decodes
first, then chunked prefill of waiting requests within `max_num_batched_tokens` (vLLM
v1's default: 2,048 for `vllm serve` on devices under 70 GiB, 16,384 for the offline
`LLM` class on an H100), and a client that sends requests at their (Poisson, seeded)
arrival times with at most `max_concurrency` in flight, as `vllm bench serve` does.
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass

import numpy as np

from npu_sim.cost_model import step_cost
from npu_sim.device import DeviceSpec, get_device
from npu_sim.model_config import ModelConfig, get_cost_model_config

MAX_DEVIATION = 0.15  # the bar: modelled within 15% of published


@dataclass(frozen=True, slots=True)
class Workload:
    """Fixed-length requests arriving at `arrival_times` (seconds, sorted)."""

    arrival_times: tuple[float, ...]
    input_len: int
    output_len: int
    max_concurrency: int
    max_num_batched_tokens: int
    max_num_seqs: int = 256


@dataclass(frozen=True, slots=True)
class ServingResult:
    duration_seconds: float  # first arrival to last completion
    num_output_tokens: int
    num_steps: int
    mean_batch_size: float  # running requests per step

    @property
    def output_tokens_per_second(self) -> float:
        return self.num_output_tokens / self.duration_seconds


@dataclass(slots=True)
class _Seq:
    computed: int = 0  # prompt + output tokens whose KV exists
    generated: int = 0


def poisson_arrivals(num_requests: int, rate: float, seed: int = 0) -> tuple[float, ...]:
    """Arrival times of a Poisson process at `rate` req/s (vllm bench: gamma, shape 1)."""
    gaps = np.random.default_rng(seed).gamma(shape=1.0, scale=1.0 / rate, size=num_requests)
    gaps[0] = 0.0
    return tuple(float(t) for t in np.cumsum(gaps))


def simulate_serving(model: ModelConfig, device: DeviceSpec, work: Workload) -> ServingResult:
    """Replay `work` on a modelled engine; every step lasts its modelled cost."""
    pending = deque(work.arrival_times)  # not yet sent by the client
    waiting: deque[_Seq] = deque()  # sent, not yet admitted
    running: list[_Seq] = []
    in_flight = 0
    now = work.arrival_times[0]
    num_steps = 0
    batch_sum = 0
    total = len(work.arrival_times)
    done = 0
    while done < total:
        while pending and pending[0] <= now and in_flight < work.max_concurrency:
            pending.popleft()
            waiting.append(_Seq())
            in_flight += 1
        chunks: list[tuple[_Seq, int]] = []
        budget = work.max_num_batched_tokens
        for seq in running:
            if budget == 0:
                break
            n = min(work.input_len - seq.computed, budget) if seq.computed < work.input_len else 1
            chunks.append((seq, n))
            budget -= n
        while waiting and budget > 0 and len(running) < work.max_num_seqs:
            seq = waiting.popleft()
            running.append(seq)
            n = min(work.input_len, budget)
            chunks.append((seq, n))
            budget -= n
        if not chunks:  # idle until the next request can be sent
            now = max(now, pending[0])
            continue
        cost = step_cost(model, device, [(n, s.computed + n) for s, n in chunks])
        now += cost.seconds
        num_steps += 1
        batch_sum += len(running)
        for seq, n in chunks:
            seq.computed += n
            if seq.computed >= work.input_len:  # this step's logits gave a token
                seq.generated += 1
            if seq.generated >= work.output_len:
                running.remove(seq)
                in_flight -= 1
                done += 1
    return ServingResult(
        duration_seconds=now - work.arrival_times[0],
        num_output_tokens=total * work.output_len,
        num_steps=num_steps,
        mean_batch_size=batch_sum / max(num_steps, 1),
    )


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    model: str
    device: str
    workload: Workload
    metric: str  # "output tok/s" or "batch latency ms"
    published: float
    source: str

    def modelled(self) -> float:
        result = simulate_serving(
            get_cost_model_config(self.model), get_device(self.device), self.workload
        )
        if self.metric == "output tok/s":
            return result.output_tokens_per_second
        return result.duration_seconds * 1e3


TARGETS = (
    Target(
        name="vllm-ascend nightly, Qwen3-8B, 128 in / 100 out, 20 req/s, concurrency 40",
        model="qwen3-8b",
        device="ascend-910b",
        workload=Workload(
            arrival_times=poisson_arrivals(1000, 20.0),
            input_len=128,
            output_len=100,
            max_concurrency=40,
            max_num_batched_tokens=2048,
        ),
        metric="output tok/s",
        published=1622.0,
        source="vllm-ascend tests/e2e/nightly/single_node/models/test_qwen3_8b.py",
    ),
    Target(
        name="vLLM CI latency, Llama-3.1-8B, batch 8, 32 in / 128 out",
        model="llama-3.1-8b",
        device="h100-sxm",
        workload=Workload(
            arrival_times=(0.0,) * 8,
            input_len=32,
            output_len=128,
            max_concurrency=8,
            max_num_batched_tokens=16384,
        ),
        metric="batch latency ms",
        published=997.5,
        source="vLLM CI latency test (benchmark_latency, H100)",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit status 1 if a target is off by more than MAX_DEVIATION."""
    parser = argparse.ArgumentParser(prog="python -m npu_sim.calibrate", description=__doc__)
    parser.parse_args(argv)
    print("| target | device | metric | published | modelled | deviation |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for target in TARGETS:
        modelled = target.modelled()
        deviation = modelled / target.published - 1.0
        worst = max(worst, abs(deviation))
        print(
            f"| {target.name} | {target.device} | {target.metric} | {target.published:,.1f} "
            f"| {modelled:,.1f} | {deviation:+.1%} |"
        )
    return 0 if worst <= MAX_DEVIATION else 1


if __name__ == "__main__":
    raise SystemExit(main())
