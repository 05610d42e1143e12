"""One pydantic model per stage (extra="forbid": a typo in a YAML key is an error, not ignored). The CLI builds
these from flags, `autofeedback run PIPELINE.yaml` from YAML (`--set stage.field=value` overrides a field). Every
field has a description: it is the help text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from .errors import InputError


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def name_values(items, flag: str, form: str, example: str, convert=str, split=str.partition) -> dict:
    """NAME=VALUE strings (the CLI's repeatable flags; a YAML list) -> {NAME: VALUE}; a mapping passes through.
    Shared by YAML and the CLI: the config's field validators call it, so both read the same syntax."""
    if isinstance(items, dict) or items is None:
        return items
    out = {}
    for item in [items] if isinstance(items, str) else items:
        name, eq, value = split(str(item), "=")
        try:
            if not eq or not name.strip() or not value.strip():
                raise ValueError
            out[name.strip()] = convert(value.strip())
        except ValueError:
            raise ValueError(f"{flag} {item!r}: expected {form}, e.g. {example}") from None
    return out


def comma_list(items) -> list | None:
    """'a,b' or ['a,b', 'c'] -> ['a', 'b', 'c'] (a flag given comma-separated or repeated; a YAML list)."""
    if items is None:
        return None
    parts = [p.strip() for item in ([items] if isinstance(items, str) else items) for p in str(item).split(",")]
    return [p for p in parts if p]


class GenerateConfig(StageConfig):
    run_dir: Path = Field(description="run directory; images.parquet and prompts.parquet are written here")
    model: str = Field(description="diffusers text-to-image pipeline: a local folder or a Hub id")
    prompts: str = Field(description="prompts file (.jsonl/.txt/.csv/.parquet) or a built-in suite (shapes)")
    split: str | None = Field(None, description="only prompts of this split (e.g. train, heldout)")
    limit: int | None = Field(None, ge=1, description="only the first N prompts")
    images_per_prompt: int = Field(4, ge=1, description="images per prompt")
    seed: int = Field(0, ge=0, description="base seed; each image's seed is derived from it and recorded")
    steps: int = Field(20, ge=1, description="denoising steps")
    guidance: float = Field(4.0, ge=0, description="classifier-free guidance scale")
    height: int | None = Field(None, ge=8, description="image height (default: the model's)")
    width: int | None = Field(None, ge=8, description="image width (default: the model's)")
    batch_size: int = Field(32, ge=1, description="images per pipeline call, across prompts")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype (bfloat16 is ~2x faster on CPUs with AMX/AVX512-BF16, and on GPUs)")
    channels_last: bool = Field(True, description="channels-last memory format for the UNet and VAE (faster convs)")
    compile: bool = Field(False, description="torch.compile the UNet (pays a one-off compile; for long GPU runs)")
    vae_slicing: bool = Field(False, description="decode the VAE one image at a time (less memory for big batches)")
    vae_tiling: bool = Field(False, description="decode the VAE in tiles (large images on small GPUs)")
    lora: str | None = Field(None, description="LoRA weights (a folder or .safetensors) loaded with load_lora_weights")
    model_name: str | None = Field(None, description="name recorded in the table (default: the model argument)")
    negative_prompt: str | None = Field(None, description="negative prompt for every image")
    flush_every: int = Field(64, ge=1, description="write a shard at least every N images (the resume granularity)")
    progress: bool = Field(True, description="show a progress bar")
    top_up: str | None = Field(None, description="only prompts none of whose images here this judge calls aligned (rejection sampling's top-up: -n 4, judge, -n 8 --top-up shapes: 4 more where 4 failed)")
    scheduler: str | None = Field(None, description="diffusers scheduler class to sample with, built from the model's "
                                  "scheduler config (e.g. DPMSolverMultistepScheduler: DPM-Solver++, fewer steps)")


class JudgeConfig(StageConfig):
    run_dir: Path = Field(description="run directory with images.parquet; judgments.parquet is written here")
    judge: str = Field("shapes", description="judge backend: shapes (the exact checker), openai:MODEL (any "
                                             "OpenAI-compatible server), clip:PATH (CLIP score) or reward:PATH "
                                             "(a model from `train reward`)")
    mode: Literal["pointwise", "pairwise", "listwise", "caption", "vqa"] = Field(
        "pointwise", description="pointwise (one image), pairwise (A vs B, both orders), listwise (rank a prompt's "
                                 "images), caption (describe; similarity to the prompt), vqa (questions from metadata)")
    template: str | None = Field(None, description="built-in judge template name (autofeedback/templates/judges/) "
                                                   "or a path (default per mode, e.g. pointwise_binary.v1; "
                                                   "pointwise_score.v1 for 1-10 scores)")
    limit: int | None = Field(None, ge=1, description="judge at most N new requests")
    # pairing
    both_orders: bool = Field(True, description="pairwise: ask every pair in both orders (position bias check)")
    pairs_per_prompt: int | None = Field(None, ge=1, description="pairwise: at most N pairs per prompt")
    list_size: int = Field(4, ge=2, description="listwise: images per ranking request")
    seed: int = Field(0, description="seed for pair sampling and the listwise presentation order")
    # transport
    base_url: str | None = Field(None, description="OpenAI-compatible base URL (default $OPENAI_BASE_URL or OpenAI; serve:FOLDER: serve-vlm in-process)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    concurrency: int = Field(16, ge=1, description="requests in flight at once")
    rpm: float | None = Field(None, gt=0, description="client-side limit: requests per minute")
    tpm: float | None = Field(None, gt=0, description="client-side limit: tokens per minute")
    timeout: float = Field(60.0, gt=0, description="seconds before one HTTP attempt times out")
    max_retries: int = Field(3, ge=0, description="HTTP retries (the SDK's; honours Retry-After)")
    structured: Literal["auto", "on", "off"] = Field("auto", description="JSON-schema structured output "
                                                                         "(auto: on, off if the server rejects it)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature")
    max_tokens: int = Field(400, ge=16, description="max output tokens per answer")
    # cost
    max_cost: float | None = Field(None, gt=0, description="stop sending once this many USD are spent or reserved")
    price_input: float | None = Field(None, ge=0, description="USD per 1M input tokens (default: built-in table)")
    price_output: float | None = Field(None, ge=0, description="USD per 1M output tokens (default: built-in table)")
    batch: bool = Field(False, description="use the OpenAI Batch API: submit now, collect on a later run")
    # images
    detail: Literal["auto", "low", "high"] | None = Field(None, description="image detail sent to the API")
    image_max_side: int | None = Field(None, ge=8, description="downscale images to at most this many pixels a side")
    image_format: Literal["png", "jpeg"] = Field("png", description="image encoding sent to the API")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality when image_format=jpeg")


class DiffusionTrainConfig(StageConfig):
    """Settings every diffusion trainer shares (train dpo, rwr, grpo)."""
    run_dir: Path = Field(description="run directory with the training data tables")
    model: str = Field(description="base diffusers pipeline (local folder or Hub id) whose UNet is trained")
    lora_rank: int = Field(8, ge=0, description="LoRA rank; 0 = full fine-tune")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha (default: the rank)")
    lora_targets: list[str] = Field(["to_q", "to_k", "to_v", "to_out.0"], description="UNet modules given LoRA")
    batch_size: int = Field(8, ge=1, description="examples per step and process")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(1e-4, gt=0, description="learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 = off)")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="mixed precision (GPU)")
    device: Literal["auto", "cpu"] = Field("auto", description="auto: what accelerate finds; cpu: force CPU")
    seed: int = Field(0, description="seed (batches, noise, timesteps)")
    keep_checkpoints: int = Field(2, ge=0, description="keep the last N checkpoints (0 = all)")
    resume: bool = Field(True, description="continue from the latest checkpoint in the output folder")
    progress: bool = Field(True, description="show a progress bar with ETA on stderr (when it is a terminal)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="save an exponential moving average of the trained weights "
                                                         "with this decay (e.g. 0.99; 0 = off, save the last weights)")
    train_text_encoder: bool = Field(False, description="train the text encoder too (full fine-tune only): where a "
                                                        "prompt's words, e.g. its count, become conditioning")
    text_encoder_lr: float | None = Field(None, gt=0, description="learning rate of the text encoder with "
                                                                  "--train-text-encoder (default: --lr)")
    interpolate: float = Field(1.0, gt=0, le=1, description="save base + this x (tuned - base), UNet and text encoder "
                                                            "(WiSE-FT; full fine-tune only; 1 = the tuned weights)")


class TrainConfig(DiffusionTrainConfig):
    """The trainers on a fixed dataset (train dpo, rwr): optimizer steps over the run's tables."""
    steps: int = Field(200, ge=1, description="optimizer steps")
    checkpoint_every: int = Field(50, ge=0, description="a resumable checkpoint every N steps and at the end (0: off)")
    log_every: int = Field(10, ge=1, description="print every N steps")
    uncond_prob: float = Field(0.0, ge=0, le=1, description="train with the empty prompt this often (keeps the "
                                                            "unconditional branch classifier-free guidance uses in step)")
    timestep_min: float = Field(0.0, ge=0, lt=1, description="sample training timesteps from this fraction of the "
                                                            "schedule upward (e.g. 0.6: only high noise, where layout "
                                                            "and counts are decided)")
    random_flip: bool = Field(False, description="mirror each training image left-right with probability 0.5 "
                                                 "(diffusers' --random_flip; a DPO pair's two images together)")
    vae_latents: Literal["mode", "sample"] = Field(
        "mode", description="training images -> latents: the VAE posterior's mode (as the shapes model was "
                            "pre-trained; its posterior std is 0.3x the latent std) or a sample (diffusers' scripts)")


class TrainDPOConfig(TrainConfig):
    out: str = Field("dpo", description="output folder inside the run directory")
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="Diffusion-DPO loss: sigmoid (DPO) or ipo")
    beta: float = Field(2000.0, gt=0, description="DPO beta (KL strength; Wallace et al. use 2000-5000 for SD)")
    reference: Literal["adapters", "copy"] = Field(
        "adapters", description="LoRA reference model: the same UNet with adapters disabled (no extra memory), or "
                                "a frozen copy of the base UNet (the common approach; for comparison)")
    sft_weight: float = Field(0.0, ge=0, description="add this times the winner's denoising loss")
    max_pairs: int | None = Field(None, ge=1, description="train on at most N pairs")
    pairs_source: str | None = Field(None, description="only pairs whose source starts with this (e.g. judgments:, "
                                                       "human_labels:); ties (margin 0) are always skipped")


