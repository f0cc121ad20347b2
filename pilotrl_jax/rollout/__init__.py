"""Host-side rollout loop: batched sampling over many AdaPlan episodes, envs in a thread pool."""
from pilotrl_jax.rollout.batch import STATUSES, EpisodeResult, RolloutBatch, bucket_length
from pilotrl_jax.rollout.plans import CheckpointPlans, EndpointPlans, ExpertPlans, PlanRequest, planner_messages
from pilotrl_jax.rollout.policies import ForcedPolicy, SamplerPolicy, expert_turn, fuzz_turn
from pilotrl_jax.rollout.runner import RolloutConfig, RolloutRunner, collect, episode_seed

__all__ = ["STATUSES", "EpisodeResult", "RolloutBatch", "bucket_length", "CheckpointPlans", "EndpointPlans",
           "ExpertPlans", "PlanRequest", "planner_messages", "ForcedPolicy", "SamplerPolicy", "expert_turn",
           "fuzz_turn", "RolloutConfig", "RolloutRunner", "collect", "episode_seed"]
