"""Phase 5: turn the merged DPO model into GGUF files for llama.cpp / llama.rn, and prove they are the
model we trained.

Steps (notebook 04 walks through them in this order):

1. ``ensure_converter``: llama.cpp's own converter (``convert_hf_to_gguf.py`` + ``conversion/`` +
   ``gguf-py/``), taken from the source distribution of the *installed* llama-cpp-python version,
   fetched once with pip and cached under artifacts/cache/converter/<version>/.
2. ``convert_to_gguf``: HF folder → F16 GGUF (subprocess, the venv's python, ``gguf_convert`` wrapper).
3. ``quantize_gguf``: F16 → Q4_K_M (default), Q5_K_M, Q6_K, Q8_0 through ``llama_cpp.llama_model_quantize``.
4. Checks: ``verify_gguf_file`` (structure, truncation, checksum), ``quant_type_report`` (K-quants
   really applied), ``template_roundtrip``, ``stop_token_report``, ``tokenization_parity``,
   ``greedy_parity``, ``quality_report`` (perplexity, KL divergence, top-token agreement) and
   ``chat_stop_check`` (a llama-cpp-python chat completion ends on <|im_end|>).

Every file is written under a temporary name, validated, then renamed: a crash never leaves a
half-written ``model-*.gguf`` that a later run would take as finished.

Which ``gguf`` package: the converter runs with the gguf-py folder shipped beside it in the same
sdist (the converter itself puts it first on sys.path). The ``gguf`` release installed from the
package index is older than llama.cpp's current converter and lacks names the converter uses (it
stops with ``AttributeError: DFLASH`` when forced to use it). The installed package only *reads*
finished files here, which also makes it an independent second reader of what the converter wrote.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import importlib.metadata
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

from .chat import END_TOKEN, PAD_TOKEN, has_think_leak, render_prompt, tokenize_prompt_completion
from .io import read_jsonl, sha256_file, write_json
from .paths import cache_dir

# One line per format, shown in the notebook's table.
FORMAT_NOTES = {
    "F16": "16-bit floats: the reference every quant is measured against; too big for most phones.",
    "Q8_0": "8-bit blocks of 32 weights with one scale: nearly lossless, about half of F16; good for desktop tests.",
    "Q6_K": "6-bit K-quant (super-blocks of 256 with per-block scales): very close to F16.",
    "Q5_K_M": "5-bit K-quant, some sensitive tensors (attention V, FFN down) at 6 bits: a little larger and better than Q4_K_M.",
    "Q4_K_M": "4-bit K-quant, embeddings and some attention V / FFN down tensors at 6 bits: the usual phone choice, about a third of F16.",
}
QUANT_FTYPES = {  # names of llama.cpp's llama_ftype constants, looked up in llama_cpp at run time
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
}
# The tensor type that should carry most weights in each format, and the types a K-quant file must
# not contain: llama.cpp silently falls back to these when a row length is not a multiple of 256.
MAIN_TYPE = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "Q8_0": "Q8_0"}
LEGACY_FALLBACK_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"}
UNQUANTIZED_TYPES = {"F32", "F16", "BF16"}

# Qwen's advice for non-thinking chat, repeated in the llama.rn section of the notebook.
PHONE_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
STOP_WORDS = [END_TOKEN, PAD_TOKEN]

# Texts that stress a byte-level BPE (spaces, newlines, digits, accents, emoji, tags), written for this
# project; the tokenization check runs them next to the rendered chats.
EDGE_TEXTS = [
    "I'm 82 and I've fallen twice since March.  Is that normal?",
    "Grab bars: 2 in the bathroom, 1 by the bed...\n\n\tThen what?",
    "Café, naïve, Zürich: ünïcödé — and an emoji 🙂👵🏽!",
    "   leading spaces, trailing spaces   \n",
    "numbers 1234567 3.14159 and 1,000,000",
    "<|im_start|>user\nliteral chat markup inside text<|im_end|>\n",
    "<think>\n\n</think>\n\n",
]


class GGUFError(ValueError):
    """A GGUF file that is missing, cut short, corrupted, or not what the export promised."""


def format_filename(fmt: str) -> str:
    """model-f16.gguf, model-q4_k_m.gguf, ..."""
    return f"model-{fmt.lower()}.gguf"


def _threads(n_threads: int) -> int:
    return n_threads if n_threads > 0 else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# 1. The converter: llama.cpp's own, from the sdist of the installed llama-cpp-python
# ---------------------------------------------------------------------------------------------

SDIST_PREFIX = "vendor/llama.cpp/"
# What we keep from the sdist: the converter, its model package, its gguf-py, the license, and the
# Qwen2 vocabulary test file (used to rebuild Qwen's real tokenizer for checks and the benchmark).
CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE",
                     "models/ggml-vocab-qwen2.gguf", "models/ggml-vocab-qwen2.gguf.inp",
                     "models/ggml-vocab-qwen2.gguf.out")


def llama_cpp_version() -> str:
    """Version of the installed llama-cpp-python (the converter must match the quantizer and loader)."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("llama-cpp-python is not installed: run `make setup` (pyproject pins it)") from None


