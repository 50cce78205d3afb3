"""Phase 5 (GGUF export): converter fallback, file verification, K-quants, and the end-to-end checks.

Tests marked slow convert with llama.cpp's converter; the converter comes from the llama-cpp-python
source distribution, fetched once with pip into artifacts/cache/converter/<version>/ and reused.
"""

import json
import math
import shutil
from pathlib import Path

import pytest

from empathy_workbook.config import ConfigError, load_config
from empathy_workbook.io import sha256_file
from empathy_workbook.llamacpp import file_checks as gguf_checks
from empathy_workbook.llamacpp import phone
from empathy_workbook.llamacpp.convert import is_qwen2_pre_tokenizer, pre_tokenizer_spec
from empathy_workbook.phases import export
from helpers import reference_qwen3_tokenizer


# ---------------------------------------------------------------------------------------------
# Fast: no conversion
# ---------------------------------------------------------------------------------------------

def test_qwen2_split_is_recognised_field_for_field(tokenizer):
    spec = pre_tokenizer_spec(tokenizer)
    assert is_qwen2_pre_tokenizer(spec)
    changed_regex = json.loads(json.dumps(spec))
    changed_regex["pretokenizers"][0]["pattern"]["Regex"] += "|x"
    assert not is_qwen2_pre_tokenizer(changed_regex)
    prefix_space = json.loads(json.dumps(spec))
    prefix_space["pretokenizers"][1]["add_prefix_space"] = True
    assert not is_qwen2_pre_tokenizer(prefix_space)
    assert not is_qwen2_pre_tokenizer({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True})
    assert not is_qwen2_pre_tokenizer(None)


@pytest.mark.parametrize("content, message", [
    (b"", "only 0 bytes"),
    (b"PK\x03\x04" + b"\x00" * 60, "not the GGUF magic"),
    (b"GGUF" + b"\xff" * 60, "cannot be read"),
])
def test_garbage_is_not_taken_for_a_gguf(tmp_path, content, message):
    path = tmp_path / "model-q4_k_m.gguf"
    path.write_bytes(content)
    with pytest.raises(gguf_checks.GGUFError, match=message):
        gguf_checks.verify_gguf_file(path)


def test_missing_file_has_a_clear_error(tmp_path):
    with pytest.raises(gguf_checks.GGUFError, match="no such file"):
        gguf_checks.verify_gguf_file(tmp_path / "model-f16.gguf")


def test_export_config_rejects_bad_quant_lists():
    with pytest.raises(ConfigError, match="Q3_K"):
        load_config("tiny", {"export": {"quants": ["Q3_K"]}})
    with pytest.raises(ConfigError, match="empty"):
        load_config("tiny", {"export": {"quants": []}})
    with pytest.raises(ConfigError, match="twice"):
        load_config("tiny", {"export": {"quants": ["Q8_0", "Q8_0"]}})
    assert set(export.QUANT_FTYPES) <= set(export.FORMAT_NOTES)
    with pytest.raises(ConfigError, match="export.deploy='Q8_0' is not among export.quants"):
        load_config("tiny", {"export": {"quants": ["Q4_K_M"], "deploy": "Q8_0"}})


def test_the_phone_gets_the_named_format_else_q4_k_m_else_the_first():
    assert export.deploy_format(["Q8_0", "Q4_K_M"]) == "Q4_K_M"
    assert export.deploy_format(["Q8_0", "Q6_K"]) == "Q8_0"
    assert export.deploy_format(["Q4_K_M", "Q8_0"], deploy="Q8_0") == "Q8_0"
    for preset in ("gemma3-270m", "qwen3-0.6b"):  # the real presets measure it (gemma's Q4_K_M erases its fine-tune)
        assert load_config(preset).export.deploy == "auto"
    with pytest.raises(ConfigError, match="min_stop_rate"):
        load_config("tiny", {"export": {"min_stop_rate": 1.5}})


CANDIDATES = [{"format": "Q8_0", "bytes": 300, "kld_mean": 0.005}, {"format": "Q4_K_M", "bytes": 100, "kld_mean": 0.48},
              {"format": "Q5_K_M", "bytes": 150, "kld_mean": 0.04}]


