"""vLLM's Prometheus metrics, in vLLM's names and meanings (vllm/v1/metrics/loggers.py).

Served beside the `tierkv:` series (which keep their names; the latency histograms of
both use vLLM's buckets) so dashboards, autoscalers
and the Gateway API Inference Extension's endpoint picker read tierkv unmodified. Every
series carries vLLM's `model_name` and `engine` labels. Meanings, as in vLLM v1:

* `num_requests_running` / `num_requests_waiting`: the running batch / every request
  not in it (queued, preempted, or waiting for its KV to reload from DDR/flash: vLLM
  counts requests waiting for remote KV as waiting).
* `kv_cache_usage_perc`: HBM blocks held by live requests / HBM pool blocks (0-1);
  cached blocks nobody holds are free to evict and do not count.
* `cache_config_info{block_size,num_gpu_blocks}`: always 1.
* `prompt_tokens_total`: every prompt token (cached or computed) of every request that
  got its first token; `generation_tokens_total`: every output token.
* `prefix_cache_queries_total` / `prefix_cache_hits_total`: prompt tokens looked up /
  served from cache at admission (hits from any tier: what `cached_tokens` reports;
  `tierkv:prefix_cache_hits_total{tier}` splits them).
* `time_to_first_token_seconds`, `inter_token_latency_seconds` and its older name
  `time_per_output_token_seconds` (each gap between two tokens of a request),
  `request_time_per_output_token_seconds` (a finished request's decode time / (output
  tokens - 1)), `e2e_request_latency_seconds` and the phase histograms
  `request_queue_time_seconds`, `request_prefill_time_seconds`,
  `request_decode_time_seconds`, `request_inference_time_seconds`, and
  `request_prompt_tokens` / `request_generation_tokens`: observed once per finished
  request, like `request_success_total{finished_reason}` (stop, length, abort).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache.stats import CacheStats, Tier
from server.engine.core import EngineStats
from server.engine.request import FinishedRequest, FinishReason, RequestOutput
from server.metrics_common import counter as one_counter
from server.metrics_common import gauge as one_gauge
from server.metrics_common import histogram as new_histogram

# vLLM's buckets (loggers.py).
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

LABELS = ["model_name", "engine"]
StatsSource = Callable[[], tuple[EngineStats, CacheStats]]


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (vLLM's token-count buckets)."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


class VllmMetrics:
    """The `vllm:` series of one app, registered in its registry.

    `observe_output` / `observe_finished` run on the event loop (the engine's outputs
    and finishes, each delivered once); `observe_token_gap` / `observe_first_token` from
    the request streams; gauges and cache counters are read from the engine's latest
    published stats at scrape time.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        model_name: str,
        max_model_len: int,
        block_size: int,
        num_gpu_blocks: int,
        source: StatsSource,
    ) -> None:
        self._labels = (model_name, "0")
        token_buckets = build_1_2_5_buckets(max_model_len)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return new_histogram(registry, f"vllm:{name}", doc, buckets, LABELS)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"vllm:{name}", doc, LABELS, registry=registry)

        self.ttft = histogram(
            "time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS
        ).labels(*self._labels)
        self.itl = histogram(
            "inter_token_latency_seconds", "Time between two output tokens.", ITL_BUCKETS
        ).labels(*self._labels)
        self.tpot = histogram(
            "time_per_output_token_seconds",
            "Time between two output tokens (vLLM's older name of ITL).",
            ITL_BUCKETS,
        ).labels(*self._labels)
        self.request_tpot = histogram(
            "request_time_per_output_token_seconds",
            "Per request: decode time / (output tokens - 1).",
            ITL_BUCKETS,
        ).labels(*self._labels)
        phases = {
            "e2e_request_latency_seconds": "Arrival to finish.",
            "request_queue_time_seconds": "Time spent waiting before first admission.",
            "request_prefill_time_seconds": "First admission to first token.",
            "request_decode_time_seconds": "First token to last token.",
            "request_inference_time_seconds": "First admission to last token.",
        }
        self.phases = {
            name: histogram(name, doc, REQUEST_LATENCY_BUCKETS).labels(*self._labels)
            for name, doc in phases.items()
        }
        self.request_prompt_tokens = histogram(
            "request_prompt_tokens", "Prompt tokens of each finished request.", token_buckets
        ).labels(*self._labels)
        self.request_generation_tokens = histogram(
            "request_generation_tokens", "Output tokens of each finished request.", token_buckets
        ).labels(*self._labels)
        self.prompt_tokens = counter(
            "prompt_tokens", "Prompt tokens (cached or computed) of requests that started."
        ).labels(*self._labels)
        self.generation_tokens = counter("generation_tokens", "Output tokens.").labels(
            *self._labels
        )
        success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            [*LABELS, "finished_reason"],
            registry=registry,
        )
        self.request_success = {r: success.labels(*self._labels, r.value) for r in FinishReason}
        registry.register(_Collector(source, self._labels, block_size, num_gpu_blocks))

    def observe_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_token_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)
        self.tpot.observe(seconds)

    def observe_output(self, out: RequestOutput) -> None:
        """One engine output: count its tokens (and the prompt, with the first token)."""
        if not out.new_token_ids:
            return
        self.generation_tokens.inc(len(out.new_token_ids))
        if out.num_output_tokens == len(out.new_token_ids):
            self.prompt_tokens.inc(out.num_prompt_tokens)

    def observe_finished(self, done: FinishedRequest) -> None:
        self.request_success[done.reason].inc()
        self.phases["e2e_request_latency_seconds"].observe(done.e2e_seconds)
        self.phases["request_queue_time_seconds"].observe(done.queue_seconds)
        self.phases["request_prefill_time_seconds"].observe(done.prefill_seconds)
        self.phases["request_decode_time_seconds"].observe(done.decode_seconds)
        self.phases["request_inference_time_seconds"].observe(done.inference_seconds)
        self.request_prompt_tokens.observe(done.num_prompt_tokens)
        self.request_generation_tokens.observe(done.num_output_tokens)
        if done.num_output_tokens > 1:
            self.request_tpot.observe(done.decode_seconds / (done.num_output_tokens - 1))


