"""Configuration: one documented, validated dataclass per phase, filled from a small YAML preset.

A preset is a YAML file in ``configs/``. Every key must be declared by a dataclass below; an
unknown key is an error that names it, so a typo never silently falls back to a default.
Notebooks may override single fields (papermill parameters) through ``load_config(overrides=...)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .paths import CONFIGS_DIR, DATA_DIR

TINY_MODEL = "tiny"  # sentinel: the embedded model built by `empathy_workbook.models.tiny`

SFT_BATCHING = ("padded", "length_grouped", "padding_free")

JUDGE_SCORING = ("json", "probability")
PROBABILITY_LAYOUTS = ("one_prompt", "prefix_cache")
FILTER_WITH = ("judge", "second_judge")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a caring healthcare assistant for people concerned about falls. "
    "Acknowledge how the person feels, show that their worry makes sense, and offer "
    "gentle, practical next steps. Keep answers short enough to read on a phone."
)


class ConfigError(ValueError):
    """A preset or override that cannot describe a valid run."""


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING,
          one_or_list: bool = False):
    """A dataclass field whose one-line help text is kept in its metadata. `one_or_list`: a list field that also
    accepts a single item written on its own (read as a list of one)."""
    metadata = {"help": text, "one_or_list": one_or_list}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ModelConfig:
    name_or_path: str = _help("hub id, local folder, or 'tiny' for the embedded model", TINY_MODEL)
    load_in_4bit: bool = _help("load the training base in 4-bit (CUDA only; ignored on CPU)", False)
    trust_remote_code: bool = _help("run code shipped with a hub model; off unless you trust it", False)
    use_unsloth: bool = _help("use Unsloth when CUDA and the package are available", True)

    def __post_init__(self):
        _require(bool(self.name_or_path), "model.name_or_path is empty: use a hub id, a folder, or 'tiny'")


@dataclass
class DataConfig:
    source: str = _help("hub data set id or a local .json/.jsonl/.csv/.parquet with Context/Response",
                        "data/support_corpus.jsonl")
    mix_in: list = _help("extra local files in the same schema mixed into the data (e.g. fall-risk corpus)",
                         factory=list)
    system_prompt: str = _help("system message placed before every user turn", DEFAULT_SYSTEM_PROMPT)
    max_tokens: int = _help("drop pairs whose rendered prompt+answer is longer than this many tokens", 512)
    val_fraction: float = _help("share of distinct questions held out for validation (0.05-0.3)", 0.1)
    seed: int = _help("seed for the grouped split", 42)
    artifacts: str = _help("URLs, e-mail addresses, phone numbers, self-promotion, sign-offs and repeated sentences "
                           "in a row: 'strip' removes the sentence holding them, 'drop' drops the row", "strip")
    max_answer_words: int = _help("drop pairs whose answer is longer than this many words, so training matches the "
                                  "persona's short answers (0 = no limit)", 0)

    def __post_init__(self):
        _require(self.artifacts in ("strip", "drop"), f"data.artifacts={self.artifacts!r}: use 'strip' or 'drop'")
        _require(self.max_answer_words >= 0, f"data.max_answer_words={self.max_answer_words}: use 0 (off) or a count")
        _require(0.0 < self.val_fraction < 0.5, f"data.val_fraction={self.val_fraction}: use a value in (0, 0.5)")
        _require(self.max_tokens >= 32, f"data.max_tokens={self.max_tokens}: use at least 32")
        _require(isinstance(self.mix_in, list), "data.mix_in must be a list of file paths")


@dataclass
class LoraConfig:
    r: int = _help("rank of the low-rank update (8-64)", 16)
    alpha: int = _help("scale numerator: the update is multiplied by alpha / r", 16)
    dropout: float = _help("dropout on the LoRA input (0-0.1)", 0.0)
    target_modules: list = _help("linear layers that get an adapter", factory=lambda: list(LORA_TARGETS))
    trainable_tokens: list = _help("tokens whose embedding rows train with the adapter, e.g. a base model's never-seen "
                                   "chat tokens ([] = none)", factory=list)

    def __post_init__(self):
        _require(self.r > 0 and self.alpha > 0, "lora.r and lora.alpha must be positive")
        _require(all(isinstance(t, str) and t for t in self.trainable_tokens),
                 f"lora.trainable_tokens={self.trainable_tokens!r}: list the tokens as strings, e.g. ['<end_of_turn>']")
        _require(0.0 <= self.dropout < 1.0, f"lora.dropout={self.dropout}: use a value in [0, 1)")
        _require(len(self.target_modules) > 0, "lora.target_modules is empty")


@dataclass
class TrainConfig:
    """Fields that SFT and DPO share (batching, schedule, checkpoints, early stopping)."""

    epochs: float = _help("passes over the training data", 3.0)
    learning_rate: float = _help("peak learning rate", 2e-4)
    batch_size: int = _help("sequences per device step", 4)
    grad_accum: int = _help("steps accumulated per optimizer update (effective batch = batch_size * grad_accum)", 4)
    warmup_ratio: float = _help("share of updates with a linear warm-up", 0.03)
    optim: str = _help("optimizer name understood by transformers ('adamw_8bit' needs CUDA)", "adamw_torch")
    precision: str = _help("'fp32', 'fp16' or 'bf16'; CPU always trains in fp32", "fp32")
    max_length: int = _help("truncate sequences to this many tokens", 512)
    max_steps: int = _help("stop after this many updates (-1 = run all epochs)", -1)
    eval_steps: int = _help("measure validation loss every N updates", 10)
    save_steps: int = _help("write a checkpoint every N updates (resume point)", 10)
    early_stopping_patience: int = _help("stop after N evaluations without improvement (0 = never)", 3)
    logging_steps: int = _help("log the training loss every N updates", 1)
    seed: int = _help("training seed", 42)
    gradient_checkpointing: bool = _help("recompute activations in the backward pass: less memory, ~20-30 % slower", True)
    row_sampler: str = _help("how rows are dealt into updates: 'auto' (the batching's own order in one process; in "
                             "several, every row once per epoch and the same rows per update as in one) or "
                             "'rebalanced' (that multi-process order in one process too, to compare runs)", "auto")

    def __post_init__(self):
        _require(self.learning_rate > 0, f"learning_rate={self.learning_rate} must be positive")
        _require(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        _require(self.epochs > 0 or self.max_steps > 0, "set epochs > 0 or max_steps > 0")
        _require(self.precision in ("fp32", "fp16", "bf16"), f"precision={self.precision!r}: use fp32, fp16 or bf16")
        _require(0.0 <= self.warmup_ratio < 0.5, f"warmup_ratio={self.warmup_ratio}: use a value in [0, 0.5)")
        _require(self.eval_steps >= 1 and self.save_steps >= 1, "eval_steps and save_steps must be >= 1")
        _require(self.early_stopping_patience >= 0, "early_stopping_patience must be >= 0 (0 = never stop early)")
        _require(self.row_sampler in ("auto", "rebalanced"),
                 f"row_sampler={self.row_sampler!r}: use 'auto' or 'rebalanced'")
        # the best checkpoint is kept by evaluation; it must be one that was saved
        _require(self.save_steps % self.eval_steps == 0,
                 f"save_steps={self.save_steps} must be a multiple of eval_steps={self.eval_steps} "
                 "(the best checkpoint is chosen at evaluations)")


@dataclass
class SamplingConfig:
    """Qwen's advice for non-thinking chat: temperature 0.7, top-p 0.8, top-k 20."""

    temperature: float = _help("softmax temperature (0 = greedy)", 0.7)
    top_p: float = _help("nucleus sampling mass", 0.8)
    top_k: int = _help("sample among the k most likely tokens (0 = off)", 20)
    min_p: float = _help("drop tokens below this share of the top token's probability (0 = off; 0.05-0.1 "
                         "tames high temperatures)", 0.0)
    repetition_penalty: float = _help("1.0 = off; below 1.0 encourages repetition", 1.0)
    max_new_tokens: int = _help("answer length cap in tokens", 160)
    batch_size: int = _help("prompts generated together (left-padded)", 8)
    seed: int = _help("sampling seed", 1234)

    def __post_init__(self):
        _require(self.temperature >= 0, "sampling.temperature must be >= 0")
        _require(0 < self.top_p <= 1, "sampling.top_p must be in (0, 1]")
        _require(self.top_k >= 0, f"sampling.top_k={self.top_k}: use 0 (off) or a positive count")
        _require(0.0 <= self.min_p < 1.0, f"sampling.min_p={self.min_p}: use a value in [0, 1) (0 = off)")
        _require(self.max_new_tokens >= 1 and self.batch_size >= 1, "max_new_tokens and batch_size must be >= 1")