class TrainRWRConfig(TrainConfig):
    out: str = Field("rwr", description="output folder inside the run directory")
    judge: str | None = Field(None, description="use this judge's pointwise judgments (default: all; mean per image)")
    reward: Literal["label", "score", "none"] = Field("label", description="the judge's label (1/0), its score in "
                                                  "[0, 1], or none: every judged sample at 1 (no-feedback control)")
    reg_weight: float = Field(1.0, ge=0, description="weight of the pre-training regularizer (Lee et al.'s beta)")
    reg_images: Path | None = Field(None, description="images table for the regularizer (default: the run's own "
                                                      "images, unweighted)")
    split: str | None = Field(None, description="only images of prompts in this split (e.g. train: never learn from "
                                                "held-out prompts)")
    images_model: str | None = Field(None, description="only images generated by this model (images.model; e.g. the "
                                                       "base model, not an earlier fine-tune)")
    temperature: float | None = Field(None, ge=0, description="weights within each prompt: None = the reward (Lee et al.); T >= 0 = a softmax of reward / T over its images (0 = its best image(s): best-of-n), so a prompt whose images all failed still learns from its best one")
    min_reward: float | None = Field(None, description="learn only from samples whose reward is at least this (e.g. 1 "
                                                       "with --reward label: the aligned ones, rejection sampling as "
                                                       "in RAFT/ReST); prompts with none are left out")
    hindsight: list[str] = Field([], description="with --reward label, also learn from each sample the judge rejected only for these concepts (judgments.answers, e.g. count), under the judge's caption of it (hindsight relabeling) when that caption is a prompt of the run in --split")
    anchor_weight: float = Field(0.0, ge=0, description="KL to the reference on the regularizer images: this times "
                                                        "||v_model - v_reference||^2 (ties the model to the base "
                                                        "beyond the feedback)")
    anchor_model: str | None = Field(None, description="the anchor's reference pipeline (default: --model; name the "
                                                       "base model when --model is an earlier round's fine-tune)")