def _download_sdist(version: str, dest: Path) -> Path:
    """`pip download` the source distribution of llama-cpp-python==version into dest."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise RuntimeError(
            f"could not fetch the llama-cpp-python {version} source distribution with pip "
            f"({' '.join(cmd[2:])}):\n{tail}\nOffline? Put llama_cpp_python-{version}.tar.gz into "
            f"{dest.parent} and run again.")
    return found[0]


def _extract_converter(sdist: Path, version: str, dest: Path) -> list[str]:
    """Extract CONVERTER_MEMBERS of the sdist's vendor/llama.cpp into dest; returns the kept paths."""
    prefix = f"llama_cpp_python-{version}/{SDIST_PREFIX}"
    kept = []
    with tarfile.open(sdist, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                continue
            relative = member.name[len(prefix):]
            if any(relative == m or (m.endswith("/") and relative.startswith(m)) for m in CONVERTER_MEMBERS):
                member.name = relative
                members.append(member)
                kept.append(relative)
        archive.extractall(dest, members=members, filter="data")
    missing = [m for m in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py")
               if not (dest / m).exists()]
    if missing:
        raise RuntimeError(f"{sdist.name} has no {missing} under {SDIST_PREFIX}: this llama-cpp-python "
                           "version does not ship the converter")
    return kept


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock, so two notebooks or tests never fetch into the same cache at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_converter(version: str | None = None, log=print) -> Path:
    """Folder with llama.cpp's converter for the installed llama-cpp-python, fetched and cached once.

    Layout: artifacts/cache/converter/<version>/llama.cpp/{convert_hf_to_gguf.py, conversion/, gguf-py/, ...}
    plus converter.json (version, sdist sha256). An sdist tarball already in that folder is used
    instead of the network (offline machines).
    """
    version = version or llama_cpp_version()
    root = cache_dir("converter") / version
    target = root / "llama.cpp"
    marker = root / "converter.json"
    with _file_lock(root / ".lock"):
        if marker.exists() and (target / "convert_hf_to_gguf.py").exists():
            return target
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
            local = root / f"llama_cpp_python-{version}.tar.gz"
            if local.exists():
                sdist = local
            else:
                log(f"fetching the llama-cpp-python {version} source distribution (once) …")
                sdist = _download_sdist(version, Path(tmp))
            staging = Path(tmp) / "llama.cpp"
            kept = _extract_converter(sdist, version, staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)  # appears complete or not at all
            write_json(marker, {"llama_cpp_python": version, "sdist": sdist.name, "sdist_sha256": sha256_file(sdist),
                                "files": len(kept)})
    log(f"converter for llama-cpp-python {version} cached in {target}")
    return target


# ---------------------------------------------------------------------------------------------
# 2. Conversion and 3. quantization (temp name → validate → rename)
# ---------------------------------------------------------------------------------------------

def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def check_model_dir(model_dir: Path) -> None:
    """A model folder the converter can read: config, safetensors weights and a tokenizer."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a folder: export reads a merged model folder "
                                "(dpo/merged) written by notebook 03")
    missing = [name for name in ("config.json", "tokenizer.json", "tokenizer_config.json")
               if not (model_dir / name).exists()]
    if not any(model_dir.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {missing}: save the merged model with "
                                "save_pretrained(safe_serialization=True) and its tokenizer")


def convert_to_gguf(model_dir: Path, out_path: Path, converter_dir: Path | None = None, outtype: str = "f16",
                    vocab_only: bool = False, log=print) -> dict:
    """Convert an HF model folder to GGUF with llama.cpp's converter; returns what happened.

    Result keys: path, bytes, seconds, pre_tokenizer (what tokenizer.ggml.pre was set to),
    pre_tokenizer_fallback (True only when the narrow Qwen2-split fallback answered), gguf_module.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if not vocab_only:
        check_model_dir(model_dir)
    converter_dir = Path(converter_dir or ensure_converter(log=log))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(out_path)
    partial.unlink(missing_ok=True)
    report_path = out_path.with_name(f".{out_path.name}.convert.json")
    log_path = out_path.with_name(f"{out_path.stem}.convert.log")
    cmd = [sys.executable, "-m", "empathy_workbook.gguf_convert", "--converter-dir", str(converter_dir),
           "--report", str(report_path), "--", str(model_dir), "--outfile", str(partial), "--outtype", outtype]
    if vocab_only:
        cmd.append("--vocab-only")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    log_path.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {model_dir} (exit {proc.returncode}); "
                           f"full log in {log_path}:\n{tail}")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report_path.unlink(missing_ok=True)
    summary = verify_gguf_file(partial, require_tensors=not vocab_only)
    os.replace(partial, out_path)
    log(f"converted {model_dir.name} → {out_path.name}: {summary['bytes'] / 2**20:.1f} MiB in {seconds:.1f} s "
        f"(pre-tokenizer {report['pre_tokenizer']!r}"
        f"{', via the Qwen2-split fallback' if report['pre_tokenizer_fallback'] else ''})")
    return {"path": str(out_path), "bytes": summary["bytes"], "seconds": round(seconds, 2),
            "pre_tokenizer": report["pre_tokenizer"], "pre_tokenizer_fallback": report["pre_tokenizer_fallback"],
            "gguf_module": report["gguf_module"], "log": str(log_path)}