@dataclass
class SFTConfig:
    lora: LoraConfig = _help("adapter shape", factory=LoraConfig)
    train: TrainConfig = _help("optimizer and schedule", factory=TrainConfig)
    batching: str = _help(
        "how rows become batches: 'padded' (random order, padded to the batch's longest row), "
        "'length_grouped' (rows of similar length share a batch: little padding, any attention kernel) or "
        "'padding_free' (a batch's rows joined into one sequence with restarting positions: no padding at all; "
        "fastest with a flash-attention kernel)", "padded")
    spot_check_prompts: int = _help("validation prompts answered by base and SFT side by side", 5)
    spot_check: SamplingConfig = _help("sampling for the side-by-side check", factory=SamplingConfig)

    def __post_init__(self):
        _require(self.spot_check_prompts >= 1, "sft.spot_check_prompts must be >= 1")
        _require(self.batching in SFT_BATCHING, f"sft.batching={self.batching!r}: use one of {list(SFT_BATCHING)}")


@dataclass
class JudgeConfig:
    backend: str = _help("'rubric' (offline baseline), 'transformers' or 'llama_cpp'", "rubric")
    model: str = _help("judge model: hub id or folder (transformers), .gguf path (llama_cpp)", "")
    temperature: float = _help("judge sampling temperature (low = consistent)", 0.1)
    max_new_tokens: int = _help("room for the judge's JSON answer", 200)
    batch_size: int = _help("responses scored together (transformers backend)", 8)
    n_ctx: int = _help("context window for the llama_cpp backend", 4096)
    scoring: str = _help("LLM judges: 'json' (decode a JSON score object) or 'probability' (expected score from "
                         "the next-token probabilities of 1-10 where each score is written; one pass, no parse "
                         "failures); the rubric ignores it", "json")
    probability_layout: str = _help("probability scoring: 'one_prompt' (one sequence carrying the five score "
                                    "positions, branches masked apart) or 'prefix_cache' (one prompt per criterion "
                                    "over a cached shared prefix); bench/bench_judge.py measures both (one_prompt: half the sequential passes)",
                                    "one_prompt")
    n_gpu_layers: int = _help("llama_cpp: layers offloaded to the GPU (-1 = all; only used when CUDA is present)", -1)

    def __post_init__(self):
        _require(self.backend in ("rubric", "transformers", "llama_cpp"),
                 f"judge.backend={self.backend!r}: use 'rubric', 'transformers' or 'llama_cpp'")
        _require(self.backend == "rubric" or bool(self.model),
                 f"judge.model is empty: the {self.backend!r} judge needs a model")
        _require(self.scoring in JUDGE_SCORING, f"judge.scoring={self.scoring!r}: use one of {list(JUDGE_SCORING)}")
        _require(self.probability_layout in PROBABILITY_LAYOUTS,
                 f"judge.probability_layout={self.probability_layout!r}: use one of {list(PROBABILITY_LAYOUTS)}")
        _require(self.batch_size >= 1, f"judge.batch_size={self.batch_size}: use at least 1")


