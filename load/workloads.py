"""Workload generators: each turns options and a seed into a deterministic request list.

Requests are listed in dispatch order. A multiturn request names the request whose
answer must come first (``previous``); the runner adds that answer to the chat history.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from load.synth import synth_text
from load.trace import BlockSynthesizer, TraceRecord, TraceScale

WORKLOADS = ("multiturn", "shared-prefix", "trace", "random")


class Api(StrEnum):
    CHAT = "chat"  # /v1/chat/completions
    COMPLETIONS = "completions"  # /v1/completions


@dataclass(slots=True, frozen=True)
class RequestSpec:
    """One request to send.

    ``prompt`` is the whole prompt for completions, or the new user message for chat
    (whose history is the system prompt plus earlier turns of the same ``session``).
    ``input_tokens`` is the intended prompt length (exact for our byte tokenizer).
    """

    index: int
    api: Api
    prompt: str
    max_tokens: int
    input_tokens: int
    session: int = 0
    system: str = ""
    previous: int | None = None
    arrival_s: float | None = None


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _cap(requests: list[RequestSpec], num_requests: int | None) -> list[RequestSpec]:
    if num_requests is None:
        return requests
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    return requests[:num_requests]


def multiturn(
    num_users: int,
    num_turns: int,
    system_len: int,
    user_len: int,
    max_tokens: int,
    seed: int,
    num_requests: int | None = None,
) -> list[RequestSpec]:
    """``num_users`` chats of ``num_turns`` turns sharing one system prompt.

    Turns are interleaved across users (turn 0 of every user, then turn 1, ...), so
    other users' requests come between two turns of one conversation.
    """
    _check_positive(
        num_users=num_users, num_turns=num_turns, user_len=user_len, max_tokens=max_tokens
    )
    system = synth_text(f"{seed}:system", system_len)
    requests: list[RequestSpec] = []
    last_of_user: dict[int, int] = {}
    for turn in range(num_turns):
        for user in range(num_users):
            index = len(requests)
            requests.append(
                RequestSpec(
                    index=index,
                    api=Api.CHAT,
                    prompt=synth_text(f"{seed}:user:{user}:{turn}", user_len),
                    max_tokens=max_tokens,
                    input_tokens=system_len + (turn + 1) * user_len + turn * max_tokens,
                    session=user,
                    system=system,
                    previous=last_of_user.get(user),
                )
            )
            last_of_user[user] = index
    return _cap(requests, num_requests)


def shared_prefix(
    num_docs: int,
    questions_per_doc: int,
    doc_len: int,
    question_len: int,
    max_tokens: int,
    seed: int,
    num_requests: int | None = None,
) -> list[RequestSpec]:
    """Long-document QA: each prompt is one of ``num_docs`` documents followed by one of
    its questions; the order is shuffled by the seed."""
    _check_positive(
        num_docs=num_docs,
        questions_per_doc=questions_per_doc,
        doc_len=doc_len,
        question_len=question_len,
        max_tokens=max_tokens,
    )
    pairs = [(d, q) for d in range(num_docs) for q in range(questions_per_doc)]
    random.Random(seed).shuffle(pairs)
    docs = [synth_text(f"{seed}:doc:{d}", doc_len) for d in range(num_docs)]
    requests = [
        RequestSpec(
            index=i,
            api=Api.COMPLETIONS,
            prompt=docs[d] + synth_text(f"{seed}:question:{d}:{q}", question_len),
            max_tokens=max_tokens,
            input_tokens=doc_len + question_len,
            session=d,
        )
        for i, (d, q) in enumerate(pairs)
    ]
    return _cap(requests, num_requests)


def random_prompts(
    num_requests: int, input_len: int, max_tokens: int, seed: int
) -> list[RequestSpec]:
    """Independent prompts with no shared prefix: the no-reuse baseline."""
    _check_positive(num_requests=num_requests, input_len=input_len, max_tokens=max_tokens)
    return [
        RequestSpec(
            index=i,
            api=Api.COMPLETIONS,
            prompt=synth_text(f"{seed}:random:{i}", input_len),
            max_tokens=max_tokens,
            input_tokens=input_len,
            session=i,
        )
        for i in range(num_requests)
    ]


def trace_replay(
    records: list[TraceRecord],
    scale: TraceScale,
    seed: int,
    max_tokens: int | None = None,
    tie_spacing_s: float = 0.0,
) -> list[RequestSpec]:
    """Replay trace records as completions; arrivals are the trace's own timestamps,
    relative to the first record and multiplied by ``scale.time``. ``max_tokens``, if
    given, caps each record's (scaled) output length.

    ``tie_spacing_s``: records that share a timestamp (Mooncake's are whole seconds, so
    3-16 of them do) arrive in trace order this far apart, the k-th of a group k times
    it after the group's time; 0 sends them at one instant, and a live server then takes
    them in the order their connections come up, which differs from run to run.
    ValueError if the spacing would carry a group up to the next group's time."""
    if not records:
        raise ValueError("the trace selection is empty")
    if tie_spacing_s < 0:
        raise ValueError(f"tie spacing must be >= 0, got {tie_spacing_s}")
    synth = BlockSynthesizer(scale.block_tokens, salt=str(seed))
    t0 = records[0].timestamp_ms
    requests: list[RequestSpec] = []
    rank = 0  # position within the current group of same-timestamp records
    for i, record in enumerate(records):
        rank = rank + 1 if i and record.timestamp_ms == records[i - 1].timestamp_ms else 0
        num_tokens = scale.input_tokens(record)
        output = scale.output_tokens(record)
        if max_tokens is not None:
            output = min(output, max_tokens)
        arrival = max(0.0, (record.timestamp_ms - t0) / 1000.0 * scale.time)
        arrival += rank * tie_spacing_s
        if tie_spacing_s and i and record.timestamp_ms > records[i - 1].timestamp_ms:
            previous = requests[-1].arrival_s
            if previous is not None and arrival <= previous:
                raise ValueError(
                    f"tie spacing {tie_spacing_s * 1000:g} ms carries record {i - 1} to "
                    f"{previous:.3f} s, not before the next timestamp ({arrival:.3f} s)"
                )
        requests.append(
            RequestSpec(
                index=i,
                api=Api.COMPLETIONS,
                prompt=synth.prompt(record.hash_ids, num_tokens, filler_key=str(i)),
                max_tokens=output,
                input_tokens=num_tokens,
                session=i,
                arrival_s=arrival,
            )
        )
    return requests