def _quiet_llama_cpp() -> None:
    """llama.cpp logs every tensor while quantizing or loading; keep errors only."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def quantize_gguf(src: Path, dst: Path, quant: str, n_threads: int = 0) -> dict:
    """Quantize an F16 GGUF with llama.cpp's quantizer (llama_model_quantize); returns bytes and seconds."""
    import llama_cpp

    if quant not in QUANT_FTYPES:
        raise ValueError(f"unknown quant {quant!r}: choose from {sorted(QUANT_FTYPES)}")
    src, dst = Path(src), Path(dst)
    verify_gguf_file(src)
    _quiet_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
    params.nthread = _threads(n_threads)
    partial = _partial_path(dst)
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    seconds = time.perf_counter() - started
    if status != 0:
        partial.unlink(missing_ok=True)
        raise GGUFError(f"llama_model_quantize({src.name} → {quant}) returned {status}")
    summary = verify_gguf_file(partial)
    os.replace(partial, dst)
    return {"path": str(dst), "bytes": summary["bytes"], "seconds": round(seconds, 2)}


# ---------------------------------------------------------------------------------------------
# 4a. File checks: structure, truncation, checksum, tensor types, metadata
# ---------------------------------------------------------------------------------------------

def _reader(path: Path):
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
        reader = _reader(path)
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
    reader = _reader(path)
    skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores"}
    wanted = keys if keys is not None else [k for k in reader.fields if k not in skip and not k.startswith("GGUF.")]
    return {k: reader.fields[k].contents() for k in wanted if k in reader.fields}


def parameter_count(path: Path) -> int:
    """Number of weights stored in a GGUF (all tensors)."""
    return sum(int(t.n_elements) for t in _reader(path).tensors)


def quant_type_report(path: Path, quant: str) -> dict:
    """Which ggml types hold the weights of a quantized file, and whether the format really applied.

    applied is True when the intended main type (q4_K for Q4_K_M, ...) holds the largest share of
    quantized weights and no tensor fell back to a legacy type (q5_0, q8_0, ...) in a K-quant file.
    """
    tensors = _reader(path).tensors
    counts = Counter(t.tensor_type.name for t in tensors)
    quantized = [t for t in tensors if t.tensor_type.name not in UNQUANTIZED_TYPES]
    elements = Counter()
    for t in quantized:
        elements[t.tensor_type.name] += int(t.n_elements)
    total = sum(elements.values()) or 1
    main = MAIN_TYPE[quant]
    fallbacks = [] if quant == "Q8_0" else sorted(t.name for t in quantized
                                                   if t.tensor_type.name in LEGACY_FALLBACK_TYPES)
    top = elements.most_common(1)[0][0] if elements else None
    return {"tensor_counts": dict(counts), "weight_share": {k: round(v / total, 4) for k, v in elements.items()},
            "main_type": main, "main_share": round(elements[main] / total, 4), "fallback_tensors": fallbacks,
            "applied": bool(quantized) and top == main and not fallbacks}


