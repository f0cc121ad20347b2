"""Lenient JSON extraction for LLM answers: the first {...} object, with common mistakes repaired.

Repairs, tried in order until `json.loads` accepts the text: none; Python literals (True/False/None);
single-quoted strings -> double-quoted; unquoted keys quoted; trailing commas removed; a missing
closing brace appended (truncated answers). Never raises: returns (object or None, error).
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional

_TRAILING_COMMA_RE = re.compile(r",\s*([}\]])")
_UNQUOTED_KEY_RE = re.compile(r'([{,]\s*)([A-Za-z_][A-Za-z0-9_ \-]*?)\s*:')
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
# A string that is a score: an optional "label:", the number, an optional "/5" or "out of 5" scale, then
# no other digit ("4", "4/5", "score: 3", "4 - good"); "Step 2 is wrong, 1" is text, not a score.
_SCORE_STRING_RE = re.compile(
    r"\s*(?:[A-Za-z][A-Za-z _-]{0,19}[:=]\s*)?([-+]?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*\d+(?:\.\d+)?)?[^\d]*", re.I)


def _closes_single(text: str, i: int) -> bool:
    """Whether the ' at text[i] ends a single-quoted string (next non-blank is , : } ] or the end)."""
    rest = text[i + 1 :].lstrip()
    return not rest or rest[0] in ",:}]"


def first_object_span(text: str) -> Optional[str]:
    """The text of the first balanced {...} in `text` (quotes respected), or its unclosed tail."""
    start = text.find("{")
    if start < 0:
        return None
    depth, quote, esc = 0, None, False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote and (quote == '"' or _closes_single(text, i)):
                quote = None
            continue
        if ch in "\"'":
            # An apostrophe inside a bare word (don't) is not a quote.
            if ch == "'" and i > 0 and text[i - 1].isalnum():
                continue
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return text[start:]


def _single_to_double(s: str) -> str:
    """Turn 'single-quoted' strings into "double-quoted" ones (outside double-quoted strings)."""
    out, quote, esc = [], None, False
    for i, ch in enumerate(s):
        if quote is None:
            if ch == '"':
                quote = '"'
                out.append(ch)
            elif ch == "'" and not (i > 0 and s[i - 1].isalnum()):
                quote = "'"
                out.append('"')
            else:
                out.append(ch)
            continue
        if esc:
            esc = False
            out.append(ch)
        elif ch == "\\":
            esc = True
            out.append(ch)
        elif ch == quote and (quote == '"' or _closes_single(s, i)):
            quote = None
            out.append('"')
        elif ch == '"' and quote == "'":
            out.append('\\"')
        else:
            out.append(ch)
    return "".join(out)


def _py_literals(s: str) -> str:
    return re.sub(r"\b(True|False|None)\b", lambda m: _PY_LITERALS[m.group(1)], s)


def _close(s: str) -> str:
    depth = 0
    quote = None
    esc = False
    for ch in s:
        if quote:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                quote = None
        elif ch == '"':
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
    if quote:
        s += quote
    return s.rstrip().rstrip(",") + "}" * max(depth, 0)


def parse_json_object(text: Any) -> tuple[Optional[dict], Optional[str]]:
    """The first JSON object in `text`, repaired if needed; (None, reason) when nothing parses."""
    if not isinstance(text, str):
        return None, f"expected the model's answer as str, got {type(text).__name__}"
    span = first_object_span(text)
    if span is None:
        return None, f"no JSON object ('{{') in the answer: {text[:80]!r}"
    candidates = [span]
    s = _py_literals(span)
    candidates.append(s)
    s = _single_to_double(s)
    candidates.append(s)
    s = _UNQUOTED_KEY_RE.sub(lambda m: f'{m.group(1)}"{m.group(2).strip()}":', s)
    candidates.append(s)
    s = _TRAILING_COMMA_RE.sub(r"\1", s)
    candidates.append(s)
    s = _TRAILING_COMMA_RE.sub(r"\1", _close(s))
    candidates.append(s)
    last = None
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError as e:
            last = e
            continue
        if isinstance(obj, dict):
            return obj, None
        last = ValueError(f"top level is {type(obj).__name__}, not an object")
    return None, f"unparseable JSON object {span[:80]!r}: {last}"


def as_number(value: Any) -> Optional[float]:
    """A float from a number or a score string ("4", "4.5", "4/5", "score: 3"); None for other text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value == value else None
    if isinstance(value, str):
        m = _SCORE_STRING_RE.fullmatch(value)
        return float(m.group(1)) if m else None
    if isinstance(value, dict):  # {"score": 4, "reason": ...}
        for k in ("score", "rating", "value"):
            if k in value:
                return as_number(value[k])
    return None
