"""Incremental detokenization with stop strings.

Text is released as soon as it cannot be the start of a stop string, so a stream never
shows a stop string (or a part of one) that then has to be taken back.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class IncrementalDetokenizer:
    """Feeds token ids, returns text that is safe to send; `done` once a stop string hit.

    `token_bytes` maps a token id to the UTF-8 bytes it stands for (b"" for specials),
    as `npu_sim.tokenizers.Tokenizer.token_bytes` does, so a character split across
    tokens is released whole.
    """

    def __init__(self, token_bytes: Callable[[int], bytes], stop: Sequence[str] = ()) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = list(stop)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._pending = ""
        self.text = ""  # everything released so far
        self.done = False

    def feed(self, token_ids: Sequence[int]) -> str:
        if self.done:
            return ""
        raw = b"".join(self._token_bytes(t) for t in token_ids)
        self._pending += self._decoder.decode(raw)
        cut = self._find_stop()
        if cut is not None:
            out, self._pending, self.done = self._pending[:cut], "", True
        elif self._holdback and len(self._pending) > self._holdback:
            out = self._pending[: -self._holdback]
            self._pending = self._pending[-self._holdback :]
        elif self._holdback:
            out = ""
        else:
            out, self._pending = self._pending, ""
        self.text += out
        return out

    def flush(self) -> str:
        """Release what was held back (the request ended without a stop string)."""
        if self.done:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        self.text += out
        return out

    def _find_stop(self) -> int | None:
        hits = [i for s in self._stop if (i := self._pending.find(s)) >= 0]
        return min(hits) if hits else None