def template_roundtrip(path: Path, tokenizer) -> bool:
    """True when the chat template stored in the GGUF equals the tokenizer's, byte for byte."""
    stored = gguf_metadata(path, ["tokenizer.chat_template"]).get("tokenizer.chat_template")
    expected = tokenizer.chat_template
    return isinstance(stored, str) and isinstance(expected, str) and stored.encode() == expected.encode()


def _vocab_model(path: Path):
    """A llama.cpp model with its vocabulary only (fast; for tokenizer and stop-token checks)."""
    import llama_cpp

    from llama_cpp._utils import suppress_stdout_stderr

    _quiet_llama_cpp()
    with suppress_stdout_stderr(disable=False):  # a vocab-only load warns about a context it never uses
        return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def stop_token_report(path: Path, tokenizer) -> dict:
    """End-of-turn handling in the file: metadata ids and the stop set llama.cpp derives at load time.

    ok: eos = <|im_end|>, pad = <|endoftext|>, both are end-of-generation tokens for llama.cpp (what
    llama.rn stops on), and the token strings at those ids are the expected ones.
    """
    import llama_cpp

    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    reader = _reader(path)
    meta = {k: reader.fields[k].contents() for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                                                      "tokenizer.ggml.eot_token_id", "tokenizer.ggml.bos_token_id")
            if k in reader.fields}
    tokens = reader.fields["tokenizer.ggml.tokens"]
    strings = {i: tokens.contents(i) for i in (end_id, pad_id)}
    llm = _vocab_model(path)
    vocab = llm._model.vocab
    eog = {name: bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for name, i in ((END_TOKEN, end_id), (PAD_TOKEN, pad_id))}
    runtime = {"eos": llama_cpp.llama_vocab_eos(vocab), "eot": llama_cpp.llama_vocab_eot(vocab),
               "pad": llama_cpp.llama_vocab_pad(vocab)}
    ok = (meta.get("tokenizer.ggml.eos_token_id") == end_id and meta.get("tokenizer.ggml.padding_token_id") == pad_id
          and all(eog.values()) and strings[end_id] == END_TOKEN and strings[pad_id] == PAD_TOKEN)
    return {"ok": ok, "im_end_id": end_id, "endoftext_id": pad_id, "metadata": meta, "is_end_of_generation": eog,
            "runtime_ids": runtime}


# ---------------------------------------------------------------------------------------------
# 4b. Behaviour checks: tokenization, greedy parity, perplexity / KL divergence, chat stop
# ---------------------------------------------------------------------------------------------

