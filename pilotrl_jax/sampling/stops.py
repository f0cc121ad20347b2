"""Stop strings on the host: exact detection over decoded text, and a per-token 'maybe' table.

A stop string can be produced by many token sequences ("</action>" as one token, or "</", "action",
">", or a token "ion>\\n" that completes it and carries more text). The engine decodes on device in
chunks; between chunks `StopStrings.find` decodes a short tail of each row's new tokens and returns
the first token whose text completes a stop string; the row's tokens are cut right after that token
(a token that completes the string and carries more text is kept whole: tokens are never split).
Only text generated in the current `generate` call is searched (not the prompt or earlier turns).
Matching is on text, not token ids, and exact (case-sensitive): the agent's tags are exact too
(`agent.parser.STOP_STRINGS`), so the sampler stops on every closing tag the parser accepts and on
nothing else (a `</Action>` is a format error there, not a stop).

`trigger_table` marks tokens whose text contains the last character of some stop string (or a
partial UTF-8 sequence); only such a token can complete a stop string, so the device loop returns
to the host early once every running row has sampled one.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

_REPLACEMENT = "\ufffd"


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_stop_strings(stop_strings: Sequence[str], tokenizer: Any) -> tuple[str, ...]:
    """Validate stop strings (non-empty str, a tokenizer with .decode given) and return them as a tuple."""
    if isinstance(stop_strings, str):
        raise ValueError(f"stop_strings={stop_strings!r} is a single string; pass a sequence like ({stop_strings!r},)")
    out = tuple(stop_strings or ())
    for s in out:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop_strings contains {s!r}; every stop string must be a non-empty str")
    if out and (tokenizer is None or not hasattr(tokenizer, "decode")):
        raise ValueError(
            f"stop_strings={out} need a tokenizer with .decode(ids) to read the generated text; "
            "pass tokenizer=AutoTokenizer.from_pretrained(...)"
        )
    return out


class StopStrings:
    """Finds the first generated token whose decoded text completes one of `stop_strings`."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.strings = tuple(stop_strings)
        # An occurrence spans at most len(bytes) tokens (every token adds >= 1 byte); keep slack for
        # a leading partial UTF-8 token that decodes to a replacement character.
        self.window = max(len(s.encode("utf-8")) for s in self.strings) + 4

    def _has(self, text: str) -> bool:
        return any(s in text for s in self.strings)

    def find(self, gen: Sequence[int], start: int) -> Optional[int]:
        """Smallest k >= start such that the text of gen[:k+1] contains a stop string (else None).

        Assumes no stop string is completed before `start` (earlier chunks were already checked).
        """
        if start >= len(gen):
            return None
        lo = max(0, start - self.window)
        if not self._has(_decode(self.tokenizer, gen[lo:])):
            return None
        for k in range(start, len(gen)):
            if self._has(_decode(self.tokenizer, gen[max(0, k + 1 - self.window):k + 1])):
                return k
        return None

    def matched(self, gen: Sequence[int], k: int) -> Optional[str]:
        """Which stop string the token at k completed (the earliest-ending one; None if none)."""
        text = _decode(self.tokenizer, gen[max(0, k + 1 - self.window):k + 1])
        ends = [(text.find(s) + len(s), i) for i, s in enumerate(self.strings) if s in text]
        return self.strings[min(ends)[1]] if ends else None


_TRIGGER_CACHE: dict = {}


def trigger_table(tokenizer: Any, stop_strings: Sequence[str], vocab_size: int) -> np.ndarray:
    """bool [vocab_size]: tokens whose text could complete a stop string (cached per tokenizer)."""
    key = (id(tokenizer), tuple(stop_strings), vocab_size)
    if key in _TRIGGER_CACHE and _TRIGGER_CACHE[key][0] is tokenizer:
        return _TRIGGER_CACHE[key][1]
    lasts = {s[-1] for s in stop_strings}
    n_tok = len(tokenizer) if hasattr(tokenizer, "__len__") else vocab_size
    n = min(vocab_size, n_tok)
    if hasattr(tokenizer, "batch_decode"):
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
    else:
        texts = [_decode(tokenizer, [i]) for i in range(n)]
    table = np.ones(vocab_size, bool)  # ids the tokenizer does not know: always check
    table[:n] = [(_REPLACEMENT in t) or any(c in t for c in lasts) for t in texts]
    _TRIGGER_CACHE[key] = (tokenizer, table)
    return table
