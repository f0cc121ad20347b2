"""Token-in/token-out chat pieces (ChatML, LLaMA-3.1 style, SmolLM2 GGUF) and the tiny tokenizer."""
import re

import pytest

from pilotrl_jax.agent.parser import AGENT_TAGS, STOP_STRINGS
from pilotrl_jax.agent.tokenizer import (
    ChatTokenizer,
    build_word_tokenizer,
    load_tokenizer,
    split_index_after_text,
)

SYSTEM = "You are an agent. Write <thought> and <action>."
TASK = "You are in a room. Your task is to: put a pen on the shelf. é 🍎"
TURNS = [
    ("<global_plan>Step 1: go to desk 1\nStep 2: take pen 1 from desk 1</global_plan>\n"
     "<thought>According to Step 1, go.</thought>\n<action>go to desk 1</action>",
     "Observation: On the desk 1, you see a pen 1."),
    ("<thought>Step 2.</thought>\n<action>take pen 1 from desk 1</action>", "Observation: You pick up the pen 1."),
]


def test_stop_strings():
    assert STOP_STRINGS == ("</action>", "</global_plan>")


def test_spans_concatenate_to_the_chat_template(any_tok):
    chat = ChatTokenizer(any_tok)
    ids = chat.prompt_ids(SYSTEM, TASK)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]
    assert ids == chat.conversation_ids(msgs)
    for policy_text, obs in TURNS:
        policy_ids = chat.encode(policy_text)  # what a sampler would have produced for this text
        ids = ids + policy_ids
        ids = ids + chat.observation_ids(obs, after=policy_ids)
        msgs += [{"role": "assistant", "content": policy_text}, {"role": "user", "content": obs}]
        assert ids == chat.conversation_ids(msgs)


def test_policy_that_wrote_the_end_of_turn_token(any_tok):
    chat = ChatTokenizer(any_tok)
    policy_text, obs = TURNS[1]
    policy = chat.encode(policy_text) + [chat.end_of_turn_ids[0]]  # sampler stopped on <|im_end|>/<|eot_id|>
    obs_ids = chat.observation_ids(obs, after=policy)
    prompt = chat.prompt_ids(SYSTEM, TASK)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK},
            {"role": "assistant", "content": policy_text}, {"role": "user", "content": obs}]
    assert prompt + policy + obs_ids == chat.conversation_ids(msgs)
    assert chat.closing_overlap(policy) >= 1 and chat.closing_overlap(policy[:-1]) == 0


def test_observation_span_is_closing_user_and_opening(any_tok):
    chat = ChatTokenizer(any_tok)
    text = chat.decode(chat.observation_ids("Observation: ok", after=[]))
    assert "Observation: ok" in text
    assert text.startswith(chat.decode(chat.closing_ids))
    gen = chat.prompt_text("s", "t")
    assert gen.endswith(text[text.index("Observation: ok") + len("Observation: ok"):][-8:])


def test_smollm2_chatml(smollm2_tok):
    chat = ChatTokenizer(smollm2_tok)
    assert chat.decode(chat.closing_ids) == "<|im_end|>\n"
    assert chat.end_of_turn_ids[0] == smollm2_tok.convert_tokens_to_ids("<|im_end|>")
    assert chat.decode(chat.prompt_ids("S", "T")) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nT<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_tokenizer_properties(tiny_tok, tmp_path):
    for tag in AGENT_TAGS:
        assert len(tiny_tok.encode(tag, add_special_tokens=False)) == 1, tag
    for text in ["plain text", "  spaces\n\ttabs ", "unicode é 漢字 🍎 \u200b", "<thought>x</thought><action>go</action>"]:
        ids = tiny_tok.encode(text, add_special_tokens=False)
        assert tiny_tok.decode(ids) == text
    assert {tiny_tok.bos_token, tiny_tok.eos_token, tiny_tok.pad_token} == {"<|bos|>", "<|im_end|>", "<|pad|>"}
    assert len(tiny_tok) <= 600
    assert len(tiny_tok.encode("assistant", add_special_tokens=False)) == 1  # prompt words are in the corpus
    tiny_tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(str(tmp_path))
    text = "<global_plan>Step 1: look 🍎</global_plan>"
    assert again.encode(text, add_special_tokens=False) == tiny_tok.encode(text, add_special_tokens=False)
    assert again.chat_template == tiny_tok.chat_template
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (
        tiny_tok.bos_token_id, tiny_tok.eos_token_id, tiny_tok.pad_token_id)
    assert ChatTokenizer(again).prompt_ids("s", "t") == ChatTokenizer(tiny_tok).prompt_ids("s", "t")


def test_build_word_tokenizer_bad_input():
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        build_word_tokenizer(["a b c"], vocab_size=100)
    with pytest.raises(ValueError, match="texts is empty"):
        build_word_tokenizer([], vocab_size=400)
    with pytest.raises(TypeError, match="iterable of strings"):
        build_word_tokenizer("one string", vocab_size=400)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer("/nonexistent/tokenizer")


def test_chat_tokenizer_rejects_unsuitable_tokenizers(tiny_tok):
    with pytest.raises(TypeError, match="needs a transformers tokenizer"):
        ChatTokenizer(object())
    tok = build_word_tokenizer(["go to desk 1"] * 5, vocab_size=400)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        ChatTokenizer(tok)
    # A template that drops earlier turns is not append-only: the sampler's sequence would diverge.
    tok.chat_template = (
        "{% for m in messages %}{% if loop.last or m['role'] == 'system' %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="verbatim|append-only"):
        ChatTokenizer(tok)


def test_split_index_after_text(any_tok):
    chat = ChatTokenizer(any_tok)
    plan = "<global_plan>Step 1: look</global_plan>"
    ids = chat.encode(plan + "\n<thought>t</thought><action>look</action>")
    n = split_index_after_text(chat, ids, "</global_plan>")
    assert "</global_plan>" in chat.decode(ids[:n]) and "</global_plan>" not in chat.decode(ids[: n - 1])
    assert split_index_after_text(chat, ids, re.compile(r"</\s*GLOBAL_PLAN>", re.I)) == n
    assert split_index_after_text(chat, ids, "</nothing>") is None
    assert split_index_after_text(chat, [], "x") is None
    with pytest.raises(ValueError, match="marker is empty"):
        split_index_after_text(chat, ids, "")