class _Collector(Collector):
    def __init__(
        self,
        source: StatsSource,
        labels: tuple[str, str],
        block_size: int,
        num_gpu_blocks: int,
    ) -> None:
        self._source = source
        self._labels = list(labels)
        self._label_map = dict(zip(LABELS, labels, strict=True))
        self._block_size = block_size
        self._num_gpu_blocks = num_gpu_blocks

    def collect(self) -> Iterator[Metric]:
        engine, cache = self._source()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return one_gauge(f"vllm:{name}", doc, value, self._label_map)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return one_counter(f"vllm:{name}", doc, value, self._label_map)

        yield gauge("num_requests_running", "Requests in the running batch.", engine.num_running)
        yield gauge(
            "num_requests_waiting",
            "Requests waiting (queued, preempted or reloading KV).",
            engine.num_waiting + engine.num_loading,
        )
        hbm = cache.tiers[Tier.HBM]
        yield gauge(
            "kv_cache_usage_perc",
            "KV-cache usage: HBM blocks held by requests / pool blocks. 1 means 100 percent.",
            hbm.active_blocks / self._num_gpu_blocks if self._num_gpu_blocks else 0.0,
        )
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the cache config.",
            labels=[*LABELS, "block_size", "num_gpu_blocks"],
        )
        info.add_metric([*self._labels, str(self._block_size), str(self._num_gpu_blocks)], 1.0)
        yield info
        yield counter(
            "prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            cache.query_tokens,
        )
        yield counter(
            "prefix_cache_hits",
            "Prefix cache hits (any tier), in terms of number of cached tokens.",
            sum(cache.hit_tokens.values()),
        )
        yield counter(
            "num_preemptions", "Cumulative number of preemptions.", engine.num_preemptions
        )
