"""SmolLM2-135M-Instruct: greedy generation (and a continuation turn) equals transformers token for token."""
import pytest
import torch
import transformers

from pilotrl_jax.models import hf_io
from pilotrl_jax.models.smollm2 import ensure_smollm2_hf
from pilotrl_jax.sampling import SamplerEngine, StopStrings
from pilotrl_jax.sampling.stops import trigger_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    """(torch model, tokenizer, our config, our params) of SmolLM2-135M-Instruct."""
    path = ensure_smollm2_hf()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    config, params = hf_io.load_hf(path, scan_layers=True)
    return model, tok, config, params


def _hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=2)
    return out[0, len(prompt):].tolist()


def test_greedy_and_continuation_match_transformers(smol):
    model, tok, config, params = smol
    msgs = [{"role": "system", "content": "You are a helpful household agent."},
            {"role": "user", "content": "You are in a kitchen. Your task: put a clean mug in the coffee machine. "
                                        "Write a short plan."}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    eng = SamplerEngine(config, params, max_batch=2, max_len=256)
    (h,) = eng.start([prompt])
    r = eng.generate([h], 36)[0]
    assert r.stop_reason == "max_tokens"
    assert r.tokens == _hf_greedy(model, prompt, 36)
    obs = tok.encode("<|im_end|>\n<|im_start|>user\nObservation: the mug is dirty.<|im_end|>\n"
                     "<|im_start|>assistant\n", add_special_tokens=False)
    eng.append([h], [obs])
    r2 = eng.generate([h], 16)[0]
    assert r2.tokens == _hf_greedy(model, prompt + r.tokens + obs, 16)
    assert eng.stats["prefill_tokens"] + eng.stats["decode_tokens"] == len(eng.tokens(h)) - 1


def test_stop_string_detection_with_real_tokenizer(smol):
    _, tok, config, _ = smol
    text = "<thought>I should open it.</thought><action>open fridge 1</action>\nObservation"
    ids = tok.encode(text, add_special_tokens=False)
    st = StopStrings(tok, ["</action>", "</global_plan>"])
    k = st.find(ids, 0)
    assert k is not None
    assert "</action>" in tok.decode(ids[:k + 1]) and "</action>" not in tok.decode(ids[:k])
    assert tok.decode(ids[:k + 1]).rstrip("\n").endswith("</action>")
    assert st.matched(ids, k) == "</action>"
    for start in range(1, k + 1):  # chunk boundaries anywhere before the completing token
        assert st.find(ids, start) == k
    assert trigger_table(tok, ("</action>", "</global_plan>"), config.vocab_size)[ids[k]]


def test_shared_prefix_matches_per_episode_prefill(smol):
    """A shared system prompt pre-filled once gives the tokens (and log-probs) of per-episode prefill."""
    _, tok, config, params = smol
    system = {"role": "system", "content": "You are a household agent. Plan, then act with one command per turn. "
                                           "Write <thought>...</thought><action>...</action>. " * 3}
    prompts = [tok.apply_chat_template([system, {"role": "user", "content": f"Your task is to: {t}."}],
                                       add_generation_prompt=True, tokenize=True)
               for t in ("put a clean mug in the coffee machine", "look at a book under the lamp", "heat an apple")]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    out = {}
    for share in (False, True):
        eng = SamplerEngine(config, params, max_batch=4, max_len=256, seed=1, share_prefix=share)
        hs = eng.start(prompts)
        out[share] = eng.generate(hs, 12, temperature=0.6, top_p=0.9) + eng.generate(hs, 6)
    assert eng.stats["prefix_tokens"] >= 3 * 60
    for a, b in zip(out[False], out[True]):
        assert a.tokens == b.tokens
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