def test_auto_takes_the_smallest_format_within_both_limits_and_says_why():
    measured = []

    def stop_rate(fmt):
        measured.append(fmt)
        return {"Q5_K_M": 0.8, "Q8_0": 0.93}[fmt]

    choice = phone.choose_deploy(CANDIDATES, max_kld=0.1, min_stop_rate=0.9, stop_rate_of=stop_rate)
    assert choice["format"] == "Q8_0"
    assert measured == ["Q5_K_M", "Q8_0"]  # Q4_K_M fails the KL limit first: the server never runs on it
    assert [r["format"] for r in choice["candidates"]] == ["Q4_K_M", "Q5_K_M", "Q8_0"]
    assert "KL divergence 0.4800 > 0.1" in choice["reason"] and "stop rate 80% < 90%" in choice["reason"]
    easier = phone.choose_deploy(CANDIDATES, max_kld=0.5, min_stop_rate=0.5, stop_rate_of=lambda f: 0.9)
    assert easier["format"] == "Q4_K_M" and easier["candidates"][-1]["verdict"] == "larger than the choice"
    none = phone.choose_deploy(CANDIDATES, max_kld=0.01, min_stop_rate=0.95, stop_rate_of=lambda f: 0.93)
    assert none["format"] is None and none["reason"].startswith("no format is within the limits")


def test_a_hand_set_format_wins_and_the_summary_says_what_auto_would_choose():
    auto = phone.choose_deploy(CANDIDATES, max_kld=0.1, min_stop_rate=0.9, stop_rate_of=lambda f: 0.95)
    hand = export.deploy_choice({"setting": "Q8_0", "deploy": "Q8_0", "auto": auto, "auto_differs": True})
    assert hand["format"] == "Q8_0" and hand["auto_format"] == "Q5_K_M"
    assert "auto would have chosen Q5_K_M" in hand["reason"]
    chosen = export.deploy_choice({"setting": "auto", "deploy": "Q5_K_M", "auto": auto, "auto_differs": False})
    assert chosen["reason"] == auto["reason"] and "smallest format within the limits" in chosen["reason"]


def test_model_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        export.check_model_dir(tmp_path)


class FakeLM:
    """Returns the same logits at every position: token 0 scores `top`, token 1 scores `top - margin`."""

    def __init__(self, margin):
        self.margin = margin

    def __call__(self, input_ids):
        import torch

        logits = torch.full((1, input_ids.shape[1], 4), -5.0)
        logits[..., 0], logits[..., 1] = 2.0, 2.0 - self.margin
        return type("Out", (), {"logits": logits})()


class FakeTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3] * len(text)}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"<{i}>" for i in ids)


@pytest.mark.parametrize("margin, verdict", [(0.01, "near_tie"), (0.05, "near_tie"), (1.5, "mismatch")])
def test_greedy_difference_is_judged_by_the_transformers_margin(margin, verdict):
    from empathy_workbook.llamacpp.quality import _parity_row

    row = _parity_row(2, FakeLM(margin), FakeTokenizer(), "hi", [0, 0, 0, 0], [0, 0, 1, 1], tie_margin=0.05)
    assert row["verdict"] == verdict and row["prompt"] == 2 and row["first_mismatch"] == 2
    assert row["hf_margin"] == pytest.approx(margin) and (row["hf_token"], row["gguf_token"]) == ("<0>", "<1>")
    same = _parity_row(0, FakeLM(margin), FakeTokenizer(), "hi", [0, 1], [0, 1], tie_margin=0.05)
    assert same["verdict"] == "match" and same["first_mismatch"] is None


def passing_metrics(deploy="model-q4_k_m.gguf"):
    return {**{name: True for name in gguf_checks.checks_passed({})}, "deploy_file": deploy}


EXPORT_METRICS_KEYS = {
    "bytes", "perplexity", "perplexity_transformers", "kld_mean", "kld_p99", "top_token_agreement",
    "kld_f16_vs_transformers", "tokens_scored", "greedy_parity", "greedy_exact", "greedy_near_ties",
    "greedy_differences", "tokenization_parity", "template_roundtrip", "stop_tokens_ok", "chat_stops_on_end_of_turn",
    "chat_natural_stop", "kquants_applied", "tensor_types", "pre_tokenizer", "pre_tokenizer_fallback",
    "convert_seconds", "quantize_seconds", "deploy_file", "deploy_sha256", "deploy_choice", "imatrix",
    "server_renders_training_prompt", "server_stop_rate", "server_end_of_turn_rate", "server_stop_types",
    "server_think_blocks", "server_stop_rates", "python_stop_rate", "server_stops_on_end_of_turn",
    "server_matches_python", "deploy_within_limits", "phone_settings", "llama_cpp_python"}