@dataclass
class PreferenceConfig:
    sampling: SamplingConfig = _help("how rejected answers are sampled from the SFT model",
                                     factory=lambda: SamplingConfig(temperature=1.5, top_p=1.0, top_k=0))
    truncate_rate: float = _help("share of rejected answers cut at 70 % of their length", 0.0)
    drop_first_sentence_rate: float = _help("share of rejected answers without their first sentence", 0.0)
    low_repetition_penalty_rate: float = _help("share sampled with a repetition penalty below 1.0", 0.0)
    low_repetition_penalty: float = _help("the penalty used for that share (< 1.0)", 0.9)
    judge: JudgeConfig = _help("who scores the answers", factory=JudgeConfig)
    second_judge: JudgeConfig = _help("an independent judge scored beside the main one and reported "
                                      "(default: the rubric)", factory=JudgeConfig)
    filter_with: str = _help("whose score gap decides which pairs are kept: 'judge' or 'second_judge'", "judge")
    gap: float = _help("keep pairs with chosen - rejected >= gap", 2.0)
    max_prompts: int = _help("use at most this many training prompts (-1 = all)", -1)
    max_val_prompts: int = _help("validation prompts that get pairs too, for DPO's held-out check (-1 = all)", -1)

    def __post_init__(self):
        rates = ("truncate_rate", "drop_first_sentence_rate", "low_repetition_penalty_rate")
        for name in rates:
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"preferences.{name}={value}: use a value in [0, 1]")
        # each rejected answer gets at most one degradation, so the shares must fit in one whole
        total = sum(getattr(self, name) for name in rates)
        _require(total <= 1.0 + 1e-9, f"preferences: the degradation rates add up to {total:g}; they are shares "
                                      "of the rejected answers and must add up to at most 1")
        for name in ("max_prompts", "max_val_prompts"):
            value = getattr(self, name)
            _require(value == -1 or value >= 1, f"preferences.{name}={value}: use -1 (all) or at least 1")
        _require(0 < self.low_repetition_penalty < 1.0, "preferences.low_repetition_penalty must be in (0, 1)")
        _require(self.gap >= 0, "preferences.gap must be >= 0")
        _require(self.filter_with in FILTER_WITH,
                 f"preferences.filter_with={self.filter_with!r}: use one of {list(FILTER_WITH)}")


