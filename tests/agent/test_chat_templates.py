"""Chat templates that cannot carry AdaPlan are refused by name (what is missing, the fix); those that
can (ChatML, SmolLM2's own, a system message folded into the first user turn) keep working."""
import os

import pytest

from pilotrl_jax.agent.tokenizer import ChatTokenizer, build_word_tokenizer


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOLLM2_DIR = os.path.join(ROOT, ".cache", "smollm2-135m-instruct")

_TURN = "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
_GEN = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
# Gemma style: the template raises on a system message.
RAISES_ON_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}" + _TURN + "{% endfor %}" + _GEN
)
# The system message is silently left out.
DROPS_SYSTEM = "{% for m in messages %}{% if m['role'] != 'system' %}" + _TURN + "{% endif %}{% endfor %}" + _GEN
# LLaMA-2 style: the system text is folded into the first user turn (accepted).
FOLDS_SYSTEM = (
    "{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "{% if loop.index == 2 and sys %}{{ '<|im_start|>user\n' + sys + '\n\n' + m['content'] + '<|im_end|>\n' }}"
    "{% else %}" + _TURN + "{% endif %}{% endif %}{% endfor %}" + _GEN
)
# Mistral v0.3 style: the system text goes into the LAST user turn (moves as the episode grows).
SYSTEM_IN_LAST_USER = (
    "{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' and loop.last and sys %}{{ '<|im_start|>user\n' + sys + '\n\n' + m['content'] + '<|im_end|>\n' }}"
    "{% else %}" + _TURN + "{% endif %}{% endif %}{% endfor %}" + _GEN
)
# The system text is repeated in every user turn (the observations would carry it).
SYSTEM_IN_EVERY_USER = SYSTEM_IN_LAST_USER.replace(" and loop.last", "")
# No generation prompt: add_generation_prompt=True renders nothing more.
NO_GENERATION_PROMPT = "{% for m in messages %}" + _TURN + "{% endfor %}"


@pytest.fixture
def tok():
    t = build_word_tokenizer(["go to desk 1", "You see a pen 1."] * 5, vocab_size=400)
    t.name_or_path = "/ckpt/my-model"  # as from_pretrained would set it
    return t


@pytest.mark.parametrize("template, missing", [
    (RAISES_ON_SYSTEM, r"cannot render a system message \(TemplateError: System role not supported\)"),
    (DROPS_SYSTEM, r"drops the system message \(no system role\)"),
    (SYSTEM_IN_LAST_USER, r"renders the conversation prefix differently.*moves the system message.*append-only"),
    (SYSTEM_IN_EVERY_USER, r"verbatim, once each.*repeats or drops a system message"),
    (NO_GENERATION_PROMPT, r"has no generation prompt: add_generation_prompt=True renders nothing more than False"),
])
def test_templates_that_cannot_carry_adaplan_are_refused_by_name(tok, template, missing):
    tok.chat_template = template
    with pytest.raises(ValueError, match=missing) as e:
        ChatTokenizer(tok)
    msg = str(e.value)
    assert "'/ckpt/my-model'" in msg  # names the checkpoint
    assert "tokenizer.chat_template" in msg and "--config.tokenizer.path" in msg  # and the fix


def test_a_system_message_folded_into_the_first_user_turn_is_accepted(tok):
    """The model reads the whole system text, once, before the task; the episode stays append-only."""
    tok.chat_template = FOLDS_SYSTEM
    chat = ChatTokenizer(tok)
    text = chat.prompt_text("SYS TEXT", "TASK TEXT")
    assert text == "<|im_start|>user\nSYS TEXT\n\nTASK TEXT<|im_end|>\n<|im_start|>assistant\n"
    policy = chat.encode("<thought>t</thought><action>look</action>")
    ids = chat.prompt_ids("SYS TEXT", "TASK TEXT") + policy + chat.observation_ids("Observation: ok", after=policy)
    msgs = [{"role": "system", "content": "SYS TEXT"}, {"role": "user", "content": "TASK TEXT"},
            {"role": "assistant", "content": "<thought>t</thought><action>look</action>"},
            {"role": "user", "content": "Observation: ok"}]
    assert ids == chat.conversation_ids(msgs)


def test_an_in_memory_tokenizer_is_named_by_its_class(tok):
    tok.name_or_path = ""
    tok.chat_template = DROPS_SYSTEM
    with pytest.raises(ValueError, match=r"tokenizer \w+ \(built in memory, no path\)"):
        ChatTokenizer(tok)


def test_the_real_smollm2_template_keeps_working_and_a_broken_one_names_its_directory():
    from transformers import AutoTokenizer

    from pilotrl_jax.models.smollm2 import ensure_smollm2_hf

    t = AutoTokenizer.from_pretrained(ensure_smollm2_hf())  # converted once (SMOLLM2_DIR)
    chat = ChatTokenizer(t)
    assert chat.prompt_text("S", "T") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nT<|im_end|>\n<|im_start|>assistant\n")
    assert chat.decode(chat.closing_ids) == "<|im_end|>\n"
    t.chat_template = NO_GENERATION_PROMPT
    with pytest.raises(ValueError, match="no generation prompt") as e:
        ChatTokenizer(t)
    assert "smollm2-135m-instruct" in str(e.value)