def load_val_records(path: Path) -> list[dict]:
    """Validation records (TRL conversational prompt/completion); a malformed row raises naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebook 00 for this run first")
    records = read_jsonl(path)
    for number, row in enumerate(records, start=1):
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(f"{path}: row {number}: field 'prompt' must be a non-empty list of messages")
        if (not isinstance(completion, list) or not completion
                or not isinstance(completion[0].get("content"), str)):
            raise ValueError(f"{path}: row {number}: field 'completion' must hold one assistant message with text")
    if not records:
        raise ValueError(f"{path}: no validation records")
    return records


def scoring_examples(records: list[dict], tokenizer, max_texts: int) -> list[dict]:
    """Token ids of rendered validation chats and the mask of the answer tokens that get scored.

    The text is exactly the training text (chat.tokenize_prompt_completion): prompt rendered with the
    chat template in non-thinking mode, then the answer and <|im_end|>. Only answer tokens and the
    closing <|im_end|> are scored, never the system prompt or the question.
    """
    examples = []
    for record in records[:max_texts]:
        encoded = tokenize_prompt_completion(tokenizer, record["prompt"], record["completion"][0]["content"])
        examples.append({"id": record.get("id"), "input_ids": encoded["input_ids"],
                         "mask": encoded["completion_mask"],
                         "text": tokenizer.decode(encoded["input_ids"], skip_special_tokens=False)})
    return examples


def _llama(path: Path, n_ctx: int, n_threads: int, logits_all: bool = False, **kwargs):
    import llama_cpp

    _quiet_llama_cpp()
    threads = _threads(n_threads)
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads,
                           n_threads_batch=threads, logits_all=logits_all, verbose=False, **kwargs)


def tokenization_parity(path: Path, tokenizer, texts: list[str]) -> dict:
    """Do llama.cpp (from the GGUF) and transformers split the same texts into the same ids?"""
    llm = _vocab_model(path)
    mismatches = []
    for index, text in enumerate(texts):
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        actual = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if expected != actual:
            first = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
            mismatches.append({"text": index, "first_difference": first, "transformers": expected[first:first + 5],
                               "llama_cpp": actual[first:first + 5]})
    return {"match": not mismatches, "texts": len(texts), "mismatches": mismatches[:5]}


def _log_softmax(logits):
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _hf_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def _gguf_logits(llm, ids: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], copy=True)


def quality_report(f16_path: Path, quant_paths: dict[str, Path], examples: list[dict], hf_model=None,
                   n_threads: int = 0) -> dict:
    """Perplexity of each file on the scored answer tokens, and each quant's KL divergence from F16.

    For every scored position t (logits at t predict token t+1): NLL = -log p(token), perplexity =
    exp(mean NLL) over all scored tokens of all texts. KLD(F16 || quant) = sum_v p16(v) (log p16(v) -
    log pq(v)) per position, reported as mean and 99th percentile; top-token agreement is the share of
    positions where both put the highest probability on the same token. These are the numbers
    `llama-perplexity --kl-divergence` prints, computed here from per-token logits. When hf_model is
    given, its perplexity and KLD(transformers || F16) show what the conversion itself changed.
    """
    import numpy as np

    n_ctx = max(len(e["input_ids"]) for e in examples) + 8
    models = {"F16": _llama(f16_path, n_ctx, n_threads, logits_all=True)}
    models.update({q: _llama(p, n_ctx, n_threads, logits_all=True) for q, p in quant_paths.items()})
    nll = {name: [] for name in models}
    kld = {q: [] for q in quant_paths}
    agree = {q: [] for q in quant_paths}
    hf_nll, hf_kld, hf_agree = [], [], []
    for example in examples:
        ids, mask = example["input_ids"], example["mask"]
        rows = [t for t in range(len(ids) - 1) if mask[t + 1]]
        targets = np.array([ids[t + 1] for t in rows])
        logp = {name: _log_softmax(_gguf_logits(llm, ids)[rows]) for name, llm in models.items()}
        for name, lp in logp.items():
            nll[name].extend((-lp[np.arange(len(rows)), targets]).tolist())
        p16 = np.exp(logp["F16"])
        for q in quant_paths:
            kld[q].extend((p16 * (logp["F16"] - logp[q])).sum(axis=-1).tolist())
            agree[q].extend((logp["F16"].argmax(-1) == logp[q].argmax(-1)).tolist())
        if hf_model is not None:
            lp_hf = _log_softmax(_hf_logits(hf_model, ids)[rows])
            hf_nll.extend((-lp_hf[np.arange(len(rows)), targets]).tolist())
            hf_kld.extend((np.exp(lp_hf) * (lp_hf - logp["F16"])).sum(axis=-1).tolist())
            hf_agree.extend((lp_hf.argmax(-1) == logp["F16"].argmax(-1)).tolist())
    report = {
        "tokens_scored": len(nll["F16"]),
        "texts": len(examples),
        "perplexity": {name: float(math.exp(np.mean(v))) for name, v in nll.items()},
        "kld_mean": {q: float(np.mean(v)) for q, v in kld.items()},
        "kld_p99": {q: float(np.percentile(v, 99)) for q, v in kld.items()},
        "top_token_agreement": {q: float(np.mean(v)) for q, v in agree.items()},
    }
    if hf_model is not None:
        report["perplexity_transformers"] = float(math.exp(np.mean(hf_nll)))
        report["kld_f16_vs_transformers"] = {"mean": float(np.mean(hf_kld)), "p99": float(np.percentile(hf_kld, 99)),
                                             "top_token_agreement": float(np.mean(hf_agree))}
    return report


def _hf_greedy(model, prompt_ids: list[int], k: int) -> list[int]:
    """k greedy tokens from transformers, one forward step at a time with the KV cache (no stopping)."""
    import torch

    new, past, inputs = [], None, torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(k):
            out = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            new.append(token)
            inputs = torch.tensor([[token]])
    return new


def _gguf_greedy(llm, prompt_ids: list[int], k: int) -> list[int]:
    """k greedy tokens from llama.cpp (Llama.generate never stops by itself)."""
    new = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        new.append(int(token))
        if len(new) >= k:
            break
    return new


def greedy_parity(hf_model, tokenizer, gguf_path: Path, conversations: list[list[dict]], k: int,
                  n_threads: int = 0) -> dict:
    """Do transformers and the GGUF (through llama.cpp) pick the same k greedy tokens?

    Each side tokenizes the rendered prompt itself, as an app would, and takes exactly k greedy steps:
    an end token counts as a token and decoding continues past it, so every prompt compares k
    choices even when a model stops early. At a mismatch, the transformers logit margin between its
    choice and llama.cpp's tells a real defect (large margin) from a near tie flipped by 16-bit
    rounding (tiny margin).
    """
    prompts = [render_prompt(tokenizer, messages) for messages in conversations]
    n_ctx = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) + k + 8
    llm = _llama(gguf_path, n_ctx, n_threads)
    rows, texts = [], []
    for index, prompt in enumerate(prompts):
        hf_ids = _hf_greedy(hf_model, tokenizer(prompt, add_special_tokens=False)["input_ids"], k)
        gguf_ids = _gguf_greedy(llm, llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True), k)
        texts.append(tokenizer.decode(hf_ids, skip_special_tokens=False))
        row = {"prompt": index, "match": hf_ids == gguf_ids, "tokens": len(hf_ids), "first_mismatch": None}
        if not row["match"]:
            first = next(i for i, (a, b) in enumerate(zip(hf_ids, gguf_ids)) if a != b)
            prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"] + hf_ids[:first]
            logits = _hf_logits(hf_model, prefix)[-1]
            row.update(first_mismatch=first, hf_margin=float(logits[hf_ids[first]] - logits[gguf_ids[first]]))
        rows.append(row)
    return {"match": all(r["match"] for r in rows), "prompts": len(rows), "k": k, "rows": rows, "texts": texts}


def distinct_prompts(records: list[dict], n: int) -> list[list[dict]]:
    """The first n different prompts (a question can have several answers, i.e. several records)."""
    seen, prompts = set(), []
    for record in records:
        key = json.dumps(record["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(record["prompt"])
        if len(prompts) == n:
            break
    return prompts


def chat_formatter(path: Path, enable_thinking: bool | None = False):
    """llama-cpp-python's Jinja chat formatter over the template stored in the GGUF.

    llama-cpp-python's create_chat_completion has no way to pass enable_thinking to the template, so
    its default formatter renders Qwen3's *thinking* generation prompt. Our formatter is the same class
    with enable_thinking fixed (False = the prompt the model was trained on).
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = gguf_metadata(path, ["tokenizer.chat_template"]).get("tokenizer.chat_template")
    if not isinstance(template, str):
        raise GGUFError(f"{path}: no tokenizer.chat_template in the metadata: llama.rn could not format chats")

    class TemplateFormatter(Jinja2ChatFormatter):
        def __call__(self, **kwargs):
            if enable_thinking is not None:
                kwargs.setdefault("enable_thinking", enable_thinking)
            return super().__call__(**kwargs)

    return TemplateFormatter(template, eos_token=END_TOKEN, bos_token="")