class EmbedConfig(StageConfig):
    run_dir: Path = Field(description="run directory; embeddings.parquet is written here")
    clip: str = Field(description="transformers CLIPModel folder or Hub id (e.g. data/models/shapes-clip, "
                                  "openai/clip-vit-base-patch32, yuvalkirstain/PickScore_v1)")
    device: str = Field("cpu", description="torch device")
    batch_size: int = Field(256, ge=1, description="images or texts per forward pass")


class TrainRewardConfig(StageConfig):
    run_dir: Path = Field(description="run directory with labels.parquet / preferences.parquet")
    clip: str = Field(description="CLIP whose frozen embeddings the reward head reads (folder or Hub id)")
    out: str = Field("reward", description="output folder inside the run directory")
    objective: Literal["mse", "bt"] = Field(
        "mse", description="mse: regress the judge's per-image labels (Lee et al.); bt: Bradley-Terry on preference "
                           "pairs (ties kept by `pairs --tie-policy keep` are soft 0.5 labels)")
    aux_weight: float = Field(0.1, ge=0, description="weight of Lee et al.'s prompt-classification loss (0 = off)")
    temperature: float = Field(0.1, gt=0, description="temperature T of the prompt-classification softmax")
    val_split: str | None = Field("heldout", description="prompts of this split validate (unseen prompts); without "
                                                         "any, a hashed --val-fraction of prompts does")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of prompts held out when --val-split matches none")
    hidden: list[int] = Field([256, 64], description="MLP hidden widths")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout between MLP layers")
    steps: int = Field(2000, ge=1, description="optimizer steps")
    batch_size: int = Field(256, ge=1, description="labels (or pairs) per step")
    lr: float = Field(1e-3, gt=0, description="learning rate (AdamW, cosine decay)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    eval_every: int = Field(100, ge=1, description="validation loss every N steps (the loss curve)")
    seed: int = Field(0, description="seed (initialization, batches, hashed split)")
    device: str = Field("cpu", description="torch device for embedding (the head trains on CPU)")
    progress: bool = Field(True, description="print the loss every few hundred steps")


class SummaryConfig(StageConfig):
    group_by: list[str] = Field(["split"], description="prompt columns to group the alignment table by")
    judge: str | None = Field(None, description="judge whose verdicts are summarized (default: all)")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for the 95% confidence intervals")
    seed: int = Field(0, description="bootstrap seed")


STEP_CONFIGS: dict[str, type[StageConfig]] = {}  # filled at the end of this module, once every class exists


class PipelineConfig(StageConfig):
    run_dir: Path = Field(description="run directory of the whole pipeline (relative to base_dir)")
    base_dir: Path = Field(Path("."), description="relative paths here are relative to this folder (itself to the YAML)")
    steps: list[dict] = Field(description="stages in order, each {stage_name: {settings}}; run_dir is filled in")
    summary: SummaryConfig = Field(default_factory=SummaryConfig, description="the alignment table at the end")


def format_validation_error(exc: ValidationError, where: str) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        problems.append(f"{loc}: {err['msg']}{shown}")
    return f"{where}: " + "; ".join(problems)


def build(cls: type[StageConfig], where: str, **values) -> StageConfig:
    try:
        return cls(**values)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, where)) from None


