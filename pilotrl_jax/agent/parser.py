"""Parse AdaPlan model output: plan turns and executor turns, never raising on model text.

Formats:
  plan turn:      <global_plan>Step 1: ...\nStep 2: ...</global_plan>
  executor turn:  <thought>...</thought><action>...</action>
  on_demand:      an executor turn may begin with one <global_plan>...</global_plan> block.

Tags are exact: lowercase, no blanks inside the brackets (`</Action>` or `< /action>` is text, and
the turn is a format error whose reason names the mis-written tag). This module is the one
definition of the tags: the sampler stops on `STOP_STRINGS` (the closing tags that end a
generation), matched exactly, as stop sequences are in the usual LLM serving stacks (vLLM,
transformers' generate, OpenAI-style APIs). A lenient parser would accept turns the sampler does
not stop on (they run to their token cap) and that a deployed model's stop sequences would not end
either; exact tags make what the parser accepts, where the sampler stops and what RL rewards the
same thing, and the model learns the format its prompt shows.

Whitespace around and between blocks is ignored. Text after the last closing tag is ignored as long
as it holds no tag (a sampler that stops on a stop string may keep a few characters of the token
that completed it). Anything else that breaks the structure is a format error with a reason.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

PLAN_TAG = "global_plan"
THOUGHT_TAG = "thought"
ACTION_TAG = "action"
TAG_NAMES = (PLAN_TAG, THOUGHT_TAG, ACTION_TAG)


def open_tag(name: str) -> str:
    """The exact opening tag of `name`, e.g. `<action>`."""
    return f"<{name}>"


def close_tag(name: str) -> str:
    """The exact closing tag of `name`, e.g. `</action>`."""
    return f"</{name}>"


PLAN_CLOSE = close_tag(PLAN_TAG)
ACTION_CLOSE = close_tag(ACTION_TAG)
# The strings the sampler stops a generation on: the closing tags that end a plan or a turn.
STOP_STRINGS = (ACTION_CLOSE, PLAN_CLOSE)
# Every tag, in the order a built tokenizer adds them as whole tokens (the order fixes their ids).
AGENT_TAGS = tuple(f(n) for n in TAG_NAMES for f in (open_tag, close_tag))

# Exact tag text -> lexer item ("open" | "close", name).
_TAGS = {**{open_tag(n): ("open", n) for n in TAG_NAMES}, **{close_tag(n): ("close", n) for n in TAG_NAMES}}
_TAG_RE = re.compile("|".join(re.escape(t) for t in _TAGS))
# What a mis-written tag looks like (other case, blanks inside the brackets): only named in errors.
_LOOSE_TAG_RE = re.compile(r"<\s*(/?)\s*(global_plan|thought|action)\s*>", re.IGNORECASE)
# A step line: "Step 3: ...", "step 3 - ...", "3. ...", "3) ...".
_STEP_RE = re.compile(r"^\s*(?:step\s*(\d+)\s*[:.)\-]?|(\d+)[.):](?=\s|$))\s*(.*)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ParseResult:
    """Outcome of parsing one model turn; `ok` False means a format error described by `error`."""

    ok: bool
    error: Optional[str] = None
    thought: Optional[str] = None
    action: Optional[str] = None
    plan: Optional[tuple[str, ...]] = None  # the plan steps, when the turn held a plan block
    new_plan: bool = False  # the turn emitted a (well-formed) new plan
    plan_numbering_ok: bool = True  # steps were numbered 1, 2, 3, ... (informative, not an error)
    trailing: str = ""  # ignored text after the last closing tag

    @property
    def format_error(self) -> bool:
        """True when the turn broke the required format."""
        return not self.ok


def _fail(reason: str, **fields: Any) -> ParseResult:
    return ParseResult(ok=False, error=reason, **fields)


def _as_text(text: Any) -> tuple[Optional[str], Optional[str]]:
    """Coerce model output to str; returns (text, error)."""
    if isinstance(text, str):
        return text, None
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace"), None
    return None, f"expected the model's text as str, got {type(text).__name__}"


def _lex(text: str) -> list[tuple[str, Any]]:
    """Split text into ("text", str) and ("open"|"close", name) items."""
    items: list[tuple[str, Any]] = []
    pos = 0
    for m in _TAG_RE.finditer(text):
        if m.start() > pos:
            items.append(("text", text[pos : m.start()]))
        items.append(_TAGS[m.group(0)])
        pos = m.end()
    if pos < len(text):
        items.append(("text", text[pos:]))
    return items


def _read_block(items: list, i: int, name: str) -> tuple[Optional[str], int, Optional[str]]:
    """Read `<name> text </name>` starting at items[i]; returns (content, next index, error)."""
    if i >= len(items) or items[i] != ("open", name):
        return None, i, f"expected <{name}>"
    i += 1
    content = ""
    if i < len(items) and items[i][0] == "text":
        content = items[i][1]
        i += 1
    if i >= len(items):
        return None, i, f"unclosed <{name}>"
    kind, other = items[i]
    if kind == "close" and other == name:
        return content, i + 1, None
    if kind == "open":
        return None, i, f"<{other}> nested inside <{name}>"
    return None, i, f"</{other}> inside <{name}> (mismatched tags)"


def _skip_blank(items: list, i: int) -> tuple[int, Optional[str]]:
    """Skip a whitespace-only text item; returns (next index, the text when it is not blank)."""
    if i < len(items) and items[i][0] == "text":
        if items[i][1].strip():
            return i + 1, items[i][1]
        return i + 1, None
    return i, None


def _short(s: str, n: int = 40) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def parse_plan_steps(body: str) -> tuple[Optional[tuple[str, ...]], bool, Optional[str]]:
    """Split a plan body into steps; returns (steps, numbering_ok, error)."""
    steps: list[str] = []
    numbers: list[int] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        m = _STEP_RE.match(line)
        if m:
            num = m.group(1) or m.group(2)
            numbers.append(int(num) if len(num) < 9 else -1)
            steps.append(m.group(3).strip())
        elif steps:  # a continuation line of the previous step
            steps[-1] = (steps[-1] + " " + line.strip()).strip()
        else:
            return None, False, f"plan text before 'Step 1:' ({_short(line)!r}); start every step with 'Step N:'"
    if not steps:
        return None, False, "empty plan; write steps as 'Step 1: ...' lines"
    if any(not s for s in steps):
        return None, False, "a plan step has no text"
    numbering_ok = numbers == list(range(1, len(numbers) + 1))
    return tuple(steps), numbering_ok, None


def _tag_hint(text: str) -> str:
    """'; ...' naming the first mis-written tag in `text` (other case, blanks) and its exact form, or ''."""
    for m in _LOOSE_TAG_RE.finditer(text):
        if m.group(0) not in _TAGS:
            exact = (close_tag if m.group(1) else open_tag)(m.group(2).lower())
            return f"; {m.group(0)!r} is not a tag (tags are exact and lowercase): write {exact}"
    return ""


def _with_tag_hint(res: ParseResult, text: str) -> ParseResult:
    """A format error's reason, extended with the mis-written tag that likely caused it."""
    return res if res.ok else dataclasses.replace(res, error=res.error + _tag_hint(text))