@dataclass
class DPOConfig:
    lora: LoraConfig = _help("adapter shape for the DPO LoRA", factory=LoraConfig)
    train: TrainConfig = _help("optimizer and schedule",
                               factory=lambda: TrainConfig(epochs=1.0, learning_rate=5e-5, batch_size=2, grad_accum=8))
    beta: float = _help("strength of the pull toward the reference (0.01-0.5)", 0.1)
    loss_type: list = _help("TRL DPO loss(es): ['sigmoid'] (the DPO paper), ['ipo'], ['hinge'], or a combination such "
                            "as ['sigmoid', 'sft'] (DPO plus the chosen answers' SFT loss: TRL's remedy for a small "
                            "model that DPO degrades); a single name is accepted too", factory=lambda: ["sigmoid"],
                            one_or_list=True)
    loss_weights: list = _help("one weight per loss type ([] = 1.0 each), e.g. [1.0, 0.5]", factory=list)
    load_in_4bit: bool = _help("load the merged SFT model in 4-bit for DPO (CUDA + bitsandbytes): less memory, but the "
                               "implicit reference is then the 4-bit copy, not exactly the SFT model", False)
    heldout_fraction: float = _help("share of pairs (from validation prompts) kept for evaluation", 0.1)
    spot_check_prompts: int = _help("validation prompts answered by SFT and DPO side by side", 5)
    spot_check: SamplingConfig = _help("sampling for the side-by-side check", factory=SamplingConfig)

    def __post_init__(self):
        _require(self.beta > 0, f"dpo.beta={self.beta} must be positive")
        _require(bool(self.loss_type) and all(isinstance(t, str) and t for t in self.loss_type),
                 f"dpo.loss_type={self.loss_type!r}: name at least one TRL loss, e.g. ['sigmoid']")
        _require(not self.loss_weights or len(self.loss_weights) == len(self.loss_type),
                 f"dpo.loss_weights={self.loss_weights} needs one weight per loss type {self.loss_type}")
        _require(not self.lora.trainable_tokens,
                 "dpo.lora.trainable_tokens must be empty: token rows are taught in SFT (sft.lora.trainable_tokens), "
                 "and DPO starts from the merged SFT model that carries them")
        _require(0.0 < self.heldout_fraction < 0.5,
                 f"dpo.heldout_fraction={self.heldout_fraction}: use a value in (0, 0.5)")
        _require(self.spot_check_prompts >= 1, "dpo.spot_check_prompts must be >= 1")