class EvalConfig(StageConfig):
    run_dir: Path = Field(description="run directory; report/metrics.json and report/report.html are written here "
                                      "(its judgments/images/prompts tables are read when present)")
    human: Path | None = Field(None, description="human labels (Parquet/CSV/JSONL, long format: item_id, rater, "
                                                 "score|label|choice, optional category, prompt_id); default: "
                                                 "RUN/human_labels.parquet if present")
    judgments: list[Path] = Field(default_factory=list, description="extra judge/metric/reward-model ratings in "
                                                                    "the same long format (repeatable)")
    run_judgments: bool = Field(True, description="also evaluate the run's own RUN/judgments.parquet")
    column_map: dict[str, str] | list[str] = Field(
        default_factory=dict, description="use a column under another name, TARGET=SOURCE, e.g. item_id=image or "
                                          "score=rating; TARGET='text' a constant (mode=pairwise works unquoted); "
                                          "TARGET=A+B joins columns; human:/judgments: prefix = one side (repeatable)")
    labels: dict[str, float] | list[str] = Field(
        default_factory=dict, description="label words to numbers, e.g. yes=1,partly=0.5,no=0 (more than two "
                                          "levels make the labels a score)")
    failed: Literal["wrong", "tie", "drop"] = Field(
        "wrong", description="pairwise judges: an item the judge was asked but gave no usable answer counts as "
                             "wrong (as arena benchmarks do), as a tie, or is left out (drop)")
    bootstrap_unit: Literal["auto", "prompt", "item"] = Field(
        "auto", description="what the bootstrap resamples: prompts (clusters) when every item has a prompt_id "
                            "(auto), or items")
    judge_threshold: dict[str, float | str] | list[str] = Field(
        default_factory=dict, description="judge on another scale than the humans: judge >= T counts as aligned, "
                                          "for accuracy, kappa and nominal alpha (T, auto, or NAME=T; repeatable)")
    judge_scale: dict[str, list[float]] | list[str] = Field(
        default_factory=dict, description="rescale a judge's LO:HI range linearly onto the human rating values "
                                          "(nearest value), e.g. 0:10 or NAME=0:10 (repeatable)")
    tie_policy: Literal["half", "wrong", "drop", "match"] = Field(
        "half", description="pairwise accuracy when the judge ties a pair the humans order: half (counts 1/2), "
                            "wrong (0), drop (leave out); match: ties count and are right only if humans tie too")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples (over items / prompts) for the 95% CIs")
    seed: int = Field(0, description="bootstrap and random-baseline seed")
    judge: str | None = Field(None, description="judge for before/after and the image grids (default: the one "
                                                "with most pointwise judgments)")
    models: list[str] | None = Field(None, min_length=2, description="models to compare (two or more, baseline "
                                                                    "first; default: by the age of their first image)")
    split: str | None = Field(None, description="before/after on prompts of this split only (e.g. heldout)")
    min_rater_items: int = Field(10, ge=2, description="human ceiling: leave out raters with fewer items")
    html: bool = Field(True, description="write report/report.html")
    grid: int = Field(8, ge=1, le=64, description="images per grid in the report")
    wait: bool = Field(False, description="if another command is writing to RUN, wait for it instead of exiting")
    progress: bool = Field(True, description="show a progress bar over the eval steps with ETA on stderr (a terminal)")
    # judge ensembles and calibration (issue #10; autofeedback/eval/ensembles.py, autofeedback/ensemble.py)
    ensemble: list[Literal["zmean", "rankmean", "vote", "learned", "logistic"]] = Field(
        default_factory=list, description="combine the pointwise judges per item: zmean (mean z-score), rankmean "
                                          "(mean percentile rank), vote (share voting aligned), learned (ridge fit "
                                          "to the human mean), logistic (P(aligned)); learned ones cross-fitted")
    ensemble_judges: list[str] | None = Field(None, description="ensemble members: judge names or glob patterns, "
                                                                "e.g. 'tifa_*' (default: every pointwise judge)")
    folds: int = Field(5, ge=2, description="cross-fitting folds for learned ensembles and calibration (grouped by "
                                            "prompt_id when every item has one)")
    fold_repeats: int = Field(5, ge=1, description="nested ensemble selection: fold splits (seeds) it is repeated "
                                                   "over; their spread is inside the CI")
    ridge: float = Field(1.0, ge=0, description="L2 penalty of the learned and logistic combinations")
    calibration: Literal["isotonic", "platt"] | None = Field(
        None, description="map each judge's scores to P(humans call it aligned), cross-fitted, and report ECE "
                          "(default: isotonic when --ensemble is given, else off)")
    aligned_threshold: float | None = Field(None, description="aligned = human mean >= this (default: min + 3/4 of "
                                                              "the rating range: 4 on a 1-5 scale; yes/no labels: "
                                                              "the majority label)")
    ece_bins: int = Field(10, ge=2, le=100, description="equal-width bins of predicted probability for the ECE")
    judge_cost: dict[str, float] = Field(default_factory=dict, description="USD per judge for the selection, "
                                         "NAME=USD (overrides judgments.cost_usd; judges with no cost are free)")
    budget: float | None = Field(None, ge=0, description="USD budget of the greedy judge selection (default: none)")

    @field_validator("judge_cost", mode="before")
    @classmethod
    def _judge_cost(cls, v):
        return name_values(v, "--judge-cost", "NAME=USD", "gpt-4o=1.25", float, str.rpartition)

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v):
        return comma_list(v) or None

    @field_validator("ensemble", mode="before")
    @classmethod
    def _ensemble(cls, v):  # comma-separated or repeated; 'all' = every method
        methods = get_args(get_args(cls.model_fields["ensemble"].annotation)[0])
        out: list = []
        for m in comma_list(v) or []:
            out += [x for x in (methods if m == "all" else [m]) if x not in out]
        return out


