"""Constrained decoding of one JSON object (`response_format: json_object`).

`JsonObjectConstraint` tracks the text generated so far with a small pushdown automaton
over characters and says which tokens may come next: those whose bytes keep the text a
prefix of a JSON object (compact: no whitespace outside strings; strings are printable
ASCII with JSON escapes), and the stop tokens once the object is closed, and only then.
It checks every candidate token's bytes against a copy of the automaton, so it is meant
for small vocabularies (the byte-level tokenizer); the server refuses it for large ones.
The mask depends only on the automaton's state, so each request memoises it per state:
a step in a state seen before (inside a string, after a value, ...) costs a dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
# Number automaton: state -> (accepts end, {char class -> next state}).
_NUMBER: dict[str, tuple[bool, dict[str, str]]] = {
    "sign": (False, {"0": "zero", "d": "int"}),
    "zero": (True, {".": "dot", "e": "exp"}),
    "int": (True, {"0": "int", "d": "int", ".": "dot", "e": "exp"}),
    "dot": (False, {"0": "frac", "d": "frac"}),
    "frac": (True, {"0": "frac", "d": "frac", "e": "exp"}),
    "exp": (False, {"+": "exp_sign", "-": "exp_sign", "0": "exp_int", "d": "exp_int"}),
    "exp_sign": (False, {"0": "exp_int", "d": "exp_int"}),
    "exp_int": (True, {"0": "exp_int", "d": "exp_int"}),
}


def _num_class(ch: str) -> str:
    if ch == "0":
        return "0"
    if ch in "123456789":
        return "d"
    return "e" if ch in "eE" else ch


# Masks memoised per request (262 bytes each for the byte vocabulary); beyond this many
# states (deeply nested output) new ones are computed every time.
MAX_MEMO_STATES = 4096


class _Machine:
    """A JSON-object prefix recogniser, one character at a time."""

    __slots__ = ("stack", "mode", "is_key", "pending", "num_state", "hex_left")

    def __init__(self) -> None:
        self.stack: list[str] = []  # "{" / "[" containers
        self.mode = "start"  # start, value, key_or_end, key, colon, after, value_or_end,
        # string, escape, unicode, number, literal, done
        self.is_key = False
        self.pending = ""  # literal characters still expected
        self.num_state = ""
        self.hex_left = 0

    def copy(self) -> _Machine:
        new = _Machine.__new__(_Machine)
        new.stack = self.stack.copy()
        new.mode, new.is_key, new.pending = self.mode, self.is_key, self.pending
        new.num_state, new.hex_left = self.num_state, self.hex_left
        return new

    def state(self) -> tuple[object, ...]:
        """Everything `feed` reads: equal states accept exactly the same texts."""
        return (
            self.mode,
            tuple(self.stack),
            self.is_key,
            self.pending,
            self.num_state,
            self.hex_left,
        )

    def feed(self, ch: str) -> bool:
        """Advance by `ch`; False (state unspecified) if the text can no longer be JSON."""
        mode = self.mode
        if mode == "string":
            if ch == '"':
                self.mode = "colon" if self.is_key else "after"
                return True
            if ch == "\\":
                self.mode = "escape"
                return True
            return " " <= ch <= "~"
        if mode == "escape":
            if ch == "u":
                self.mode, self.hex_left = "unicode", 4
                return True
            self.mode = "string"
            return ch in _ESCAPES
        if mode == "unicode":
            self.hex_left -= 1
            if self.hex_left == 0:
                self.mode = "string"
            return ch in _HEX
        if mode == "literal":
            if ch != self.pending[0]:
                return False
            self.pending = self.pending[1:]
            if not self.pending:
                self.mode = "after"
            return True
        if mode == "number":
            accepts, moves = _NUMBER[self.num_state]
            nxt = moves.get(_num_class(ch))
            if nxt is not None:
                self.num_state = nxt
                return True
            if not accepts:
                return False
            self.mode = "after"
            return self.feed(ch)
        if mode == "start":
            if ch != "{":
                return False
            self.stack.append("{")
            self.mode = "key_or_end"
            return True
        if mode in ("key_or_end", "key"):
            if ch == '"':
                self.mode, self.is_key = "string", True
                return True
            if ch == "}" and mode == "key_or_end":
                return self._close("{")
            return False
        if mode == "colon":
            if ch != ":":
                return False
            self.mode = "value"
            return True
        if mode in ("value", "value_or_end"):
            if ch == "]" and mode == "value_or_end":
                return self._close("[")
            return self._start_value(ch)
        if mode == "after":
            top = self.stack[-1]
            if ch == ",":
                self.mode = "key" if top == "{" else "value"
                return True
            if ch in "}]":
                return self._close("{" if ch == "}" else "[")
            return False
        return False  # done: nothing may follow

    def _start_value(self, ch: str) -> bool:
        if ch == "{":
            self.stack.append("{")
            self.mode = "key_or_end"
        elif ch == "[":
            self.stack.append("[")
            self.mode = "value_or_end"
        elif ch == '"':
            self.mode, self.is_key = "string", False
        elif ch in _LITERALS:
            self.mode, self.pending = "literal", _LITERALS[ch]
        elif ch == "-" or ch.isdigit():
            self.mode = "number"
            self.num_state = "sign" if ch == "-" else ("zero" if ch == "0" else "int")
        else:
            return False
        return True

    def _close(self, opener: str) -> bool:
        if not self.stack or self.stack[-1] != opener:
            return False
        self.stack.pop()
        self.mode = "after" if self.stack else "done"
        return True


class JsonObjectConstraint:
    """Which tokens keep the output a prefix of one JSON object; stop tokens only once
    it is complete. Holds per-request state: one per request, fed every sampled token."""

    def __init__(
        self,
        sampleable: Iterable[int],
        token_bytes: Callable[[int], bytes],
        stop_token_ids: frozenset[int],
        vocab_size: int,
    ) -> None:
        self._machine = _Machine()
        self._masks: dict[tuple[object, ...], np.ndarray] = {}
        self._vocab_size = vocab_size
        self._stops = np.array(sorted(stop_token_ids), dtype=np.int64)
        self._texts = {
            t: token_bytes(t).decode("ascii")
            for t in sampleable
            if t not in stop_token_ids and token_bytes(t) and token_bytes(t).isascii()
        }

    @property
    def is_complete(self) -> bool:
        return self._machine.mode == "done"

    def allowed_mask(self) -> np.ndarray:
        """Read-only bool mask (vocab_size,) of the tokens that may come next."""
        key = self._machine.state()
        mask = self._masks.get(key)
        if mask is None:
            mask = self._compute_mask()
            mask.flags.writeable = False
            if len(self._masks) < MAX_MEMO_STATES:
                self._masks[key] = mask
        return mask

    def _compute_mask(self) -> np.ndarray:
        mask = np.zeros(self._vocab_size, dtype=bool)
        if self.is_complete:
            mask[self._stops] = True
            return mask
        machine = self._machine
        for token, text in self._texts.items():
            trial = machine.copy()
            if all(trial.feed(ch) for ch in text):
                mask[token] = True
        return mask

    def advance(self, token: int) -> None:
        """Record a sampled token (one the mask allowed)."""
        text = self._texts.get(token)
        if text is None:
            return  # a stop token (the object is complete)
        for ch in text:
            self._machine.feed(ch)
