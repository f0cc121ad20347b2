"""LocalModelJudge end to end with a tiny random model: garbage answers are flagged, never raised."""
import jax
import pytest

from pilotrl_jax.models.config import LlamaConfig
from pilotrl_jax.models.llama import init_params
from pilotrl_jax.rewards import JudgeRequest, PlanRecord
from pilotrl_jax.rewards.local_judge import LocalModelJudge
from pilotrl_jax.sampling.engine import GenerationResult


def _req(i):
    return JudgeRequest(task="Your task is to: put a pen on the shelf.",
                        plans=(PlanRecord(0, ("go to the desk", "take the pen")),
                               PlanRecord(1, ("take the pen", "put the pen on the shelf"))),
                        actions=("go to desk 1", "take pen 1 from desk 1"),
                        observations=("room", "On the desk 1, you see a pen 1.", "You pick up the pen 1."), won=bool(i))


@pytest.fixture(scope="module")
def tiny_model(tok):
    config = LlamaConfig.tiny(vocab_size=len(tok), eos_token_ids=(tok.eos_token_id,), bos_token_id=tok.bos_token_id,
                              pad_token_id=tok.pad_token_id, max_position_embeddings=1024)
    return config, init_params(config, jax.random.PRNGKey(0))


def test_random_model_runs_and_failures_are_counted(tok, tiny_model):
    config, params = tiny_model
    judge = LocalModelJudge(config, params, tok, max_new_tokens=16, max_prompt_tokens=384, batch_size=4)
    out = judge.score([_req(0), _req(1)])
    assert len(out) == 2
    for j in out:  # a random model does not write the rubric JSON: flagged, not zero
        assert not j.ok and j.score is None and j.error
    st = judge.stats()
    assert st["episodes"] == 2 and st["units"] == 4 and st["unit_failures"] == 4 and st["judgement_failures"] == 2
    assert st["generate_time_s"] > 0


def test_parses_a_well_formed_answer(tok, tiny_model, monkeypatch):
    import pilotrl_jax.sampling as sampling

    config, params = tiny_model
    answer = tok.encode('{"correctness": 4, "followability": 5, "standardization": 3}', add_special_tokens=False)
    seen = {}

    def fake_generate(cfg, p, prompts, max_new_tokens, **kw):
        seen["lens"] = [len(x) for x in prompts]
        return [GenerationResult(list(answer), [0.0] * len(answer), "stop") for _ in prompts]

    monkeypatch.setattr(sampling, "generate", fake_generate)
    judge = LocalModelJudge(config, params, tok, max_new_tokens=16, max_prompt_tokens=200, batch_size=8)
    (j,) = judge.score([_req(1)])
    assert j.ok and j.score == pytest.approx(4.0) and j.criteria["followability"] == 5.0
    assert max(seen["lens"]) <= 200  # long prompts are cut to max_prompt_tokens

    def broken(*a, **kw):
        raise RuntimeError("device lost")

    monkeypatch.setattr(sampling, "generate", broken)
    (j,) = judge.score([_req(0)])
    assert not j.ok and "device lost" in j.error and judge.stats()["request_failures"] == 2


def test_bad_limits(tok, tiny_model):
    config, params = tiny_model
    with pytest.raises(ValueError, match="max_position_embeddings"):
        LocalModelJudge(config, params, tok, max_new_tokens=96, max_prompt_tokens=1000)