# ------------------------------------------------------------------------ preference datasets (issue #5)
JUDGE_MODES = ("pointwise", "pairwise", "listwise", "caption", "vqa")


class PairsConfig(StageConfig):
    run_dir: Path = Field(description="run directory; preferences.parquet, labels.parquet and augmentations.parquet "
                                      "are written here")
    source: Literal["judgments", "human_labels"] = Field(
        "judgments", description="table the pairs come from: judgments (AI judges) or human_labels "
                                 "(imported with `autofeedback import-labels`)")
    judges: list[str] | None = Field(None, description="only these judges (judgments.judge, or human_labels.annotator); "
                                                       "default: all")
    modes: list[Literal["pointwise", "pairwise", "listwise", "caption", "vqa"]] | None = Field(
        None, description="only rows of these modes (default: all)")
    split: str | None = Field(None, description="only rows of prompts in this split (e.g. train: keep held-out "
                                                "prompts out of training pairs)")
    combine: Literal["majority", "mean"] = Field(
        "majority", description="several judges on one pair: majority (of their verdicts) or mean (of their signed "
                                "margins); agreement records the share that agreed")
    dedupe: bool = Field(True, description="one row per image pair, votes of all judges combined; --no-dedupe keeps "
                                           "one row per judge and pair")
    orders: Literal["consistent", "any"] = Field(
        "consistent", description="pairwise asked in both orders: consistent (only order-consistent verdicts; an "
                                  "inconsistent pair is a tie, a pair with one order missing is dropped) or any "
                                  "(each order is a vote)")
    pointwise_value: Literal["auto", "label", "score"] = Field(
        "auto", description="what pointwise pairs compare: label (aligned vs not aligned), score (with --min-margin), "
                            "auto (label when every row of the judge has one, else score)")
    tie_policy: Literal["drop", "keep"] = Field(
        "drop", description="ties (equal scores, tied ranks, inconsistent orders, split votes, below --min-margin): "
                            "drop them (counted) or keep them with margin 0 (soft labels)")
    min_margin: float = Field(0.0, ge=0, description="a pair whose margin (score difference, rank distance) is below "
                                                     "this is a tie")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="at most N pairs per prompt (seeded sample)")
    seed: int = Field(0, description="seed for --max-pairs-per-prompt sampling and prompt augmentations")
    labels: bool = Field(True, description="also write labels.parquet: one pointwise label/score per image")
    augment: int = Field(4, ge=0, description="augmentations.parquet: N-1 perturbed prompts per labeled image "
                                              "(Lee et al.); 0 or 1 = none")
    ensemble: Literal["zmean", "rankmean", "vote"] | None = Field(
        None, description="combine the pointwise judges' scores per image into one judge before pairing: zmean "
                          "(mean z-score), rankmean (mean percentile rank), vote (share voting aligned)")