def parse_plan(text: Any) -> ParseResult:
    """Parse a plan turn `<global_plan>Step 1: ...</global_plan>` into steps; never raises."""
    text, err = _as_text(text)
    if err:
        return _fail(err)
    return _with_tag_hint(_parse_plan(text), text)


def _parse_plan(text: str) -> ParseResult:
    """parse_plan on text already known to be str."""
    items = _lex(text)
    i, junk = _skip_blank(items, 0)
    if junk is not None:
        return _fail(f"text before <global_plan>: {_short(junk)!r}")
    body, i, err = _read_block(items, i, PLAN_TAG)
    if err == f"expected <{PLAN_TAG}>":
        return _fail("missing <global_plan>...</global_plan> block")
    if err:
        return _fail(err)
    steps, numbering_ok, err = parse_plan_steps(body)
    if err:
        return _fail(err)
    trailing = ""
    if i < len(items):
        if items[i][0] != "text" or i + 1 < len(items):
            tag = next(x for x in items[i:] if x[0] != "text")
            return _fail(f"unexpected {'</' if tag[0] == 'close' else '<'}{tag[1]}> after </global_plan>")
        trailing = items[i][1]
    return ParseResult(ok=True, plan=steps, new_plan=True, plan_numbering_ok=numbering_ok, trailing=trailing)


