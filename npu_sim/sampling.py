"""Per-request token sampling: logits processors, then greedy or temperature with
top-k, min-p and nucleus (top-p) truncation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from npu_sim.logits_processors import LogitsParams, TokenHistory, apply_with_history

GREEDY_BELOW = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request picks tokens.

    temperature: 0 means greedy (argmax), and so does anything below GREEDY_BELOW (as in
        vLLM: dividing by ~1e-300 would overflow); otherwise finite and > 0.
    top_p: keep the smallest set of most likely tokens whose mass reaches top_p, (0, 1].
    top_k: keep the k most likely tokens (ties: lowest ids); 0 keeps all.
    min_p: keep tokens whose probability is at least min_p times the top one's, [0, 1].
    seed: seeds the request's own generator; None draws fresh OS entropy. Any integer
        (OpenAI allows negative seeds); distinct seeds give distinct generators.
    logits: the processors applied before any of this (penalties, biases, bans).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    top_k: int = 0
    min_p: float = 0.0
    logits: LogitsParams = field(default_factory=LogitsParams)

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")


class TokenConstraint(Protocol):
    """Per-request constrained decoding (e.g. `npu_sim.json_constraint`)."""

    def allowed_mask(self) -> np.ndarray:
        """Bool array (vocab_size,): the tokens that may come next."""
        ...

    def advance(self, token: int) -> None:
        """Record the token that was sampled."""
        ...


class Sampler:
    """Samples one request's tokens with its own `np.random.Generator`.

    Every non-greedy `sample` call consumes exactly one uniform draw, so a request's tokens
    depend only on its seed and its logits, never on the rest of the batch. Tokens where
    `sampleable_mask` is False are never returned. The sampler remembers the tokens it
    returned (the request's output, which penalties and bad words look at): one sampler
    per request, and every returned token must become part of the output. Not thread-safe.
    """

    def __init__(
        self,
        params: SamplingParams,
        sampleable_mask: np.ndarray,
        prompt_token_ids: Sequence[int] = (),
        constraint: TokenConstraint | None = None,
    ) -> None:
        """`constraint`: restricts each step's tokens further (applied after the
        logits processors, before greedy or sampling)."""
        mask = np.asarray(sampleable_mask, dtype=bool)
        if mask.ndim != 1 or not mask.any():
            raise ValueError("sampleable_mask must be a 1-D boolean array with a True entry")
        self._params = params
        self._mask = mask
        # The output and the tallies the logits processors read; none when they are off
        # (and the prompt only for the repetition penalty, the one that reads it).
        logits_params = params.logits
        self._history = (
            None
            if logits_params.is_noop
            else TokenHistory(
                prompt_token_ids if logits_params.repetition_penalty != 1.0 else (),
                mask.shape[0],
            )
        )
        self._constraint = constraint
        seed = params.seed
        # numpy seeds must be non-negative: fold the sign in instead of rejecting it.
        self._rng = np.random.default_rng(None if seed is None else [int(seed < 0), abs(seed)])

    @property
    def params(self) -> SamplingParams:
        return self._params

    def sample(self, logits_row: np.ndarray) -> int:
        """Pick a token id from one row of logits (length = vocab size)."""
        token = self._pick(logits_row)
        if self._history is not None:
            self._history.append(token)
        if self._constraint is not None:
            self._constraint.advance(token)
        return token

    def _pick(self, logits_row: np.ndarray) -> int:
        p = self._params
        logits = np.asarray(logits_row, dtype=np.float64)
        if logits.shape != self._mask.shape:
            raise ValueError(f"logits shape {logits.shape} != mask shape {self._mask.shape}")
        if self._history is not None:
            logits = apply_with_history(logits, p.logits, self._history)
        mask = self._mask
        if self._constraint is not None:
            allowed = mask & self._constraint.allowed_mask()
            mask = allowed if allowed.any() else mask
        masked = np.where(mask, logits, -np.inf)
        if not np.isfinite(masked.max()):
            masked = np.where(mask, 0.0, -np.inf)  # everything banned: stay in the mask
        if p.temperature < GREEDY_BELOW:
            return int(np.argmax(masked))  # ties -> lowest id
        # Shift before scaling: the largest term is exp(0) and nothing overflows.
        probs = np.exp((masked - masked.max()) / p.temperature)
        order = np.argsort(-probs, kind="stable")
        if p.top_k:
            probs[order[p.top_k :]] = 0.0
        if p.min_p > 0.0:
            probs[probs < p.min_p * probs[order[0]]] = 0.0
        probs /= probs.sum()
        sorted_probs = probs[order]
        cumulative = np.cumsum(sorted_probs)
        num_nonzero = int(np.count_nonzero(sorted_probs > 0.0))
        if p.top_p < 1.0:
            # Keep tokens until the mass *before* them reaches top_p (the top token always).
            keep = int(np.count_nonzero(cumulative - sorted_probs < p.top_p))
            keep = min(max(keep, 1), num_nonzero)
        else:
            keep = num_nonzero
        kept = cumulative[:keep]
        draw = self._rng.random() * kept[-1]
        idx = min(int(np.searchsorted(kept, draw, side="right")), keep - 1)
        return int(order[idx])
