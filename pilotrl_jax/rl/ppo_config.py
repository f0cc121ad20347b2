"""PPOConfig: the PPO hyper-parameters, validated on construction (defaults are the paper's)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from pilotrl_jax.rl import advantages as adv_lib
from pilotrl_jax.rl import losses as L
from pilotrl_jax.rl.step_groups import STEP_NORMS

LR_SCHEDULES = ("constant", "cosine", "linear")
OLD_LOGPROBS = ("recompute", "sampler")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters; defaults are the paper's (GRPO, clip 0.2/0.2, dual-clip 3, no KL, lr 1e-6)."""

    # advantages
    advantage_estimator: str = "grpo"  # grpo | rloo | gae
    grpo_eps: float = 1e-6
    grpo_std: Optional[str] = "unbiased"  # torch.std as in verl; "biased"; None = Dr. GRPO (mean only; "none" in a config)
    gamma: float = 1.0
    lam: float = 1.0
    whiten_advantages: bool = False  # whiten over trained tokens of the batch (common with GAE)
    # GiGPO's step-level credit (Feng et al. 2025; rl/turn_credit.py): > 0 adds this weight x each executor
    # turn's anchor-state advantage to the turn's tokens (before whitening); 0 = off
    step_advantage_weight: float = 0.0
    step_gamma: float = 0.95  # discount of the per-turn returns the step-level credit compares
    step_norm: str = "std"  # step groups: "std" (mean and std, GiGPO's default) or "mean" (mean only)
    # policy loss
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: Optional[float] = 3.0
    loss_agg_mode: str = "token-mean"
    entropy_coef: float = 0.0
    temperature: float = 1.0  # the sampling temperature; log-probs are recomputed under it
    old_logprobs: str = "recompute"  # recompute: a trainer forward pass before the update; sampler: the
    # sampler's own log-probs of the sampled tokens (saves that pass; equal when sampler and trainer
    # run the same weights and numerics, which the ppo/sampler_* metrics of a "recompute" run check)
    logits_chunk_size: Optional[int] = None  # compute LM-head logits this many positions at a time
    # (rematerialised in backward) so [B, T, V] float32 logits never exist at once; None = all at once
    # KL to a frozen reference
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in_reward: bool = False  # True: fold coef*KL into rewards/scores instead of the loss
    # optimisation
    lr: float = 1e-6
    lr_schedule: str = "constant"
    warmup_steps: int = 0  # in optimizer updates
    total_steps: int = 0  # optimizer updates, for cosine/linear decay
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    target_kl: Optional[float] = None  # a trust region on the whole step: once a mini-batch's mean k3 to the
    # old policy (measured before its update) exceeds this, that update and the rest of the step's are
    # skipped (as in Stable-Baselines3's PPO); None = off
    # batching (paper: 256 tasks per step, mini-batch 64 tasks -> 4 mini-batches)
    epochs: int = 1
    num_mini_batches: int = 4
    num_micro_batches: int = 1
    shuffle: bool = True
    # critic (ours; off in the paper)
    use_critic: bool = False
    critic_lr: float = 1e-5
    value_clip: Optional[float] = 0.2

    def __post_init__(self):
        if self.advantage_estimator not in adv_lib.ADVANTAGES:
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r}; expected one of {sorted(adv_lib.ADVANTAGES)}"
            )
        if self.advantage_estimator == "gae" and not self.use_critic:
            raise ValueError("advantage_estimator='gae' needs a critic; set use_critic=True (or use grpo/rloo)")
        if self.grpo_std not in ("unbiased", "biased", None):
            raise ValueError(f"grpo_std={self.grpo_std!r}; expected 'unbiased', 'biased' or None (Dr. GRPO; "
                             "'none' in a config)")
        if self.loss_agg_mode not in L.AGG_MODES:
            raise ValueError(f"loss_agg_mode={self.loss_agg_mode!r}; expected one of {L.AGG_MODES}")
        if self.kl_estimator not in L.KL_ESTIMATORS:
            raise ValueError(f"kl_estimator={self.kl_estimator!r}; expected one of {sorted(L.KL_ESTIMATORS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}; expected one of {LR_SCHEDULES}")
        if self.lr_schedule != "constant" and self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} needs total_steps > warmup_steps (got {self.total_steps}, "
                f"{self.warmup_steps}); set total_steps to the number of optimizer updates"
            )
        for name in ("epochs", "num_mini_batches", "num_micro_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 1")
        if self.logits_chunk_size is not None and self.logits_chunk_size < 1:
            raise ValueError(f"logits_chunk_size={self.logits_chunk_size}; expected a positive int or None")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl={self.target_kl}; expected a positive float or None (off)")
        if self.step_advantage_weight < 0:
            raise ValueError(f"step_advantage_weight={self.step_advantage_weight}; expected >= 0 "
                             "(GiGPO: 1.0; 0 disables the step-level credit)")
        if not 0.0 <= self.step_gamma <= 1.0:
            raise ValueError(f"step_gamma={self.step_gamma}; expected a discount in [0, 1] (GiGPO: 0.95)")
        if self.step_norm not in STEP_NORMS:
            raise ValueError(f"step_norm={self.step_norm!r}; expected one of {STEP_NORMS}")
        if self.old_logprobs not in OLD_LOGPROBS:
            raise ValueError(f"old_logprobs={self.old_logprobs!r}; expected one of {OLD_LOGPROBS}")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}; expected > 0 (the sampling temperature)")

    @property
    def kl_in_loss(self) -> bool:
        """Whether a KL term to the reference is added to the policy loss."""
        return self.kl_coef > 0 and not self.kl_in_reward

    @property
    def needs_ref(self) -> bool:
        """Whether reference log-probs are needed at all."""
        return self.kl_coef > 0
