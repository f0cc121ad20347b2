"""Rewards (outcome, format, overlong, plan score) and plan-quality judges (grounded, local model, HTTP)."""
from pilotrl_jax.rewards.grounded import GroundedJudge, key_terms, plan_step_coverage
from pilotrl_jax.rewards.judge import CRITERIA, Judge, Judgement, JudgeRequest, PlanRecord, parse_judge_answer
from pilotrl_jax.rewards.shaping import (EpisodeSummary, RewardBatch, RewardConfig, compute_rewards, format_term,
                                         outcome_reward, overlong_term, summarize_episode)

__all__ = ["GroundedJudge", "key_terms", "plan_step_coverage", "CRITERIA", "Judge", "Judgement", "JudgeRequest",
           "PlanRecord", "parse_judge_answer", "EpisodeSummary", "RewardBatch", "RewardConfig", "compute_rewards",
           "format_term", "outcome_reward", "overlong_term", "summarize_episode", "HTTPJudge", "LocalModelJudge",
           "OpenAIClient", "ClientConfig", "LLMSimEnv", "make_judge"]


def __getattr__(name):
    """Lazy imports for the judges that pull in httpx or jax."""
    if name == "HTTPJudge":
        from pilotrl_jax.rewards.http_judge import HTTPJudge
        return HTTPJudge
    if name == "LocalModelJudge":
        from pilotrl_jax.rewards.local_judge import LocalModelJudge
        return LocalModelJudge
    if name in ("OpenAIClient", "ClientConfig"):
        from pilotrl_jax.rewards import openai_client
        return getattr(openai_client, name)
    if name == "LLMSimEnv":
        from pilotrl_jax.rewards.llm_env import LLMSimEnv
        return LLMSimEnv
    raise AttributeError(f"module 'pilotrl_jax.rewards' has no attribute {name!r}")


def make_judge(kind: str, **kwargs):
    """A judge by name: "grounded" (no LLM), "local" (config, params, tokenizer) or "http" (base_url, model, ...)."""
    if kind == "grounded":
        return GroundedJudge(**kwargs)
    if kind == "local":
        from pilotrl_jax.rewards.local_judge import LocalModelJudge
        return LocalModelJudge(**kwargs)
    if kind == "http":
        from pilotrl_jax.rewards.http_judge import HTTPJudge
        return HTTPJudge(**kwargs)
    raise ValueError(f"judge kind={kind!r}; expected 'grounded', 'local' or 'http'")