class ImportLabelsConfig(StageConfig):
    file: Path = Field(description="labels file: .csv, .tsv, .jsonl/.json or .parquet")
    run_dir: Path = Field(description="run directory; human_labels.parquet (and prompts.parquet) are written here")
    kind: Literal["auto", "ratings", "choices", "rankings"] = Field(
        "auto", description="ratings (one image: label and/or score), choices (two images: which one, or tie), "
                            "rankings (N images: ranks, ties allowed); auto: from the columns")
    column_map: dict[str, str] = Field(default_factory=dict, description="use a column under another name, "
                                       "FIELD=COLUMN, e.g. image_ids=generations (repeatable)")
    annotator: str | None = Field(None, description="annotator name when the file has no annotator column "
                                                    "(default: the file name)")
    suite: str = Field("external", description="suite name in prompt_id = hash(suite, prompt) for prompts given "
                                               "as text")
    prompts: bool = Field(True, description="also add the prompts given as text to RUN/prompts.parquet")

    @field_validator("column_map", mode="before")
    @classmethod
    def _column_map(cls, v):
        return name_values(v, "--map", "FIELD=COLUMN", "image_ids=generations")


class ExportConfig(StageConfig):
    run_dir: Path = Field(description="run directory with preferences.parquet and images.parquet")
    format: Literal["hf", "pickapic"] = Field(
        "hf", description="hf: chosen/rejected as Image features (+ labels, augmentations); pickapic: caption, "
                          "jpg_0, jpg_1, label_0, label_1 (JPEG bytes), the layout Diffusion-DPO scripts read")
    out: Path | None = Field(None, description="output folder (default RUN/export/FORMAT); it is replaced")
    sources: list[str] | None = Field(None, description="only pairs whose source starts with one of these "
                                                        "(e.g. judgments, human_labels)")
    license: str = Field("other", description="licence id for the card (e.g. apache-2.0, cc-by-4.0); default other: "
                                              "the images follow the generator model's licence")
    pretty_name: str | None = Field(None, description="dataset title in the card (default: from the run directory)")
    jpeg_quality: int = Field(95, ge=10, le=100, description="pickapic: JPEG quality of jpg_0/jpg_1")
    max_shard_mb: float = Field(500.0, gt=0, description="Parquet shard size limit in MB")
    seed: int = Field(0, description="pickapic: seed for which side (0 or 1) the chosen image goes")


