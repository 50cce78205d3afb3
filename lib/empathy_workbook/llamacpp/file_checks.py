"""Checks of a GGUF file itself: structure, truncation, checksum, tensor types, metadata, tokenizer.

The installed ``gguf`` package reads the files here: it is a second reader, independent of the
converter that wrote them (see phases/export.py for why the converter uses its own gguf-py). Behaviour checks
that run the model (perplexity, KL divergence, greedy parity, chat stop) are in quality.py.

``checks_passed`` / ``failed_checks`` give the verdict over every check of an export (these, quality.py's and
phone.py's) from the export's metrics.json: the export phase and the run report both read it here.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

from ..family import PROFILES, family_of
from ..io import sha256_file
from .inference import vocab_model

# The tensor type that should carry most weights in each format, and the types a K-quant file must
# not contain: llama.cpp silently falls back to these when a row length is not a multiple of 256.
MAIN_TYPE = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "Q8_0": "Q8_0"}
LEGACY_FALLBACK_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"}
UNQUANTIZED_TYPES = {"F32", "F16", "BF16"}

# Texts that stress a tokenizer (spaces, newlines, digits, accents, emoji, tags), written for this project;
# the tokenization check runs them next to the rendered chats. Every family's chat markup is in the list
# (markup of another family is plain text to a tokenizer, which is a test too).
EDGE_TEXTS = [
    "I'm 82 and I've fallen twice since March.  Is that normal?",
    "Grab bars: 2 in the bathroom, 1 by the bed...\n\n\tThen what?",
    "Café, naïve, Zürich: ünïcödé — and an emoji 🙂👵🏽!",
    "   leading spaces, trailing spaces   \n",
    "numbers 1234567 3.14159 and 1,000,000",
    *[p.turn_start.replace("{role}", "user") + "literal chat markup inside text" + p.end_of_turn + "\n" for p in PROFILES],
    "<think>\n\n</think>\n\n",
]


class GGUFError(ValueError):
    """A GGUF file that is missing, cut short, corrupted, or not what the export promised."""


def gguf_reader(path: Path):
    """gguf.GGUFReader over a file (the installed gguf package: an independent reader).

    Parsing a 151,936-token vocabulary takes seconds, so readers are cached per file version
    (path, inode, size, modification time): a rewritten file is always read afresh.
    """
    stat = Path(path).stat()
    return _cached_reader(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached_reader(path: str, inode: int, size: int, mtime_ns: int):
    from gguf import GGUFReader

    return GGUFReader(path)


def verify_gguf_file(path: Path, expected_sha256: str | None = None, require_tensors: bool = True) -> dict:
    """Check that a file is a complete GGUF; raise GGUFError naming the file and the problem.

    Detects: a missing or empty file, a wrong magic number, a header or metadata that does not parse,
    tensor data that runs past the end of the file (truncation), missing architecture/tokenizer keys,
    and (when expected_sha256 is given) any changed byte.
    """
    path = Path(path)
    if not path.exists():
        raise GGUFError(f"{path}: no such file (the export did not finish or the path is wrong)")
    size = path.stat().st_size
    if size < 32:
        raise GGUFError(f"{path}: only {size} bytes: not a GGUF file, or cut off right at the start")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path}: starts with {magic!r}, not the GGUF magic b'GGUF': wrong or corrupted file")
    try:
        reader = gguf_reader(path)
    except Exception as err:  # the reader raises many types on garbage; all mean the same here
        raise GGUFError(f"{path} ({size:,} bytes) cannot be read as GGUF ({type(err).__name__}: {err}): "
                        "the file is truncated or corrupted: export it again") from None
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise GGUFError(f"{path}: tensor {tensor.name!r} ends at byte {end:,} but the file has {size:,} "
                            "bytes: the file is truncated: export it again")
    for key in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens"):
        if key not in reader.fields:
            raise GGUFError(f"{path}: metadata key {key!r} is missing: not a complete model file")
    if require_tensors and not reader.tensors:
        raise GGUFError(f"{path}: holds no tensors (a vocabulary-only file?)")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise GGUFError(f"{path}: sha256 {actual[:12]}… differs from the manifest's {expected_sha256[:12]}…: "
                            "the file changed or was damaged after export")
    return {"bytes": size, "tensors": len(reader.tensors),
            "architecture": reader.fields["general.architecture"].contents(),
            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors))}


def gguf_metadata(path: Path, keys: list[str] | None = None) -> dict:
    """Scalar and string metadata of a GGUF (token arrays left out unless named in keys)."""
    reader = gguf_reader(path)
    skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores"}
    wanted = keys if keys is not None else [k for k in reader.fields if k not in skip and not k.startswith("GGUF.")]
    return {k: reader.fields[k].contents() for k in wanted if k in reader.fields}


def parameter_count(path: Path) -> int:
    """Number of weights stored in a GGUF (all tensors)."""
    return sum(int(t.n_elements) for t in gguf_reader(path).tensors)


def quant_type_report(path: Path, quant: str) -> dict:
    """Which ggml types hold the weights of a quantized file, and whether the format really applied.

    K-quants work on rows whose length is a multiple of 256; llama.cpp silently stores other rows in a
    legacy type (q5_0, q8_0, ...). Gemma 3 270M has 640-wide rows in its embeddings and q/k/v/gate/up
    projections, so there such fallbacks are forced and expected. applied is True when the intended main
    type (q4_K for Q4_K_M, ...) holds the largest share of the transformer blocks' weights whose rows allow
    K-quants, and none of those fell back to a legacy type. The token embedding (and an untied output
    matrix) is left out of the share on purpose: Q4_K_M keeps it in q6_K by design, and in a model with few
    layers and a 152k vocabulary it outweighs every block. forced_fallback_tensors lists the others.
    """
    tensors = gguf_reader(path).tensors
    counts = Counter(t.tensor_type.name for t in tensors)
    quantized = [t for t in tensors if t.tensor_type.name not in UNQUANTIZED_TYPES]
    elements, eligible = Counter(), Counter()
    for t in quantized:
        elements[t.tensor_type.name] += int(t.n_elements)
        if _row_length(t) % 256 == 0 and t.name.startswith("blk."):
            eligible[t.tensor_type.name] += int(t.n_elements)
    total = sum(elements.values()) or 1
    main = MAIN_TYPE[quant]
    legacy = [] if quant == "Q8_0" else [t for t in quantized if t.tensor_type.name in LEGACY_FALLBACK_TYPES]
    fallbacks = sorted(t.name for t in legacy if _row_length(t) % 256 == 0)
    forced = sorted(t.name for t in legacy if _row_length(t) % 256)
    top = eligible.most_common(1)[0][0] if eligible else None
    return {"tensor_counts": dict(counts), "weight_share": {k: round(v / total, 4) for k, v in elements.items()},
            "main_type": main, "main_share": round(elements[main] / total, 4), "fallback_tensors": fallbacks,
            "forced_fallback_tensors": forced, "applied": bool(eligible) and top == main and not fallbacks}


def _row_length(tensor) -> int:
    """Length of one row (ggml's ne[0], the first entry of the gguf reader's shape)."""
    return int(tensor.shape[0])


def template_roundtrip(path: Path, tokenizer) -> bool:
    """True when the chat template stored in the GGUF is this project's template for the model's family, byte for
    byte (export.phone_template: the one that renders the training prompt whatever the app sends)."""
    stored = gguf_metadata(path, ["tokenizer.chat_template"]).get("tokenizer.chat_template")
    return isinstance(stored, str) and stored.encode() == family_of(tokenizer).template_text().encode()


def stop_token_report(path: Path, tokenizer) -> dict:
    """End-of-turn handling in the file: metadata ids and the stop set llama.cpp derives at load time.

    ok: eos is the family's end-of-turn token (<|im_end|>, <end_of_turn>) and an end-of-generation token for
    llama.cpp (what llama.rn stops on), pad is the family's pad token, and the token strings at those ids are
    the expected ones. is_end_of_generation also reports the family's other stop words.
    """
    import llama_cpp

    profile = family_of(tokenizer)
    end_id = tokenizer.convert_tokens_to_ids(profile.end_of_turn)
    pad_id = tokenizer.convert_tokens_to_ids(profile.pad)
    reader = gguf_reader(path)
    meta = {k: reader.fields[k].contents() for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                                                      "tokenizer.ggml.eot_token_id", "tokenizer.ggml.bos_token_id")
            if k in reader.fields}
    tokens = reader.fields["tokenizer.ggml.tokens"]
    strings = {i: tokens.contents(i) for i in (end_id, pad_id)}
    llm = vocab_model(path)
    vocab = llm._model.vocab
    eog = {name: bool(llama_cpp.llama_vocab_is_eog(vocab, tokenizer.convert_tokens_to_ids(name)))
           for name in profile.stop_words}
    runtime = {"eos": llama_cpp.llama_vocab_eos(vocab), "eot": llama_cpp.llama_vocab_eot(vocab),
               "pad": llama_cpp.llama_vocab_pad(vocab)}
    ok = (meta.get("tokenizer.ggml.eos_token_id") == end_id and meta.get("tokenizer.ggml.padding_token_id") == pad_id
          and eog[profile.end_of_turn] and strings[end_id] == profile.end_of_turn and strings[pad_id] == profile.pad)
    return {"ok": ok, "end_of_turn": profile.end_of_turn, "end_of_turn_id": end_id, "pad_id": pad_id, "metadata": meta,
            "is_end_of_generation": eog,
            "runtime_ids": runtime}


def tokenization_parity(path: Path, tokenizer, texts: list[str]) -> dict:
    """Do llama.cpp (from the GGUF) and transformers split the same texts into the same ids?"""
    llm = vocab_model(path)
    mismatches = []
    for index, text in enumerate(texts):
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        actual = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)  # as transformers parses them
        if expected != actual:
            first = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
            mismatches.append({"text": index, "first_difference": first, "transformers": expected[first:first + 5],
                               "llama_cpp": actual[first:first + 5]})
    return {"match": not mismatches, "texts": len(texts), "mismatches": mismatches[:5]}


def check_reference_tokenizer(tokenizer, converter_dir: Path) -> dict:
    """Compare a tokenizer with the ids llama.cpp expects for its Qwen2 vocabulary test texts (.inp/.out files)."""
    base = Path(converter_dir) / "models" / "ggml-vocab-qwen2.gguf"
    texts = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")
    pairs = list(zip(texts, expected))
    matches = sum(tokenizer(t, add_special_tokens=False)["input_ids"] == [int(x) for x in e.split()]
                  for t, e in pairs)
    return {"texts": len(pairs), "matches": matches, "ok": len(pairs) > 0 and matches == len(pairs)}


def checks_passed(metrics: dict) -> dict[str, bool]:
    """The pass/fail checks of an export, by name (all must be True before a file ships)."""
    names = ("greedy_parity", "tokenization_parity", "template_roundtrip", "stop_tokens_ok",
             "chat_stops_on_end_of_turn", "kquants_applied", "server_renders_training_prompt",
             "server_stops_on_end_of_turn", "server_matches_python", "deploy_within_limits")
    return {name: bool(metrics.get(name)) for name in names}


def failed_checks(metrics: dict) -> list[str]:
    """Names of the export checks that did not pass (empty: the files are verified)."""
    return [name for name, ok in checks_passed(metrics).items() if not ok]