def parse_action(text: Any, allow_plan: bool = False) -> ParseResult:
    """Parse an executor turn `<thought>..</thought><action>..</action>`; never raises.

    With `allow_plan` (on_demand re-planning) the turn may begin with one <global_plan> block;
    `new_plan` then says whether it did. A malformed leading plan makes the whole turn an error.
    """
    text, err = _as_text(text)
    if err:
        return _fail(err)
    return _with_tag_hint(_parse_action(text, allow_plan), text)


def _parse_action(text: str, allow_plan: bool) -> ParseResult:
    """parse_action on text already known to be str."""
    items = _lex(text)
    counts = {(k, n): 0 for k in ("open", "close") for n in TAG_NAMES}
    for it in items:
        if it[0] != "text":
            counts[it] += 1
    for name in (THOUGHT_TAG, ACTION_TAG):
        if counts[("open", name)] > 1:
            return _fail(f"{counts[('open', name)]} <{name}> blocks; write exactly one")
        if counts[("open", name)] == 0:
            return _fail(f"missing <{name}>...</{name}>")
    i, junk = _skip_blank(items, 0)
    plan, new_plan, numbering_ok = None, False, True
    if i < len(items) and items[i] == ("open", PLAN_TAG):
        if not allow_plan:
            return _fail("unexpected <global_plan> in an executor turn; write only <thought> and <action>")
        if junk is not None:
            return _fail(f"text before <global_plan>: {_short(junk)!r}")
        body, i, err = _read_block(items, i, PLAN_TAG)
        if err:
            return _fail(err)
        plan, numbering_ok, err = parse_plan_steps(body)
        if err:
            return _fail("new plan: " + err)
        new_plan = True
        i, junk = _skip_blank(items, i)
        if junk is not None:
            return _fail(f"text between </global_plan> and <thought>: {_short(junk)!r}")
    elif junk is not None:
        return _fail(f"text before <thought>: {_short(junk)!r}")
    if i < len(items) and items[i][0] != "text" and items[i][1] == PLAN_TAG:
        what = "second <global_plan> block" if new_plan else "<global_plan> tag out of place"
        return _fail(f"{what}; a turn may hold one plan, before <thought>")
    thought, i, err = _read_block(items, i, THOUGHT_TAG)
    if err:
        return _fail(err if err != f"expected <{THOUGHT_TAG}>" else "<thought> must come first, before <action>")
    i, junk = _skip_blank(items, i)
    if junk is not None:
        return _fail(f"text between </thought> and <action>: {_short(junk)!r}")
    action, i, err = _read_block(items, i, ACTION_TAG)
    if err:
        return _fail(err)
    action = " ".join(action.split())
    if not action:
        return _fail("empty <action>; write the command to run inside <action>...</action>", thought=thought.strip())
    trailing = ""
    if i < len(items):
        if items[i][0] != "text" or i + 1 < len(items):
            tag = next(x for x in items[i:] if x[0] != "text")
            return _fail(f"unexpected {'</' if tag[0] == 'close' else '<'}{tag[1]}> after </action>")
        trailing = items[i][1]
    return ParseResult(
        ok=True,
        thought=thought.strip(),
        action=action,
        plan=plan,
        new_plan=new_plan,
        plan_numbering_ok=numbering_ok,
        trailing=trailing,
    )


def format_plan(steps: Any) -> str:
    """Render plan steps as `<global_plan>Step 1: ...\\nStep 2: ...</global_plan>`."""
    if isinstance(steps, str) or not all(isinstance(s, str) and s.strip() for s in steps):
        raise ValueError(
            f"plan steps must be a sequence of non-empty strings, got {steps!r}; "
            "pass e.g. ['go to the desk', 'take the lamp']"
        )
    if len(steps) == 0:
        raise ValueError("plan steps are empty; pass at least one step")
    body = "\n".join(f"Step {k}: {' '.join(s.split())}" for k, s in enumerate(steps, 1))
    return f"{open_tag(PLAN_TAG)}{body}{PLAN_CLOSE}"
