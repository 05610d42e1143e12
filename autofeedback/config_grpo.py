"""The settings of `train grpo` (autofeedback/train_grpo.py), in their own module: config.py builds
config.TrainGRPOConfig from GRPOSettings + the settings every diffusion trainer shares + the judge stage's
transport fields (JUDGE_FIELDS), and registers it in config.STAGES. Import it from autofeedback.config.

This module imports nothing of the package, so config.py can import it at any point.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

# The OpenAI-protocol rewards' transport, limits and budget: the judge stage's own fields, help text included.
JUDGE_FIELDS = ("base_url", "api_key_env", "concurrency", "rpm", "tpm", "timeout", "max_retries", "structured",
                "max_tokens", "max_cost", "price_input", "price_output", "detail", "image_max_side", "image_format")


def judge_weights(items) -> dict[str, float] | None:
    """'JUDGE[=WEIGHT]' items (repeated flags, a YAML list) -> {JUDGE: WEIGHT}; a mapping passes through."""
    if items is None or isinstance(items, dict):
        return items
    out: dict[str, float] = {}
    for item in [items] if isinstance(items, str) else items:
        spec, eq, weight = str(item).rpartition("=") if "=" in str(item) else (str(item), "", "1")
        try:
            if not spec.strip():
                raise ValueError
            out[spec.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"--reward {item!r}: expected JUDGE or JUDGE=WEIGHT, e.g. shapes:graded=1 or "
                             f"openai:gpt-4o=0.5") from None
    if not out:
        raise ValueError("--reward: name at least one judge")
    return out


class GRPOSettings(BaseModel):
    out: str = Field("grpo", description="output folder inside the run directory")
    # what is trained on
    prompts: str = Field("shapes", description="prompts file (.jsonl/.txt/.csv/.parquet) or a built-in suite the "
                                               "policy is trained on")
    split: str | None = Field("train", description="only prompts of this split (None: all)")
    limit: int | None = Field(None, ge=1, description="only the first N prompts")
    reward: dict[str, float] = Field(
        {"shapes": 1.0}, description="reward judge, JUDGE or JUDGE=WEIGHT: shapes, shapes:graded, clip:PATH, "
                                     "reward:RUN/reward, openai:MODEL (with --base-url); several are combined: "
                                     "advantage = sum of weight x each judge's group-normalized reward")
    reward_value: Literal["score", "label"] = Field(
        "score", description="a judgment's reward: its score (shapes: share of concepts right; shapes:graded: graded "
                             "credit; CLIP: cosine; VLM: 1/0, the 1-10 score, VQA share, caption similarity) or its "
                             "label as 1/0 (shapes: aligned)")
    reward_mode: Literal["pointwise", "caption", "vqa"] = Field(
        "pointwise", description="mode of the OpenAI-protocol rewards (the local judges are pointwise)")
    reward_template: str | None = Field(None, description="judge template of the OpenAI-protocol rewards (default "
                                                          "per mode; pointwise_score.v1 for 1-10 scores)")
    # the held-out gold judge
    gold: str | None = Field(None, description="held-out gold judge (e.g. shapes, the exact checker, while the reward "
                                               "is a VLM or a reward model): scored on held-out prompts at eta=0 "
                                               "(the sampler users generate with) and at the training eta, to show "
                                               "reward hacking")
    gold_prompts: str | None = Field(None, description="prompts of the gold evaluation (default: --prompts)")
    gold_split: str | None = Field("heldout", description="split of the gold prompts")
    gold_limit: int | None = Field(None, ge=1, description="only N gold prompts, spread evenly over the split's "
                                                           "(every k-th: a suite's file order groups its concepts)")
    gold_images_per_prompt: int = Field(1, ge=1, description="gold images per prompt and sampler (seeds as "
                                                             "`generate --seed SEED`)")
    gold_every: int = Field(1, ge=1, description="score the gold judge every N epochs (and after the last)")
    gold_train_eta: bool = Field(True, description="also score the gold prompts at the training eta (not only eta=0)")
    # the sampler (the policy)
    epochs: int = Field(20, ge=1, description="epochs: sample a group per prompt, reward, train; a checkpoint after "
                                              "each")
    prompts_per_epoch: int = Field(16, ge=1, description="prompts per epoch (all processes together), drawn without "
                                                         "replacement per epoch")
    group_size: int = Field(8, ge=2, description="samples per prompt (the group its advantages are normalized in)")
    sample_steps: int = Field(20, ge=1, description="denoising steps of the training sampler")
    eta: float = Field(1.0, gt=0, le=1, description="DDIM eta of the training sampler (>0: every step a Gaussian "
                                                    "with an exact log-probability); flow matching: the SDE's noise "
                                                    "level")
    guidance: float = Field(4.0, ge=0, description="classifier-free guidance of the training samples; <= 1: without "
                                                   "guidance (the conditional model alone is the policy, half the "
                                                   "compute, as Flow-GRPO trains)")
    sample_batch: int = Field(32, ge=1, description="samples per forward pass when sampling (the unit sent to the "
                                                    "reward judges while the next batch is drawn)")
    eval_steps: int = Field(20, ge=1, description="denoising steps of the gold evaluation (generate's default)")
    eval_guidance: float = Field(4.0, ge=0, description="guidance of the gold evaluation (generate's default)")
    # the objective
    train_fraction: float = Field(0.5, gt=0, le=1, description="share of each chain's denoising steps trained")
    step_choice: Literal["random", "window"] = Field(
        "random", description="which steps: random (a fresh random subset per minibatch, as DDPO / Flow-GRPO) or "
                              "window (the same contiguous steps from --window-start, as MixGRPO)")
    window_start: int = Field(0, ge=0, description="window: its first step (0 = the noisiest)")
    clip_range: float = Field(1e-4, gt=0, description="PPO clip range of the policy ratio (DDPO, Flow-GRPO: 1e-4)")
    kl_weight: float = Field(0.04, ge=0, description="weight of the KL to the reference (LoRA: adapters disabled; "
                                                     "full: a frozen copy), per step ||mu - mu_ref||^2 / (2 std^2) "
                                                     "averaged over latent elements (Flow-GRPO's; 0 = off)")
    adv_clip: float = Field(5.0, gt=0, description="clip advantages to +-this")
    std_normalize: bool = Field(True, description="divide by the group's reward std (GRPO); off: only subtract the "
                                                  "group mean (Dr. GRPO)")
    inner_epochs: int = Field(1, ge=1, description="passes over each epoch's samples")

    @field_validator("reward", mode="before")
    @classmethod
    def _reward(cls, v):
        return judge_weights(v)


__all__ = ["GRPOSettings", "JUDGE_FIELDS", "judge_weights"]