class PublishConfig(StageConfig):
    run_dir: Path = Field(description="run directory to publish (exported first)")
    repo_id: str = Field(description="Hub dataset repository, ORG/NAME")
    private: bool = Field(False, description="create the repository private")
    dry_run: bool = Field(False, description="only write the dataset folder; upload nothing")
    format: Literal["hf", "pickapic"] = Field("hf", description="dataset layout (see `autofeedback export`)")
    out: Path | None = Field(None, description="dataset folder (default RUN/export/FORMAT)")
    license: str = Field("other", description="licence id for the card")
    pretty_name: str | None = Field(None, description="dataset title in the card")
    token_env: str = Field("HF_TOKEN", description="environment variable holding the Hub token (else the login "
                                                   "cache of `hf auth login`); never printed or written")
    endpoint: str | None = Field(None, description="Hub endpoint (default $HF_ENDPOINT or huggingface.co)")
    commit_message: str | None = Field(None, description="commit message (default: what was exported)")


class LabelConfig(StageConfig):
    run_dir: Path = Field(description="run directory with images.parquet; human_labels.parquet is written here")
    mode: Literal["pointwise", "pairwise"] = Field(
        "pointwise", description="pointwise (one image: good/bad) or pairwise (two images of one prompt: A/B/tie)")
    annotator: str | None = Field(None, description="annotator name (default: typed into the page)")
    host: str = Field("127.0.0.1", description="address to listen on (127.0.0.1: this machine only)")
    port: int = Field(8765, ge=0, le=65535, description="port to listen on (0 = any free port)")
    image_root: Path | None = Field(None, description="also serve images stored as paths under this folder (by "
                                                      "default only paths inside the run directory are served)")
    order: Literal["random", "disagreements", "stratified"] = Field(
        "random", description="item order: random (seeded), disagreements (items the judges disagree on first), "
                              "stratified (round-robin over prompt categories)")
    seed: int = Field(0, description="seed for the order, the pairwise sample and left/right sides")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="pairwise: at most N pairs per prompt (seeded "
                                                                     "sample; default all pairs)")
    token: str | None = Field(None, description="token the page sends with every answer (default: a random one "
                                                "per server start)")
    export_label_studio: Path | None = Field(None, description="instead of serving: write the items (and the run's "
                                                              "labels) as Label Studio tasks to this JSON file, "
                                                              "and its labeling config next to it (.xml)")
    import_label_studio: Path | None = Field(None, description="instead of serving: read a Label Studio JSON export "
                                                              "of those tasks into human_labels")