def chat_model(path: Path, n_ctx: int = 1024, n_threads: int = 0, seed: int = 1234):
    """A llama_cpp.Llama whose chat completions use the file's own template in non-thinking mode."""
    return _llama(path, n_ctx, n_threads, chat_handler=chat_formatter(path).to_chat_handler(), seed=seed)


def chat_answers(path: Path, conversations: list[list[dict]], sampling, n_threads: int = 0,
                 llm=None) -> list[dict]:
    """Answer each conversation through llama-cpp-python's chat API (seeded, Qwen's non-thinking sampling)."""
    llm = llm or chat_model(path, n_threads=n_threads, seed=sampling.seed)
    results = []
    for number, messages in enumerate(conversations):
        out = llm.create_chat_completion(
            messages=messages, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            min_p=0.0, max_tokens=sampling.max_new_tokens, seed=sampling.seed + number,
            repeat_penalty=sampling.repetition_penalty)
        choice = out["choices"][0]
        results.append({"text": choice["message"]["content"].strip(), "ended_on_eos": choice["finish_reason"] == "stop",
                        "new_tokens": out["usage"]["completion_tokens"]})
    return results


def chat_stop_check(path: Path, tokenizer, messages: list[dict], max_tokens: int = 64, force_after: int = 6,
                    n_threads: int = 0, seed: int = 1234) -> dict:
    """Does a llama-cpp-python chat completion with the embedded template end on <|im_end|>?

    1. Prompt: the default formatter (no enable_thinking) and ours (enable_thinking=False) are
       compared with the training prompt (chat.render_prompt).
    2. Forced run: a logits processor makes <|im_end|> the only choice after force_after tokens; the
       completion must stop right there, finish_reason "stop", no end marker in the text. This proves
       the file's and the chat API's stop handling for exactly that token, whatever the model has learned.
    3. Natural run: Qwen's sampling within max_tokens; natural_stop says whether the model ended its
       answer by itself (an untrained model may not; notebook 05 measures this on many prompts).
    """
    import numpy as np
    from llama_cpp import LogitsProcessorList

    expected = render_prompt(tokenizer, messages)
    default_prompt = chat_formatter(path, enable_thinking=None)(messages=messages).prompt
    ours = chat_formatter(path, enable_thinking=False)(messages=messages).prompt
    llm = chat_model(path, n_threads=n_threads, seed=seed)
    sampling = dict(PHONE_SAMPLING, max_tokens=max_tokens, seed=seed)
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    calls = {"n": 0}

    def force_end(input_ids, scores):
        calls["n"] += 1
        if calls["n"] > force_after:
            scores = np.full_like(scores, -np.inf)
            scores[end_id] = 0.0
        return scores

    forced = llm.create_chat_completion(messages=messages, logits_processor=LogitsProcessorList([force_end]),
                                        **sampling)
    natural = llm.create_chat_completion(messages=messages, **sampling)
    f_choice, n_choice = forced["choices"][0], natural["choices"][0]
    prompt_ok = ours == expected
    return {
        "default_formatter_matches_training": default_prompt == expected,
        "formatter_prompt_matches_training": prompt_ok,
        "forced_finish_reason": f_choice["finish_reason"],
        "forced_tokens": forced["usage"]["completion_tokens"],
        "stops_on_im_end": bool(prompt_ok and f_choice["finish_reason"] == "stop"
                                and forced["usage"]["completion_tokens"] == force_after
                                and END_TOKEN not in f_choice["message"]["content"]),
        "natural_finish_reason": n_choice["finish_reason"],
        "natural_stop": n_choice["finish_reason"] == "stop",
        "natural_tokens": natural["usage"]["completion_tokens"],
        "natural_text": n_choice["message"]["content"],
        "think_leak": has_think_leak(n_choice["message"]["content"]),
    }