@dataclass
class ExportConfig:
    quants: list = _help("quantized formats to write besides F16", factory=lambda: ["Q4_K_M"])
    deploy: str = _help("the format the phone gets: one of quants, 'auto' (the smallest format within auto_max_kld "
                        "and min_stop_rate, measured) or '' (Q4_K_M when exported, else the first listed); evaluated "
                        "in notebook 05 and named in the report", "")
    # Why 0.1: Llama-3-8B's Q4_K_M is at 0.031 (llama.cpp's perplexity README) and models under 1 B lose more
    # (SmolLM2-135M's Q4_K_M: 0.05); the gemma3-270m Q4_K_M that rounded its fine-tune away was at 0.48.
    auto_max_kld: float = _help("deploy: auto takes no format whose mean KL divergence from F16 (validation answer "
                                "tokens) is above this", 0.1)
    min_stop_rate: float = _help("share of the suite's answers through llama-server, with phone_settings.json, that "
                                 "must end on an end-of-generation token rather than at n_predict (the phone file must "
                                 "reach it; deploy: auto requires it of its choice)", 0.9)
    stop_rate_tolerance: float = _help("largest allowed difference between the suite stop rates of llama-server and "
                                       "of llama-cpp-python on the phone file (same settings, 30 prompts: a sampling "
                                       "difference of 2 SD is about 0.15)", 0.2)
    phone_prompts: int = _help("suite prompts answered through llama-server and llama-cpp-python for the stop checks "
                               "(0 = the whole suite)", 0)
    imatrix: bool = _help("quantize with an importance matrix computed by llama-imatrix from the training chats "
                          "(bench/bench_imatrix.py compares it with plain quantization)", False)
    imatrix_chunks: int = _help("llama-imatrix chunks of imatrix_ctx tokens read from the training chats (-1 = all)", 64)
    imatrix_ctx: int = _help("tokens per llama-imatrix chunk", 512)
    kld_max_texts: int = _help("validation answers used for perplexity and KL divergence", 32)
    parity_prompts: int = _help("prompts checked for greedy parity (transformers vs F16 GGUF)", 4)
    parity_tokens: int = _help("first K greedy tokens that must match", 16)
    # Measured on the tiny model: the largest transformers-vs-F16 logit difference was 0.0046 (p99 0.0027),
    # so 0.05 is about ten times the 16-bit rounding noise and far below a real defect's margin.
    parity_tie_margin: float = _help("a greedy difference whose transformers logit margin is at most this is a "
                                     "near tie (16-bit rounding), not a failure", 0.05)
    n_threads: int = _help("llama.cpp threads (0 = all cores)", 0)
    answer_prompts: int = _help("validation prompts answered by F16 and the phone file side by side", 3)
    chat_max_tokens: int = _help("token budget of the chat completion that must end on <|im_end|>", 96)
    sampling: SamplingConfig = _help("sampling of the side-by-side answers (Qwen's non-thinking settings)",
                                     factory=lambda: SamplingConfig(max_new_tokens=120))

    def __post_init__(self):
        allowed = {"Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"}
        bad = [q for q in self.quants if q not in allowed]
        _require(not bad, f"export.quants has {bad}: choose from {sorted(allowed)}")
        _require(len(self.quants) > 0, f"export.quants is empty: list at least one of {sorted(allowed)} (Q4_K_M for phones)")
        _require(len(set(self.quants)) == len(self.quants), f"export.quants lists a format twice: {self.quants}")
        _require(not self.deploy or self.deploy == "auto" or self.deploy in self.quants,
                 f"export.deploy={self.deploy!r} is not among export.quants {self.quants}: add it, or use 'auto'")
        _require(self.auto_max_kld > 0, f"export.auto_max_kld={self.auto_max_kld}: use a positive KL divergence, e.g. 0.1")
        for name in ("min_stop_rate", "stop_rate_tolerance"):
            _require(0 <= getattr(self, name) <= 1, f"export.{name}={getattr(self, name)}: use a share in [0, 1]")
        _require(self.phone_prompts >= 0, f"export.phone_prompts={self.phone_prompts}: use 0 (whole suite) or a count")
        _require(self.imatrix_chunks == -1 or self.imatrix_chunks >= 1,
                 f"export.imatrix_chunks={self.imatrix_chunks}: use -1 (all) or at least 1")
        _require(self.imatrix_ctx >= 64, f"export.imatrix_ctx={self.imatrix_ctx}: use at least 64 tokens")
        for name in ("kld_max_texts", "parity_prompts", "parity_tokens", "answer_prompts", "chat_max_tokens"):
            _require(getattr(self, name) >= 1, f"export.{name}={getattr(self, name)}: use at least 1")
        _require(self.n_threads >= 0, f"export.n_threads={self.n_threads}: use 0 (all cores) or a positive count")
        _require(self.parity_tie_margin >= 0, f"export.parity_tie_margin={self.parity_tie_margin}: use 0 (exact "
                 "parity) or a small positive logit margin such as 0.05")


