"""Shared tokenizers for the agent tests (built/loaded once per session)."""
import pytest

from pilotrl_jax.agent.tokenizer import build_word_tokenizer, smollm2_gguf_path

ENV_TEXT = [
    "You are in the middle of a room. Looking quickly around you, you see a desk 1, a drawer 1, a shelf 1.",
    "Your task is to: put a pen on the shelf.",
    "On the desk 1, you see a pen 1 and a book 1.",
    "You pick up the pen 1 from the desk 1.",
    "You move the pen 1 to the shelf 1.",
    "Nothing happens.",
    "go to desk 1", "take pen 1 from desk 1", "move pen 1 to shelf 1", "look", "inventory",
    "According to Step 1 of the global plan, I should go to the desk.",
]

# A LLaMA-3.1-style chat template (header ids, eot, trimmed contents, a dated system header),
# written for these tests.
LLAMA31_STYLE_TEMPLATE = (
    "<|begin_of_text|>"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
    "{% if m['role'] == 'system' %}{{ 'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' }}{% endif %}"
    "{{ m['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA31_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="session")
def tiny_tok():
    return build_word_tokenizer(ENV_TEXT * 20, vocab_size=600)


@pytest.fixture(scope="session")
def llama_style_tok():
    tok = build_word_tokenizer(ENV_TEXT * 20, vocab_size=600)
    tok.add_tokens(LLAMA31_SPECIALS, special_tokens=True)
    tok.chat_template = LLAMA31_STYLE_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def smollm2_tok():
    from transformers import AutoTokenizer

    try:
        d, f = smollm2_gguf_path()
    except FileNotFoundError as e:  # the Makefile installs it; without it this is an environment problem
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(d, gguf_file=f)


@pytest.fixture(params=["tiny", "llama31_style", "smollm2"])
def any_tok(request):
    name = {"tiny": "tiny_tok", "llama31_style": "llama_style_tok", "smollm2": "smollm2_tok"}[request.param]
    return request.getfixturevalue(name)