def export_results(tmp_path, eos_rate):
    """What export_all and verify_export return for F16 + Q4_K_M, every check passing except the server's stop
    rate, which is `eos_rate` (llama-cpp-python's is 0.95)."""
    files = {}
    for fmt, size in (("F16", 64), ("Q4_K_M", 20)):
        files[fmt] = tmp_path / export.format_filename(fmt)
        files[fmt].write_bytes(b"x" * size)
    per_file = {fmt: {"match": True, "ok": True} for fmt in files}
    auto = {"format": "Q4_K_M", "reason": "smallest within the limits",
            "candidates": [{"format": "Q4_K_M", "bytes": 20, "kld_mean": 0.03, "stop_rate": eos_rate, "verdict": "ok"}]}
    checks = {
        "quality": {"perplexity": {"F16": 5.0, "Q4_K_M": 5.2}, "perplexity_transformers": 5.0,
                    "kld_mean": {"Q4_K_M": 0.03}, "kld_p99": {"Q4_K_M": 0.3}, "top_token_agreement": {"Q4_K_M": 0.9},
                    "kld_f16_vs_transformers": {"max_logit_diff": 0.01}, "tokens_scored": 400},
        "greedy": {"ok": True, "match": 3, "near_ties": 1, "differences": []},
        "tokenization": per_file, "templates": {fmt: True for fmt in files}, "stop_tokens": per_file,
        "chat": {"stops_on_end_of_turn": True, "natural_stop": True},
        "kquants": {"Q4_K_M": {"applied": True, "tensor_counts": {"Q4_K": 10, "F32": 3}}},
        "deploy": "Q4_K_M",
        "phone": {"server": {"eos_rate": eos_rate, "end_of_turn_rate": eos_rate, "stop_types": {"eos": 30},
                             "think_blocks": 0},
                  "server_stop_rates": {"Q4_K_M": eos_rate}, "python_stop_rate": 0.95,
                  "stop_rate_gap": abs(eos_rate - 0.95), "within_limits": True, "rendering": {"ok": True},
                  "auto": auto, "setting": "auto", "deploy": "Q4_K_M", "auto_differs": False}}
    conversion = {"pre_tokenizer": "qwen2", "pre_tokenizer_fallback": False, "seconds": 1.5}
    quantization = {"Q4_K_M": {"seconds": 0.5}}
    return files, checks, conversion, quantization


def test_metrics_contract_is_built_from_the_check_results(tmp_path):
    cfg = load_config("tiny").export
    metrics = export.metrics(*export_results(tmp_path, eos_rate=0.95), cfg)
    assert set(metrics) == EXPORT_METRICS_KEYS
    assert metrics["bytes"] == {"F16": 64, "Q4_K_M": 20} and metrics["deploy_file"] == "model-q4_k_m.gguf"
    assert metrics["deploy_sha256"] == sha256_file(tmp_path / "model-q4_k_m.gguf")
    assert gguf_checks.failed_checks(metrics) == []  # every check the verdict reads is in the contract
    # the server stops well below llama-cpp-python on the same file: two checks fail, the file is not verified
    stalled = export.metrics(*export_results(tmp_path, eos_rate=0.5), cfg)
    assert gguf_checks.failed_checks(stalled) == ["server_stops_on_end_of_turn", "server_matches_python"]


def test_failed_export_check_writes_metrics_then_stops_and_is_never_reused(tmp_path):
    from empathy_workbook.io import read_json, write_metrics
    from empathy_workbook.paths import RunPaths
    from empathy_workbook.pipeline.runtime import start_phase

    root = RunPaths.for_run("verdict", tmp_path).root
    for phase in ("data", "sft", "preferences", "dpo"):  # finished upstream phases (start_phase checks them)
        write_metrics(root / phase, {}, f"upstream-{phase}")
    ctx = start_phase("export", "tiny", "verdict", artifacts=tmp_path)
    with pytest.raises(export.ExportFailed, match="greedy_parity"):
        export.finish_export(ctx, {**passing_metrics(), "greedy_parity": False})
    written = read_json(ctx.out / "metrics.json")
    assert written["verified"] is False and written["checks_failed"] == ["greedy_parity"]
    assert written["_fingerprint"] != ctx.fingerprint  # the runner will run the phase again, not skip it
    with pytest.raises(export.ExportFailed, match="not verified"):
        export.verified_deploy_file(ctx.out)

    metrics = export.finish_export(ctx, passing_metrics())
    assert metrics["verified"] and read_json(ctx.out / "metrics.json")["_fingerprint"] == ctx.fingerprint
    with pytest.raises(gguf_checks.GGUFError, match="no such file"):  # verified, but the file itself is gone
        export.verified_deploy_file(ctx.out)