# ---------------------------------------------------------------------------------------------
# The whole phase in one call (tests and the benchmark), and the metrics it reports
# ---------------------------------------------------------------------------------------------

def manifest_entry(path: Path, fmt: str) -> dict:
    return {"file": Path(path).name, "format": fmt, "bytes": Path(path).stat().st_size,
            "sha256": sha256_file(path), "note": FORMAT_NOTES[fmt]}


def export_all(model_dir: Path, out_dir: Path, quants: list[str], converter_dir: Path | None = None,
               n_threads: int = 0, log=print) -> dict:
    """Convert to F16 and quantize; returns {"files": {fmt: path}, "conversion": ..., "quantization": ...}."""
    out_dir = Path(out_dir)
    conversion = convert_to_gguf(model_dir, out_dir / format_filename("F16"), converter_dir, log=log)
    files = {"F16": Path(conversion["path"])}
    quantization = {}
    for quant in quants:
        quantization[quant] = quantize_gguf(files["F16"], out_dir / format_filename(quant), quant, n_threads)
        files[quant] = Path(quantization[quant]["path"])
        log(f"{quant}: {quantization[quant]['bytes'] / 2**20:.1f} MiB in {quantization[quant]['seconds']:.1f} s")
    return {"files": files, "conversion": conversion, "quantization": quantization}


