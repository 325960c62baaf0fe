"""Mooncake-format request traces and their synthetic prompts.

A trace line is ``{"timestamp": ms, "input_length": n, "output_length": m,
"hash_ids": [...]}`` with one hash id per 512-token block of the prompt. Each distinct
id becomes one fixed synthetic block, so requests sharing leading ids get identical
prompt prefixes, which is what a prefix cache can exploit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from load.synth import synth_text

TRACE_BLOCK_TOKENS = 512
TRACE_NAME = "mooncake_conversation_trace.jsonl"


def default_trace_path() -> Path:
    """The Mooncake conversation trace in the ``shared/traces`` folder that sits beside
    the repository (as in CI), else at ``/work/shared/traces``."""
    candidates = [
        Path(__file__).resolve().parents[2] / "shared" / "traces" / TRACE_NAME,
        Path("/work/shared/traces") / TRACE_NAME,
    ]
    return next((p for p in candidates if p.exists()), candidates[0])


TRACE_SOURCE = (
    "public Mooncake traces: github.com/kvcache-ai/Mooncake, folder FAST25-release/traces "
    "(Apache-2.0); the conversation trace ships in this project's shared/traces/"
)


def resolve_trace_path(path: str | Path | None) -> Path:
    """The absolute path of a trace given as an absolute path, a path relative to the
    working directory (``~`` expanded), a bare file name of the shipped traces folder,
    or None for the shipped conversation trace.

    Raises FileNotFoundError naming the absolute path that was tried (and where public
    traces come from) when there is no such file, IsADirectoryError for a directory.
    """
    if path is None:
        shipped = default_trace_path()
        if not shipped.is_file():
            raise FileNotFoundError(
                f"no trace given and the shipped trace {shipped} is "
                f"missing; pass --trace FILE ({TRACE_SOURCE})"
            )
        return shipped
    given = Path(path).expanduser()
    candidate = given.resolve()
    if candidate.is_dir():
        raise IsADirectoryError(f"trace path {candidate} is a directory, not a JSONL file")
    if candidate.is_file():
        return candidate
    shipped = default_trace_path().parent / given.name
    if given.name == str(path) and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"trace file not found: {candidate} (given as {str(path)!r}); {TRACE_SOURCE}"
    )


@dataclass(slots=True, frozen=True)
class TraceRecord:
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class TraceScale:
    """How to shrink a trace for a small machine.

    ``length`` multiplies prompt lengths *and* the synthetic block length (so the
    sharing structure is kept), ``output`` multiplies output lengths and ``time``
    multiplies inter-arrival times (0.5 replays twice as fast).
    """

    length: float = 1.0
    output: float = 1.0
    time: float = 1.0

    def __post_init__(self) -> None:
        for name in ("length", "output", "time"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"trace {name} scale must be > 0, got {value}")

    @property
    def block_tokens(self) -> int:
        return max(1, round(TRACE_BLOCK_TOKENS * self.length))

    def input_tokens(self, record: TraceRecord) -> int:
        return max(1, round(record.input_length * self.length))

    def output_tokens(self, record: TraceRecord) -> int:
        return max(1, round(record.output_length * self.output))


def read_trace(path: str | Path, limit: int | None = None, offset: int = 0) -> list[TraceRecord]:
    """Read up to ``limit`` records after skipping ``offset``; raise ValueError naming the
    line on malformed input and FileNotFoundError if the file is missing."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError("offset and limit must be >= 0")
    records: list[TraceRecord] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if offset:
                offset -= 1
                continue
            if limit is not None and len(records) >= limit:
                break
            records.append(_parse_line(line, f"{path}:{lineno}"))
    return records


def sample_conversations(records: list[TraceRecord], every: int) -> list[TraceRecord]:
    """Every ``every``-th conversation of ``records``, all its turns, in trace order.

    A conversation is the records sharing their first two hash ids (in Mooncake's
    conversation trace every prompt starts with the same system-prompt block, id 0, and a
    later turn repeats its conversation's earlier blocks); conversations are numbered by
    first appearance and those numbered 0, ``every``, 2 x ``every``, ... are kept. A
    contiguous slice of that trace holds few repeated turns (a conversation's next turn
    comes a median 2 minutes later, while 200 records span about 80 s); sampling
    conversations over a longer span keeps their multi-turn reuse in fewer requests.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    numbers: dict[tuple[int, ...], int] = {}
    kept = []
    for record in records:
        number = numbers.setdefault(record.hash_ids[:2], len(numbers))
        if number % every == 0:
            kept.append(record)
    return kept


def reuse_ceiling(records: list[TraceRecord]) -> float:
    """The prefix hit rate of one unbounded cache over ``records`` in trace order, in
    trace blocks: what no routing of them over replicas can beat."""
    seen: set[int] = set()
    hits = total = 0
    for record in records:
        for h in record.hash_ids:
            if h not in seen:
                break
            hits += 1
        seen.update(record.hash_ids)
        total += len(record.hash_ids)
    return hits / total if total else 0.0


def _parse_line(line: str, where: str) -> TraceRecord:
    try:
        obj = json.loads(line)
        record = TraceRecord(
            timestamp_ms=float(obj["timestamp"]),
            input_length=int(obj["input_length"]),
            output_length=int(obj["output_length"]),
            hash_ids=tuple(int(h) for h in obj["hash_ids"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: not a Mooncake trace record ({exc!r})") from exc
    if record.input_length < 1 or record.output_length < 0:
        raise ValueError(f"{where}: lengths must be positive")
    return record


class BlockSynthesizer:
    """Maps trace hash ids to fixed synthetic text blocks (memoised per instance).

    ``salt`` (the run's seed) changes every block, so a second run with another seed
    cannot hit blocks a persistent tier kept from the first.
    """

    def __init__(self, block_tokens: int = TRACE_BLOCK_TOKENS, salt: str = "0") -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be >= 1")
        self.block_tokens = block_tokens
        self._salt = salt
        self._blocks: dict[int, str] = {}

    def block(self, hash_id: int) -> str:
        text = self._blocks.get(hash_id)
        if text is None:
            text = synth_text(f"{self._salt}:block:{hash_id}", self.block_tokens)
            self._blocks[hash_id] = text
        return text

    def prompt(self, hash_ids: tuple[int, ...], num_tokens: int, filler_key: str) -> str:
        """Concatenate the blocks of ``hash_ids`` cut to ``num_tokens`` characters.

        If the blocks are too short (a trace whose input_length exceeds its blocks),
        the rest is filled with text unique to ``filler_key``, which shares nothing.
        """
        needed = min(len(hash_ids), math.ceil(num_tokens / self.block_tokens))
        text = "".join(self.block(h) for h in hash_ids[:needed])
        if len(text) < num_tokens:
            text += synth_text(f"{self._salt}:filler:{filler_key}", num_tokens - len(text))
        return text[:num_tokens]