# ---------------------------------------------------------------------------------------------
# Slow: real conversions with llama.cpp's converter
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def converter_dir():
    """llama.cpp's converter for the installed llama-cpp-python (fetched once, then cached)."""
    return export.ensure_converter()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_path, tiny_cfg, records, converter_dir):
    """The tiny model exported to F16, Q4_K_M and Q8_0, every check run once."""
    from empathy_workbook.config import data_path
    from empathy_workbook.phases.evaluate import load_suite

    out = tmp_path_factory.mktemp("export")
    cfg = load_config("tiny", {"export": {"quants": ["Q4_K_M", "Q8_0"], "kld_max_texts": 6, "parity_prompts": 3}})
    suite = [p.messages for p in load_suite(data_path(cfg.eval.suite), cfg.data.system_prompt)]
    result = export.export_all(Path(tiny_path), out, cfg.export.quants, converter_dir)
    checks = export.verify_export(result["files"], Path(tiny_path), records[1], cfg, suite, records[0], out)
    metrics = export.metrics(result["files"], checks, result["conversion"], result["quantization"], cfg.export)
    return {"out": out, "files": result["files"], "checks": checks, "metrics": metrics, "suite": suite}


@pytest.mark.slow
def test_tiny_export_passes_every_check(tiny_export):
    metrics = tiny_export["metrics"]
    failed = [name for name, ok in gguf_checks.checks_passed(metrics).items() if not ok]
    assert not failed, (failed, json.dumps(tiny_export["checks"], default=str)[:2000])
    # the tiny tokenizer has its own vocabulary, so only the narrow Qwen2-split fallback can name it
    assert metrics["pre_tokenizer"] == "qwen2" and metrics["pre_tokenizer_fallback"] is True
    assert metrics["bytes"]["F16"] > metrics["bytes"]["Q8_0"] > metrics["bytes"]["Q4_K_M"]
    for fmt in ("F16", "Q4_K_M", "Q8_0"):
        assert math.isfinite(metrics["perplexity"][fmt]) and metrics["perplexity"][fmt] > 1
    for quant in ("Q4_K_M", "Q8_0"):
        assert 0 <= metrics["kld_mean"][quant] <= metrics["kld_p99"][quant]
        assert 0 < metrics["top_token_agreement"][quant] <= 1
    assert metrics["kld_mean"]["Q8_0"] < metrics["kld_mean"]["Q4_K_M"]  # more bits, closer to F16
    # the F16 file computes what transformers computes
    assert abs(metrics["perplexity"]["F16"] / metrics["perplexity_transformers"] - 1) < 0.01
    assert metrics["tensor_types"]["Q4_K_M"].get("Q4_K", 0) > 0
    assert not list(tiny_export["out"].glob(".*.partial"))


@pytest.mark.slow
def test_chat_prompt_from_the_file_is_the_training_prompt(tiny_export):
    chat = tiny_export["checks"]["chat"]
    assert chat["formatter_prompt_matches_training"]
    # llama-cpp-python's default formatter cannot pass enable_thinking=False; the file's template needs no flag
    assert chat["default_formatter_matches_training"]


@pytest.mark.slow
def test_llama_server_renders_and_stops_like_training_on_the_phone_file(tiny_export):
    phone_result, metrics = tiny_export["checks"]["phone"], tiny_export["metrics"]
    rows = phone_result["rendering"]["rows"]
    # every evaluation conversation (parity prompts + the suite), with enable_thinking false and without it
    assert len(rows) == 2 * (3 + len(tiny_export["suite"])) and {r["mode"] for r in rows} == set(phone.RENDER_MODES)
    assert all(r["text_equal"] and r["ids_equal"] for r in rows), phone_result["rendering"]["failures"]
    served = phone_result["server"]
    assert served["answers"] == len(tiny_export["suite"]) == 30
    assert sum(served["stop_types"].values()) == 30 and served["think_blocks"] == 0
    assert metrics["server_stop_rate"] >= 0.9 and metrics["server_stops_on_end_of_turn"]
    assert abs(metrics["server_stop_rate"] - metrics["python_stop_rate"]) <= 0.2 and metrics["server_matches_python"]
    # the preset leaves export.deploy unset: Q4_K_M ships, and the choice says what auto thinks of it
    choice = metrics["deploy_choice"]
    assert choice["format"] == "Q4_K_M" and metrics["deploy_within_limits"]
    assert [c["format"] for c in choice["candidates"]] == ["Q4_K_M", "Q8_0"]  # smallest first
    assert choice["auto_differs"] == (choice["auto_format"] != "Q4_K_M")
    assert choice["reason"].startswith("export.deploy is unset")
    settings = tiny_export["checks"]["phone_settings"]
    assert settings["n_predict"] > 0 and settings["stop"][0] == "<|im_end|>" and settings["enable_thinking"] is False