# train grpo: its own settings (config_grpo.py), the trainers' shared ones, and the judge stage's transport fields
from .config_grpo import JUDGE_FIELDS, GRPOSettings  # noqa: E402
TrainGRPOConfig = create_model("TrainGRPOConfig", __base__=(GRPOSettings, DiffusionTrainConfig), __module__=__name__,
                               **{f: (JudgeConfig.model_fields[f].annotation, JudgeConfig.model_fields[f])
                                  for f in JUDGE_FIELDS})


class Stage(NamedTuple):
    config: type[StageConfig]
    module: str                # has run(cfg) and format_summary(summary, cfg)
    command: tuple[str, ...]   # CLI command path, e.g. ("train", "dpo")
    pipeline: bool = True      # a step of a pipeline YAML (`autofeedback run`)


# THE registry of stages: the CLI, the pipeline runner (run.py) and STEP_CONFIGS all read it.
STAGES: dict[str, Stage] = {
    "generate": Stage(GenerateConfig, "autofeedback.generate", ("generate",)),
    "judge": Stage(JudgeConfig, "autofeedback.judge", ("judge",)),
    "pairs": Stage(PairsConfig, "autofeedback.pairs", ("pairs",)),
    "train_dpo": Stage(TrainDPOConfig, "autofeedback.train_dpo", ("train", "dpo")),
    "train_rwr": Stage(TrainRWRConfig, "autofeedback.train_rwr", ("train", "rwr")),
    "train_grpo": Stage(TrainGRPOConfig, "autofeedback.train_grpo", ("train", "grpo")),
    "eval": Stage(EvalConfig, "autofeedback.eval.stage", ("eval",)),
    "embed": Stage(EmbedConfig, "autofeedback.embeddings", ("embed",)),
    "train_reward": Stage(TrainRewardConfig, "autofeedback.reward", ("train", "reward")),
    "import_labels": Stage(ImportLabelsConfig, "autofeedback.labels", ("import-labels",), pipeline=False),
    "export": Stage(ExportConfig, "autofeedback.export", ("export",), pipeline=False),
    "publish": Stage(PublishConfig, "autofeedback.publish", ("publish",), pipeline=False),
    "label": Stage(LabelConfig, "autofeedback.label_server", ("label",), pipeline=False),
}
STEP_CONFIGS.update({name: s.config for name, s in STAGES.items() if s.pipeline})
