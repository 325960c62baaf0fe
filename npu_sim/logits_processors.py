"""What a request does to its logits before sampling (vLLM semantics).

`LogitsParams` holds the per-request knobs; `apply_logits_processors` applies them to
one row of logits given the request's prompt and the tokens it generated so far, kept
in a `TokenHistory` (tallies over the vocabulary updated one token at a time, so a
decode step does not rebuild them from the whole prompt). The
order is vLLM v1's: bad words, min_tokens (stop ids banned while too few tokens were
generated), logit_bias, then the penalties (repetition over prompt and output, frequency
and presence over the output). Truncation (top_k, min_p, top_p) and temperature are the
sampler's; greedy picks the argmax of the processed row.

Pure functions of their inputs: a request's processed logits never depend on the batch.
A `TokenHistory` belongs to one request (not thread-safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class LogitsParams:
    """Per-request logits processing; the defaults change nothing.

    min_tokens: `stop_token_ids` are banned until this many tokens were generated.
    logit_bias: token id -> value added to its logit (vLLM clamps to [-100, 100]).
    presence_penalty / frequency_penalty: in [-2, 2]; subtracted once per distinct output
        token / once per occurrence in the output.
    repetition_penalty: > 0; logits of tokens seen in prompt or output are divided by it
        when positive and multiplied by it when negative (1 = off).
    bad_words_ids: token sequences never to generate: the last token of a sequence is
        banned whenever the output ends with the rest of it.
    """

    min_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    logit_bias: tuple[tuple[int, float], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    bad_words_ids: tuple[tuple[int, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        if any(not ids for ids in self.bad_words_ids):
            raise ValueError("bad_words_ids must not contain an empty sequence")

    @property
    def is_noop(self) -> bool:
        """True when processing would return the logits unchanged."""
        return (
            self.min_tokens == 0
            and not self.logit_bias
            and not self.bad_words_ids
            and self.presence_penalty == 0.0
            and self.frequency_penalty == 0.0
            and self.repetition_penalty == 1.0
        )


class TokenHistory:
    """A request's output tokens, plus which ids its prompt or output holds and how often
    each id occurs in its output, over a `vocab_size` vocabulary. Ids outside the
    vocabulary are kept in `output` but not tallied."""

    __slots__ = ("output", "seen", "output_counts")

    def __init__(self, prompt_token_ids: Sequence[int], vocab_size: int) -> None:
        self.output: list[int] = []
        self.seen = np.zeros(vocab_size, dtype=bool)  # in the prompt or the output
        self.output_counts = np.zeros(vocab_size, dtype=np.int64)
        ids = np.asarray(list(prompt_token_ids), dtype=np.int64)
        self.seen[ids[(ids >= 0) & (ids < vocab_size)]] = True

    def append(self, token: int) -> None:
        self.output.append(token)
        if 0 <= token < self.seen.shape[0]:
            self.seen[token] = True
            self.output_counts[token] += 1


def apply_logits_processors(
    logits: np.ndarray,
    params: LogitsParams,
    prompt_token_ids: Sequence[int],
    output_token_ids: Sequence[int],
) -> np.ndarray:
    """Return a processed float64 copy of one row of logits (banned tokens are -inf)."""
    history = TokenHistory(prompt_token_ids, np.shape(logits)[0])
    for token in output_token_ids:
        history.append(token)
    return apply_with_history(logits, params, history)


def apply_with_history(
    logits: np.ndarray, params: LogitsParams, history: TokenHistory
) -> np.ndarray:
    """`apply_logits_processors` from a request's kept `TokenHistory` (its vocabulary the
    logits' length)."""
    out = np.array(logits, dtype=np.float64)
    vocab = out.shape[0]
    output_token_ids = history.output
    for ids in params.bad_words_ids:
        prefix = ids[:-1]
        if not prefix or tuple(output_token_ids[-len(prefix) :]) == prefix:
            if 0 <= ids[-1] < vocab:
                out[ids[-1]] = -np.inf
    if len(output_token_ids) < params.min_tokens:
        for t in params.stop_token_ids:
            if 0 <= t < vocab:
                out[t] = -np.inf
    for t, bias in params.logit_bias:
        out[t] += bias
    if params.repetition_penalty != 1.0:
        p = params.repetition_penalty
        out = np.where(history.seen, np.where(out > 0, out / p, out * p), out)
    if output_token_ids and (params.frequency_penalty or params.presence_penalty):
        counts = history.output_counts
        out -= params.frequency_penalty * counts
        out -= params.presence_penalty * (counts > 0)
    return out