@dataclass
class EvalConfig:
    val_prompts: int = _help("held-out validation prompts each model answers", 20)
    suite: str = _help("fall-risk prompt suite (JSONL)", "data/eval_suite.jsonl")
    sampling: SamplingConfig = _help("the same seeded sampling for every model", factory=SamplingConfig)
    word_budget: int = _help("longest answer (words) that still reads well on a phone", 150)
    judge: JudgeConfig = _help("who scores the answers", factory=JudgeConfig)
    second_judge: JudgeConfig = _help("an independent judge reported beside the main one: DPO's pairs were chosen "
                                      "by the main judge, so grading DPO only with it is circular (default: rubric)",
                                      factory=JudgeConfig)
    confidence: float = _help("coverage of the bootstrap confidence intervals of mean scores (0.8-0.99)", 0.95)
    bootstrap_samples: int = _help("resamples drawn for each confidence interval", 2000)
    n_threads: int = _help("llama.cpp threads for the GGUF answers and chat (0 = all cores)", 0)

    def __post_init__(self):
        _require(self.val_prompts >= 1, f"eval.val_prompts={self.val_prompts}: use at least 1")
        _require(self.word_budget >= 10, f"eval.word_budget={self.word_budget}: use at least 10 words")
        _require(0.5 < self.confidence < 1.0, f"eval.confidence={self.confidence}: use a value in (0.5, 1), e.g. 0.95")
        _require(self.bootstrap_samples >= 100, f"eval.bootstrap_samples={self.bootstrap_samples}: use at least 100")
        _require(self.n_threads >= 0, f"eval.n_threads={self.n_threads}: use 0 (all cores) or a positive count")