@pytest.mark.slow
def test_truncated_or_corrupted_gguf_is_detected(tiny_export, tmp_path):
    source = tiny_export["files"]["Q4_K_M"]
    data = source.read_bytes()
    summary = gguf_checks.verify_gguf_file(source, expected_sha256=sha256_file(source))
    assert summary["tensors"] > 0

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(gguf_checks.GGUFError, match="truncated"):
        gguf_checks.verify_gguf_file(truncated)

    header_only = tmp_path / "header_only.gguf"
    header_only.write_bytes(data[:200])
    with pytest.raises(gguf_checks.GGUFError, match="truncated|cannot be read"):
        gguf_checks.verify_gguf_file(header_only)

    scrambled = tmp_path / "scrambled.gguf"
    scrambled.write_bytes(data[:8] + b"\xff" * 64 + data[72:])
    with pytest.raises(gguf_checks.GGUFError, match="cannot be read|truncated"):
        gguf_checks.verify_gguf_file(scrambled)

    flipped = tmp_path / "flipped.gguf"
    flipped.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    gguf_checks.verify_gguf_file(flipped)  # structure intact: only the checksum can tell
    with pytest.raises(gguf_checks.GGUFError, match="sha256"):
        gguf_checks.verify_gguf_file(flipped, expected_sha256=sha256_file(source))


@pytest.mark.slow
def test_failed_quantization_leaves_no_file(tiny_export, tmp_path, monkeypatch):
    import llama_cpp

    def crash_halfway(src, dst, params):
        Path(dst.decode()).write_bytes(b"GGUF" + b"\x00" * 100)  # what a crash mid-write leaves
        return 1

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", crash_halfway)
    target = tmp_path / "model-q4_k_m.gguf"
    with pytest.raises(gguf_checks.GGUFError, match="returned 1"):
        export.quantize_gguf(tiny_export["files"]["F16"], target, "Q4_K_M")
    assert not target.exists()
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.slow
def test_kquant_fallback_is_reported(tmp_path, tokenizer, converter_dir):
    """A model whose rows are not multiples of 256 gets legacy quants: the check must say so."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=192, intermediate_size=384, num_hidden_layers=1,
                         num_attention_heads=3, num_key_value_heads=1, head_dim=64, tie_word_embeddings=True,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    model_dir = tmp_path / "odd"
    Qwen3ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    result = export.export_all(model_dir, tmp_path / "out", ["Q4_K_M"], converter_dir, log=lambda *_: None)
    report = gguf_checks.quant_type_report(result["files"]["Q4_K_M"], "Q4_K_M")
    assert not report["applied"]  # no row of this model allows a K-quant
    assert report["forced_fallback_tensors"] and not report["fallback_tensors"]


@pytest.mark.slow
def test_real_qwen3_tokenizer_needs_no_fallback(tmp_path, converter_dir):
    """Qwen's own vocabulary (rebuilt from llama.cpp's test file) is recognised by the converter as is."""
    from transformers import Qwen3Config

    reference = reference_qwen3_tokenizer(converter_dir)
    assert gguf_checks.check_reference_tokenizer(reference, converter_dir)["ok"]
    folder = tmp_path / "qwen3-vocab"
    reference.save_pretrained(folder)
    Qwen3Config(vocab_size=151936, hidden_size=256, intermediate_size=768, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                architectures=["Qwen3ForCausalLM"]).save_pretrained(folder)
    result = export.convert_to_gguf(folder, tmp_path / "vocab.gguf", converter_dir, vocab_only=True,
                                    log=lambda *_: None)
    assert result["pre_tokenizer"] == "qwen2"
    assert result["pre_tokenizer_fallback"] is False


@pytest.mark.slow
def test_other_pre_tokenizers_are_still_refused(tmp_path, tiny_path, converter_dir):
    """The fallback is narrow: a byte-level tokenizer without Qwen2's split fails as the converter intends."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    folder = tmp_path / "gpt2-split"
    shutil.copytree(tiny_path, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.save_pretrained(folder)
    with pytest.raises(RuntimeError, match="not recognized"):
        export.convert_to_gguf(folder, tmp_path / "refused.gguf", converter_dir, vocab_only=True,
                               log=lambda *_: None)
    assert not (tmp_path / "refused.gguf").exists()
