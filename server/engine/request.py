"""The request record the scheduler, engine core and async front end share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from cache.block_hash import BlockHash, hash_full_blocks
from npu_sim.sampling import Sampler
from npu_sim.tokenizers import ByteTokenizer
from server.detokenizer import IncrementalDetokenizer


class RequestStatus(StrEnum):
    WAITING = "waiting"  # queued (new, or preempted and waiting to resume)
    LOADING_KV = "loading_kv"  # its cached prefix is being reloaded from DDR/flash
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class TailLoad:
    """Blocks of a running request's prefix still loading while it computes the blocks
    before them (a Cake-style split, see `LoadPlanner.split`)."""

    first_block: int  # the request computes up to here, then waits for the load
    num_blocks: int
    num_loaded: int | None = None  # how many arrived intact, once the load landed
    counts_as_cached: bool = True  # the admission's first: `num_cached_tokens` grows


class FinishReason(StrEnum):
    STOP = "stop"  # a stop token id or a stop string
    LENGTH = "length"  # max_tokens or max_model_len
    ABORT = "abort"  # the client went away (its stream was closed before the end)


@dataclass(slots=True, eq=False)  # identity: the scheduler looks requests up in lists
class EngineRequest:
    """One generation request as the engine thread sees it.

    The front end builds it (the fields up to `stop`) and hands it over; from then on
    only the scheduler writes it, on the engine thread. `block_ids` cover positions
    [0, num_computed_tokens) plus any slots reserved for the next chunk; `block_hashes`
    are the hashes of every *full* block of all tokens so far.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampler: Sampler
    max_tokens: int
    root_hash: BlockHash
    stop_token_ids: frozenset[int] = frozenset()
    stop: tuple[str, ...] = ()  # stop strings; the text before the first one is returned
    token_bytes: Callable[[int], bytes] = ByteTokenizer().token_bytes  # for detokenizing
    min_tokens: int = 0  # no stop (token id or string) ends the request before this many
    include_stop_str_in_output: bool = False  # the stop string / stop token's text is kept
    priority: int = 0  # lower is scheduled first and preempted last (vLLM's priority)
    arrival_time: float = field(default_factory=time.perf_counter)
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[BlockHash] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_committed_blocks: int = 0
    num_cached_tokens: int | None = None  # prompt tokens served from cache on admission
    # While waiting: blocks a prefetch holds (its HBM hits, then its slots), and whether
    # its load is still in flight (see server.engine.prefetch).
    prefetch_block_ids: list[int] = field(default_factory=list)
    prefetch_num_hbm_blocks: int = 0
    is_prefetching: bool = False
    prefetch_tried: bool = False  # one prefetch look per wait (reset when preempted)
    tail_load: TailLoad | None = None  # running, with part of its prefix still loading
    finish_reason: FinishReason | None = None
    # perf_counter stamps for request metrics (vLLM's queued/scheduled/first/last token).
    scheduled_time: float | None = None  # first admission (queue time ends)
    first_token_time: float | None = None
    last_token_time: float | None = None
    detokenizer: IncrementalDetokenizer = field(init=False)

    def __post_init__(self) -> None:
        self.detokenizer = IncrementalDetokenizer(
            self.token_bytes, self.stop, self.include_stop_str_in_output
        )

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_ids(self, start: int, stop: int) -> list[int]:
        """All tokens (prompt then output) in [start, stop)."""
        n_prompt = len(self.prompt_token_ids)
        if stop <= n_prompt:
            return self.prompt_token_ids[start:stop]
        head = self.prompt_token_ids[start:] if start < n_prompt else []
        return head + self.output_token_ids[max(0, start - n_prompt) : stop - n_prompt]

    def update_block_hashes(self, block_size: int) -> None:
        """Extend `block_hashes` to every full block of the tokens so far."""
        if (self.num_tokens // block_size) > len(self.block_hashes):
            self.block_hashes = hash_full_blocks(
                self.token_ids(0, self.num_tokens), block_size, self.root_hash, self.block_hashes
            )


@dataclass(slots=True)
class RequestOutput:
    """What one engine step produced for one request (sent to the front end)."""

    request_id: str
    new_token_ids: list[int]
    new_text: str  # safe to show: never (part of) a stop string that may follow
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    finish_reason: FinishReason | None = None

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """One finish, recorded once where it was decided (for request metrics)."""

    request_id: str
    reason: FinishReason
    e2e_seconds: float  # arrival (request built by the front end) to finish
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    # vLLM's phases: queue = arrival -> first admission, prefill = admission -> first
    # token, decode = first -> last token, inference = admission -> last token (0 for a
    # phase the request never reached).
    queue_seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    inference_seconds: float = 0.0
