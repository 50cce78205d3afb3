"""Phase 04: turn the merged DPO model into GGUF files for llama.cpp / llama.rn, and prove they are the
model we trained.

Steps (notebook 04 walks through them in this order):

1. ``ensure_converter``: llama.cpp's own converter (``convert_hf_to_gguf.py`` + ``conversion/`` +
   ``gguf-py/``), taken from the source distribution of the *installed* llama-cpp-python version,
   fetched once with pip and cached under artifacts/cache/converter/<version>/.
2. ``convert_to_gguf``: HF folder → F16 GGUF (subprocess, the venv's python, ``llamacpp.convert`` wrapper).
3. ``quantize_gguf``: F16 → Q4_K_M (default), Q5_K_M, Q6_K, Q8_0 through ``llama_cpp.llama_model_quantize``.
4. ``verify_export`` runs every check: the file checks of llamacpp/file_checks.py (structure, truncation,
   checksum, K-quants really applied, template round trip, stop tokens, tokenization parity) and the
   behaviour checks of llamacpp/quality.py (greedy parity, perplexity, KL divergence, top-token agreement,
   a chat completion that ends on the family's end-of-turn token); ``metrics`` sums them up (the phase's
   metrics.json) and ``file_checks.checks_passed`` gives the verdict.

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
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from ..chat import encode_messages, render_prompt
from ..family import family_of
from ..io import sha256_file, write_json
from ..llamacpp import phone
from ..llamacpp.convert import CONVERTER_VOCAB_DIR
from ..llamacpp.file_checks import (EDGE_TEXTS, GGUFError, failed_checks, quant_type_report, stop_token_report,
                                    template_roundtrip, tokenization_parity, verify_gguf_file)
from ..llamacpp.imatrix import calibration_text, compute_imatrix, quantize_with_imatrix
from ..llamacpp.inference import gguf_context_length, quiet, threads
from ..llamacpp.quality import chat_stop_check, distinct_prompts, greedy_parity, quality_report, scoring_examples
from ..paths import cache_dir

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


def format_filename(fmt: str) -> str:
    """model-f16.gguf, model-q4_k_m.gguf, ..."""
    return f"model-{fmt.lower()}.gguf"


# ---------------------------------------------------------------------------------------------
# 1. The converter: llama.cpp's own, from the sdist of the installed llama-cpp-python
# ---------------------------------------------------------------------------------------------

SDIST_PREFIX = "vendor/llama.cpp/"
# What we keep from the sdist: the converter, its model package, its gguf-py, the license, and the
# Qwen2 vocabulary test file (tests rebuild Qwen's real tokenizer from it).
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
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".lock"):  # two notebooks or tests never fetch into the same cache at once
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


@contextlib.contextmanager
def converter_view(model_dir: Path, chat_template: str | None = None):
    """The folder the converter should read: model_dir itself, or a temporary folder of links to model_dir's files
    when something must differ for the converter only:

    - model_dir carries SentencePiece files for the converter (llamacpp.convert.CONVERTER_VOCAB_DIR: tokenizer.model,
      added_tokens.json): they join the view, so that transformers never sees them;
    - chat_template is given: the view's tokenizer_config.json and chat_template.jinja hold it, so the GGUF carries
      that template while the model folder keeps its own (Qwen3's official one stays there for Python users).
    """
    model_dir = Path(model_dir)
    vocab = model_dir / CONVERTER_VOCAB_DIR
    if not vocab.is_dir() and chat_template is None:
        yield model_dir
        return
    replaced = {"tokenizer_config.json", "chat_template.jinja", "chat_template.json"} if chat_template is not None else set()
    extra = list(vocab.iterdir()) if vocab.is_dir() else []
    with tempfile.TemporaryDirectory(prefix="convert-") as tmp:
        view = Path(tmp) / model_dir.name
        view.mkdir()
        for item in [*model_dir.iterdir(), *extra]:
            if item.name != CONVERTER_VOCAB_DIR and item.name not in replaced and not (view / item.name).exists():
                (view / item.name).symlink_to(item.resolve())
        if chat_template is not None:
            # the converter (gguf-py's SpecialVocab) takes tokenizer_config.json's chat_template first
            config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
            config["chat_template"] = chat_template
            (view / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
            (view / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
        yield view


def convert_to_gguf(model_dir: Path, out_path: Path, converter_dir: Path | None = None, outtype: str = "f16",
                    vocab_only: bool = False, chat_template: str | None = None, log=print) -> dict:
    """Convert an HF model folder to GGUF with llama.cpp's converter; returns what happened.

    chat_template: the template the file carries (None: the folder's own); the export passes phone_template's.

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
    cmd = [sys.executable, "-m", "empathy_workbook.llamacpp.convert", "--converter-dir", str(converter_dir),
           "--report", str(report_path), "--", str(model_dir), "--outfile", str(partial), "--outtype", outtype]
    if vocab_only:
        cmd.append("--vocab-only")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    started = time.perf_counter()
    with converter_view(model_dir, chat_template) as view:
        cmd[cmd.index(str(model_dir))] = str(view)
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


def phone_template(tokenizer) -> str:
    """The chat template every exported file carries: this project's template for the model's family.

    It renders the training prompt whatever the app sends: Qwen3's is non-thinking even when enable_thinking is
    left out (llama.rn then sends true). The model folder keeps its own template (Qwen3's official one, for Python
    users); the export checks prove both render the same prompts.
    """
    return family_of(tokenizer).template_text()


def quantize_gguf(src: Path, dst: Path, quant: str, n_threads: int = 0, imatrix: Path | None = None) -> dict:
    """Quantize an F16 GGUF with llama.cpp's quantizer; returns bytes and seconds.

    Without an importance matrix: llama_model_quantize through llama-cpp-python. With one (a llama-imatrix file):
    llama.cpp's llama-quantize tool, built with llama-cpp-python from the same sources (the Python API cannot
    pass an imatrix).
    """
    import llama_cpp

    if quant not in QUANT_FTYPES:
        raise ValueError(f"unknown quant {quant!r}: choose from {sorted(QUANT_FTYPES)}")
    src, dst = Path(src), Path(dst)
    verify_gguf_file(src)
    partial = _partial_path(dst)
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    if imatrix is not None:
        quantize_with_imatrix(src, partial, quant, Path(imatrix), n_threads)
    else:
        quiet()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
        params.nthread = threads(n_threads)
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
        if status != 0:
            partial.unlink(missing_ok=True)
            raise GGUFError(f"llama_model_quantize({src.name} → {quant}) returned {status}")
    seconds = time.perf_counter() - started
    summary = verify_gguf_file(partial)
    os.replace(partial, dst)
    return {"path": str(dst), "bytes": summary["bytes"], "seconds": round(seconds, 2), "imatrix": imatrix is not None}


def make_imatrix(f16_path: Path, train_records: list[dict], tokenizer, cfg, out_dir: Path) -> dict:
    """llama-imatrix over the training chats (cfg: ExportConfig: imatrix_ctx, imatrix_chunks, n_threads)."""
    text = calibration_text(train_records, tokenizer)
    return compute_imatrix(f16_path, text, Path(out_dir) / "imatrix.gguf", n_ctx=cfg.imatrix_ctx,
                           chunks=cfg.imatrix_chunks, n_threads=cfg.n_threads)


# ---------------------------------------------------------------------------------------------
# The whole phase in one call (tests and the benchmark), and the metrics it reports
# ---------------------------------------------------------------------------------------------

def manifest_entry(path: Path, fmt: str) -> dict:
    return {"file": Path(path).name, "format": fmt, "bytes": Path(path).stat().st_size,
            "sha256": sha256_file(path), "note": FORMAT_NOTES[fmt]}


def export_all(model_dir: Path, out_dir: Path, quants: list[str], converter_dir: Path | None = None,
               n_threads: int = 0, imatrix: Path | None = None, log=print) -> dict:
    """Convert to F16 (carrying phone_template) and quantize (with an importance matrix when given).

    Returns {"files": {fmt: path}, "conversion": ..., "quantization": ...}.
    """
    from ..models.loading import load_tokenizer

    out_dir = Path(out_dir)
    template = phone_template(load_tokenizer(str(model_dir)))
    conversion = convert_to_gguf(model_dir, out_dir / format_filename("F16"), converter_dir, chat_template=template,
                                 log=log)
    files = {"F16": Path(conversion["path"])}
    quantization = {}
    for quant in quants:
        quantization[quant] = quantize_gguf(files["F16"], out_dir / format_filename(quant), quant, n_threads, imatrix)
        files[quant] = Path(quantization[quant]["path"])
        log(f"{quant}: {quantization[quant]['bytes'] / 2**20:.1f} MiB in {quantization[quant]['seconds']:.1f} s")
    return {"files": files, "conversion": conversion, "quantization": quantization}


def verify_export(files: dict[str, Path], model_dir: Path, records: list[dict], cfg, suite: list[list[dict]],
                  train_records: list[dict], log_dir: Path) -> dict:
    """Run every check on exported files; returns one dict of results per check.

    cfg: the RunConfig (export's settings, and eval's word budget and sampling for the phone settings); records:
    validation records; suite: the evaluation suite's conversations; train_records: training records (tokens per
    word for n_predict); log_dir: where llama-server's logs go.
    """
    from ..models.loading import load_causal_lm, load_tokenizer

    ecfg = cfg.export
    n_threads = ecfg.n_threads
    tokenizer = load_tokenizer(str(model_dir))
    hf_model = load_causal_lm(str(model_dir))
    quants = {q: p for q, p in files.items() if q != "F16"}
    examples = scoring_examples(records, tokenizer, ecfg.kld_max_texts)
    conversations = distinct_prompts(records, ecfg.parity_prompts)
    texts = [e["text"] for e in examples] + [render_prompt(tokenizer, c) for c in conversations] + EDGE_TEXTS
    quality = quality_report(files["F16"], quants, examples, hf_model, n_threads)
    answered = suite[:ecfg.phone_prompts] if ecfg.phone_prompts else suite  # rendering is cheap: every prompt
    settings = phone.phone_settings(
        tokenizer, cfg.eval.sampling, cfg.eval.word_budget, [r["completion"][0]["content"] for r in train_records],
        prompt_tokens=max(len(encode_messages(tokenizer, m)) for m in suite + conversations),
        trained_context=gguf_context_length(files["F16"]))
    named = None if ecfg.deploy == "auto" else deploy_format(list(quants), ecfg.deploy)
    phone_result = phone.phone_checks(files, quality["kld_mean"], tokenizer, conversations + suite, answered,
                                      settings, ecfg, log_dir, named)
    deploy = phone_result["deploy"]
    return {
        "inputs": {"scored_texts": len(examples), "tokenization_texts": len(texts), "conversations": conversations,
                   "suite_prompts": len(suite), "answered_prompts": len(answered)},
        "kquants": {q: quant_type_report(p, q) for q, p in quants.items()},
        "templates": {fmt: template_roundtrip(p, tokenizer) for fmt, p in files.items()},
        "stop_tokens": {fmt: stop_token_report(p, tokenizer) for fmt, p in files.items()},
        "tokenization": {fmt: tokenization_parity(p, tokenizer, texts) for fmt, p in files.items()},
        "greedy": greedy_parity(hf_model, tokenizer, files["F16"], conversations, ecfg.parity_tokens, n_threads,
                                ecfg.parity_tie_margin),
        "quality": quality,
        "chat": chat_stop_check(files[deploy], tokenizer, conversations[0],
                                max_tokens=ecfg.chat_max_tokens, n_threads=n_threads),
        "phone": phone_result,
        "phone_settings": settings,
        "deploy": deploy,
    }


def deploy_format(quants: list[str], deploy: str = "") -> str:
    """The file the phone gets when the preset does not ask for auto: `deploy` when it names one, else Q4_K_M when
    exported, else the first."""
    if deploy:
        return deploy
    return "Q4_K_M" if "Q4_K_M" in quants else quants[0]


def metrics(files: dict[str, Path], checks: dict, conversion: dict, quantization: dict, cfg) -> dict:
    """Phase 04's metrics.json contract, from the files and what convert_to_gguf, quantize_gguf and verify_export
    returned (cfg: ExportConfig); finish_export adds the verdict."""
    quality = checks["quality"]
    phone_m = checks["phone"]["server"]
    min_rate, tolerance = cfg.min_stop_rate, cfg.stop_rate_tolerance
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
        "greedy_parity": checks["greedy"]["ok"],
        "greedy_exact": checks["greedy"]["match"],
        "greedy_near_ties": checks["greedy"]["near_ties"],
        "greedy_differences": checks["greedy"]["differences"],
        "tokenization_parity": all(r["match"] for r in checks["tokenization"].values()),
        "template_roundtrip": all(checks["templates"].values()),
        "stop_tokens_ok": all(r["ok"] for r in checks["stop_tokens"].values()),
        "chat_stops_on_end_of_turn": checks["chat"]["stops_on_end_of_turn"],
        "chat_natural_stop": checks["chat"]["natural_stop"],
        "kquants_applied": all(checks["kquants"][q]["applied"] for q in kquant_formats) if kquant_formats else None,
        "tensor_types": {q: r["tensor_counts"] for q, r in checks["kquants"].items()},
        "pre_tokenizer": conversion["pre_tokenizer"],
        "pre_tokenizer_fallback": conversion["pre_tokenizer_fallback"],
        "convert_seconds": conversion["seconds"],
        "quantize_seconds": {q: r["seconds"] for q, r in quantization.items()},
        "deploy_file": format_filename(checks["deploy"]),
        "deploy_sha256": sha256_file(files[checks["deploy"]]),
        "deploy_choice": deploy_choice(checks["phone"]),
        "imatrix": any(r.get("imatrix") for r in quantization.values()),
        "server_renders_training_prompt": checks["phone"]["rendering"]["ok"],
        "server_stop_rate": phone_m["eos_rate"],
        "server_end_of_turn_rate": phone_m["end_of_turn_rate"],
        "server_stop_types": phone_m["stop_types"],
        "server_think_blocks": phone_m["think_blocks"],
        "server_stop_rates": checks["phone"]["server_stop_rates"],
        "python_stop_rate": checks["phone"]["python_stop_rate"],
        "server_stops_on_end_of_turn": phone_m["eos_rate"] >= min_rate and phone_m["think_blocks"] == 0,
        "server_matches_python": checks["phone"]["stop_rate_gap"] <= tolerance,
        "deploy_within_limits": checks["phone"]["within_limits"],
        "phone_settings": phone.PHONE_SETTINGS_FILE,
        "llama_cpp_python": llama_cpp_version(),
    }


def deploy_choice(phone_result: dict) -> dict:
    """What summary.json and the report say about the phone's format: the setting, the choice, auto's choice, why."""
    auto, setting = phone_result["auto"], phone_result["setting"]
    if setting == "auto":
        reason = auto["reason"]
    else:
        reason = (f"set by hand (export.deploy: {setting})" if setting else
                  "export.deploy is unset: Q4_K_M when exported, else the first format listed")
        if phone_result["auto_differs"]:
            reason += f"; deploy: auto would have chosen {auto['format'] or 'no format'}: {auto['reason']}"
        else:
            reason += "; deploy: auto agrees"
    return {"setting": phone_result["setting"], "format": phone_result["deploy"], "auto_format": auto["format"],
            "auto_differs": phone_result["auto_differs"], "reason": reason,
            "candidates": [{k: c[k] for k in ("format", "bytes", "kld_mean", "stop_rate", "verdict")}
                           for c in auto["candidates"]]}


class ExportFailed(RuntimeError):
    """An export check failed: the files must not be shipped nor evaluated as the phone model."""


def finish_export(ctx, metrics: dict) -> dict:
    """finish_phase for notebook 04, with the verdict deciding.

    All checks passed: metrics.json is written as usual. A check failed: metrics.json is still written
    (to be read), under a fingerprint no later run matches (so the phase runs again instead of being
    reused), and ExportFailed is raised: the runner stops before the evaluation can use the file.
    """
    from dataclasses import replace

    from ..pipeline.runtime import finish_phase

    failed = failed_checks(metrics)
    metrics = dict(metrics, verified=not failed, checks_failed=failed)
    if not failed:
        return finish_phase(ctx, metrics)
    finish_phase(replace(ctx, fingerprint=f"unverified-{ctx.fingerprint}"), metrics)
    raise ExportFailed(f"export check(s) {failed} failed: do not ship {metrics.get('deploy_file')}; the "
                       f"details are in {ctx.out / 'metrics.json'} and in notebook 04's tables")


def verified_deploy_file(export_dir: Path) -> Path:
    """The phone file of a finished export, after checking that the export recorded every check as passed."""
    from ..io import read_json

    metrics_path = Path(export_dir) / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} is missing: run notebook 04 (export) first")
    metrics = read_json(metrics_path)
    failed = failed_checks(metrics)
    if failed:
        raise ExportFailed(f"{metrics_path}: export check(s) {failed} failed, so "
                           f"{metrics.get('deploy_file')} is not verified: fix the export and run notebook 04 again")
    path = Path(export_dir) / metrics["deploy_file"]
    verify_gguf_file(path, expected_sha256=metrics.get("deploy_sha256"))
    return path