def verify_export(files: dict[str, Path], model_dir: Path, records: list[dict], cfg) -> dict:
    """Run every check on exported files (cfg: ExportConfig); returns one dict of results per check."""
    from .models import load_causal_lm, load_tokenizer

    n_threads = cfg.n_threads

    tokenizer = load_tokenizer(str(model_dir))
    hf_model = load_causal_lm(str(model_dir))
    quants = {q: p for q, p in files.items() if q != "F16"}
    examples = scoring_examples(records, tokenizer, cfg.kld_max_texts)
    conversations = distinct_prompts(records, cfg.parity_prompts)
    texts = [e["text"] for e in examples] + [render_prompt(tokenizer, c) for c in conversations] + EDGE_TEXTS
    return {
        "kquants": {q: quant_type_report(p, q) for q, p in quants.items()},
        "templates": {fmt: template_roundtrip(p, tokenizer) for fmt, p in files.items()},
        "stop_tokens": {fmt: stop_token_report(p, tokenizer) for fmt, p in files.items()},
        "tokenization": {fmt: tokenization_parity(p, tokenizer, texts) for fmt, p in files.items()},
        "greedy": greedy_parity(hf_model, tokenizer, files["F16"], conversations, cfg.parity_tokens, n_threads),
        "quality": quality_report(files["F16"], quants, examples, hf_model, n_threads),
        "chat": chat_stop_check(files[deploy_format(list(quants))], tokenizer, conversations[0],
                                max_tokens=cfg.chat_max_tokens, n_threads=n_threads),
    }


def deploy_format(quants: list[str]) -> str:
    """The file the phone gets: Q4_K_M when exported, else the first quant listed."""
    return "Q4_K_M" if "Q4_K_M" in quants else quants[0]


def export_metrics(files: dict[str, Path], checks: dict, conversion: dict, quantization: dict) -> dict:
    """The metrics.json of the export phase, from the files and the check results."""
    quality = checks["quality"]
    kquant_formats = [q for q in checks["kquants"] if q != "Q8_0"]
    return {
        "bytes": {fmt: Path(p).stat().st_size for fmt, p in files.items()},
        "perplexity": quality["perplexity"],
        "perplexity_transformers": quality.get("perplexity_transformers"),
        "kld_mean": quality["kld_mean"],
        "kld_p99": quality["kld_p99"],
        "top_token_agreement": quality["top_token_agreement"],
        "kld_f16_vs_transformers": quality.get("kld_f16_vs_transformers"),
        "tokens_scored": quality["tokens_scored"],
        "greedy_parity": checks["greedy"]["match"],
        "tokenization_parity": all(r["match"] for r in checks["tokenization"].values()),
        "template_roundtrip": all(checks["templates"].values()),
        "stop_tokens_ok": all(r["ok"] for r in checks["stop_tokens"].values()),
        "chat_stops_on_im_end": checks["chat"]["stops_on_im_end"],
        "chat_natural_stop": checks["chat"]["natural_stop"],
        "kquants_applied": all(checks["kquants"][q]["applied"] for q in kquant_formats) if kquant_formats else None,
        "tensor_types": {q: r["tensor_counts"] for q, r in checks["kquants"].items()},
        "pre_tokenizer": conversion["pre_tokenizer"],
        "pre_tokenizer_fallback": conversion["pre_tokenizer_fallback"],
        "convert_seconds": conversion["seconds"],
        "quantize_seconds": {q: r["seconds"] for q, r in quantization.items()},
        "deploy_file": format_filename(deploy_format([q for q in files if q != "F16"])),
        "llama_cpp_python": llama_cpp_version(),
    }


def checks_passed(metrics: dict) -> dict[str, bool]:
    """The pass/fail checks of an export, by name (all must be True before a file ships)."""
    names = ("greedy_parity", "tokenization_parity", "template_roundtrip", "stop_tokens_ok",
             "chat_stops_on_im_end", "kquants_applied")
    return {name: bool(metrics.get(name)) for name in names}


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

    from .tiny import QWEN2_SPLIT

    reader = _reader(Path(converter_dir) / "models" / "ggml-vocab-qwen2.gguf")
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
    wrapped = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END_TOKEN, pad_token=PAD_TOKEN,
                                      model_max_length=40960, clean_up_tokenization_spaces=False)
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


def check_reference_tokenizer(tokenizer, converter_dir: Path) -> dict:
    """Compare a tokenizer with llama.cpp's expected Qwen2 ids for its test texts (.inp/.out files)."""
    base = Path(converter_dir) / "models" / "ggml-vocab-qwen2.gguf"
    texts = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")
    pairs = list(zip(texts, expected))
    matches = sum(tokenizer(t, add_special_tokens=False)["input_ids"] == [int(x) for x in e.split()]
                  for t, e in pairs)
    return {"texts": len(pairs), "matches": matches, "ok": len(pairs) > 0 and matches == len(pairs)}