@dataclass
class RunConfig:
    preset: str = _help("name of the preset this run came from", "tiny")
    seed: int = _help("global seed (python, numpy, torch)", 42)
    model: ModelConfig = _help("base model", factory=ModelConfig)
    data: DataConfig = _help("phase 00 (notebook 00)", factory=DataConfig)
    sft: SFTConfig = _help("phase 01 (notebook 01)", factory=SFTConfig)
    preferences: PreferenceConfig = _help("phase 02 (notebook 02)", factory=PreferenceConfig)
    dpo: DPOConfig = _help("phase 03 (notebook 03)", factory=DPOConfig)
    export: ExportConfig = _help("phase 04 (notebook 04)", factory=ExportConfig)
    eval: EvalConfig = _help("phase 05 (notebook 05)", factory=EvalConfig)

    def section(self, name: str) -> dict:
        """The resolved dict of one section (used in fingerprints and notebooks)."""
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    """Fill dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys raise."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'preset'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key {where + '.' if where else ''}{unknown[0]}: "
                          f"{cls.__name__} declares {sorted(known)}")
    kwargs = {}
    declared = {f.name: f for f in fields(cls)}
    for name, value in values.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        if declared[name].metadata.get("one_or_list") and isinstance(value, str):
            value = [value]  # e.g. dpo.loss_type: one loss may be named on its own ("ipo"), as TRL itself accepts
        if dataclasses.is_dataclass(hint):
            default = declared[name].default_factory()
            kwargs[name] = _build(hint, _merge(dataclasses.asdict(default), value, path), path)
        else:
            kwargs[name] = _coerce(hint, value, path)
    return cls(**kwargs)


def _merge(base: dict, update: Any, where: str) -> dict:
    if not isinstance(update, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(update).__name__}")
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged


def _coerce(hint, value, where):
    """Accept YAML's int for a float field; reject everything else of the wrong type."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML reads "2e-4" as a string
            return float(value)
        except ValueError:
            pass
    expected = {"float": float, "int": int, "str": str, "bool": bool, "list": list}.get(getattr(hint, "__name__", ""), None)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def preset_path(preset: str) -> Path:
    """Path of a preset by name (configs/<name>.yaml) or as given when it is a file."""
    candidate = Path(preset)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    path = CONFIGS_DIR / f"{preset}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(f"no preset {preset!r}: choose one of {names} or pass a .yaml path")
    return path


EXTENDS_KEY = "extends"  # top-level preset key: the name (or .yaml path) of the preset this one builds on


def preset_values(path: Path, chain: tuple = ()) -> dict:
    """The raw values of a preset with its `extends:` chain resolved (child keys override, deep merge).

    A preset names its parent like `extends: qwen3-0.6b`; the parent may extend another one. A cycle is
    an error that names every file in it. `preset` is never inherited: each file is its own preset.
    """
    path = Path(path).resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(path):], path))
        raise ConfigError(f"presets extend each other in a cycle: {cycle}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of sections, got {type(values).__name__}")
    parent = values.pop(EXTENDS_KEY, None)
    if parent is None:
        return values
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: {EXTENDS_KEY}: expected a preset name, got {parent!r}")
    try:  # a relative .yaml parent is looked up beside the child first
        sibling = path.parent / parent
        parent_path = sibling if sibling.suffix in (".yaml", ".yml") and sibling.exists() else preset_path(parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {EXTENDS_KEY}: {err}") from None
    inherited = preset_values(parent_path, (*chain, path))
    inherited.pop("preset", None)
    return _merge(inherited, values, str(path))


def load_config(preset: str = "tiny", overrides: dict | None = None) -> RunConfig:
    """Load a preset (and the presets it extends) and apply overrides (None values mean 'keep the preset')."""
    path = preset_path(preset)
    values = preset_values(path)
    values.setdefault("preset", path.stem)
    if overrides:
        values = _merge(values, _drop_none(overrides), "overrides")
    try:
        return _build(RunConfig, values, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _drop_none(d: dict) -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def data_path(path: str) -> Path:
    """Resolve a data path from a preset: absolute, relative to the repo, or a bare name in data/."""
    p = Path(path)
    if p.is_absolute():
        return p
    from .paths import REPO_ROOT
    if (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return DATA_DIR / p.name if (DATA_DIR / p.name).exists() else REPO_ROOT / p


def describe(cls=RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field: the documentation of what a preset may hold."""
    rows = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        hint = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows.append((key, "", f.metadata.get("help", "")))
            rows.extend(describe(hint, key + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows
