"""Per-request token sampling: greedy, temperature and nucleus (top-p)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GREEDY_BELOW = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request picks tokens.

    temperature: 0 means greedy (argmax), and so does anything below GREEDY_BELOW (as in
        vLLM: dividing by ~1e-300 would overflow); otherwise finite and > 0.
    top_p: keep the smallest set of most likely tokens whose mass reaches top_p, (0, 1].
    seed: seeds the request's own generator; None draws fresh OS entropy. Any integer
        (OpenAI allows negative seeds); distinct seeds give distinct generators.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class Sampler:
    """Samples one request's tokens with its own `np.random.Generator`.

    Every non-greedy `sample` call consumes exactly one uniform draw, so a request's tokens
    depend only on its seed and its logits, never on the rest of the batch. Tokens where
    `sampleable_mask` is False are never returned. One sampler per request; not thread-safe.
    """

    def __init__(self, params: SamplingParams, sampleable_mask: np.ndarray) -> None:
        mask = np.asarray(sampleable_mask, dtype=bool)
        if mask.ndim != 1 or not mask.any():
            raise ValueError("sampleable_mask must be a 1-D boolean array with a True entry")
        self._params = params
        self._mask = mask
        seed = params.seed
        # numpy seeds must be non-negative: fold the sign in instead of rejecting it.
        self._rng = np.random.default_rng(None if seed is None else [int(seed < 0), abs(seed)])

    @property
    def params(self) -> SamplingParams:
        return self._params

    def sample(self, logits_row: np.ndarray) -> int:
        """Pick a token id from one row of logits (length = vocab size)."""
        logits = np.asarray(logits_row, dtype=np.float64)
        if logits.shape != self._mask.shape:
            raise ValueError(f"logits shape {logits.shape} != mask shape {self._mask.shape}")
        masked = np.where(self._mask, logits, -np.inf)
        if self._params.temperature < GREEDY_BELOW:
            return int(np.argmax(masked))  # ties -> lowest id
        # Shift before scaling: the largest term is exp(0) and nothing overflows.
        probs = np.exp((masked - masked.max()) / self._params.temperature)
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        cumulative = np.cumsum(sorted_probs)
        if self._params.top_p < 1.0:
            # Keep tokens until the mass *before* them reaches top_p (the top token always).
            keep = int(np.count_nonzero(cumulative - sorted_probs < self._params.top_p))
            keep = max(keep, 1)
        else:
            keep = int(np.count_nonzero(sorted_probs > 0.0))
        kept = cumulative[:keep]
        draw = self._rng.random() * kept[-1]
        idx = min(int(np.searchsorted(kept, draw, side="right")), keep - 1)
        return int(order[idx])
