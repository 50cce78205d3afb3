"""Run llama.cpp's own converter (convert_hf_to_gguf.py) with one narrow, explicit fallback.

Started as a subprocess by ``export.convert_to_gguf``:

    python -m empathy_workbook.llamacpp.convert --converter-dir DIR --report OUT.json -- <converter arguments>

Why a wrapper: the converter identifies a BPE pre-tokenizer by hashing how it splits a fixed test
string, and refuses any hash it does not know. Qwen's real tokenizer is in its table. Our embedded
tiny tokenizer uses exactly Qwen2's split rule but has its own (small) vocabulary, so its hash is
new. The wrapper answers "qwen2" in that one case only:

* the converter's own check ran first and failed (a known hash never reaches the fallback), and
* the tokenizer's pre-tokenizer is, field for field, Qwen2's: the Qwen2 split regex (isolated,
  not inverted) followed by byte-level mapping without prefix space or its own regex.

Anything else (another regex, another pre-tokenizer) still fails the way the converter fails.
The report file records whether the fallback was used and which ``gguf`` package was imported.

This module must not import ``gguf`` before the converter does: the converter puts the gguf-py
folder shipped beside it first on sys.path, and that copy is the one written for this converter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..family import QWEN2_SPLIT  # Qwen2's split regex (family.py imports nothing heavy, and not gguf)

# Sub-folder of a model folder holding the SentencePiece files llama.cpp's converter reads. They stay out of
# the folder itself: transformers would read added_tokens.json as new tokens and append duplicates.
CONVERTER_VOCAB_DIR = "converter_vocab"


def pre_tokenizer_spec(tokenizer) -> dict | None:
    """The serialized pre-tokenizer of a fast (Rust) tokenizer, or None for a slow one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return json.loads(backend.to_str()).get("pre_tokenizer")


def is_qwen2_pre_tokenizer(spec: dict | None) -> bool:
    """True when the pre-tokenizer is exactly Qwen2's: split regex, then byte-level mapping."""
    if not spec or spec.get("type") != "Sequence":
        return False
    steps = spec.get("pretokenizers", [])
    if len(steps) != 2:
        return False
    split, byte_level = steps
    return (
        split.get("type") == "Split"
        and split.get("pattern") == {"Regex": QWEN2_SPLIT}
        and split.get("behavior") == "Isolated"
        and split.get("invert") is False
        and byte_level.get("type") == "ByteLevel"
        and byte_level.get("add_prefix_space") is False
        and byte_level.get("use_regex") is False
    )


def install_qwen2_fallback(text_model_cls, report: dict) -> None:
    """Wrap the converter's pre-tokenizer check so an unknown hash maps to qwen2 only for Qwen2's split."""
    original = text_model_cls.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            result = original(self, tokenizer)
        except NotImplementedError:
            if not is_qwen2_pre_tokenizer(pre_tokenizer_spec(tokenizer)):
                raise  # not our case: fail exactly as the converter does
            report["pre_tokenizer_fallback"] = True
            print("llamacpp.convert: unknown pre-tokenizer hash, but the tokenizer uses Qwen2's split regex "
                  "and byte-level mapping -> tokenizer.ggml.pre = 'qwen2'", file=sys.stderr)
            result = "qwen2"
        report["pre_tokenizer"] = result
        return result

    text_model_cls.get_vocab_base_pre = get_vocab_base_pre


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--converter-dir", required=True, type=Path,
                        help="folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/")
    parser.add_argument("--report", required=True, type=Path, help="JSON file this wrapper writes")
    parser.add_argument("converter_args", nargs=argparse.REMAINDER, help="arguments after -- go to the converter")
    args = parser.parse_args(argv)
    converter_args = args.converter_args[1:] if args.converter_args[:1] == ["--"] else args.converter_args

    converter_dir = args.converter_dir.resolve()
    if "gguf" in sys.modules:
        raise RuntimeError("gguf was imported before the converter: the converter's own gguf-py would be ignored")
    os.environ.pop("NO_LOCAL_GGUF", None)  # the converter must use the gguf-py shipped with it
    sys.path.insert(0, str(converter_dir))
    sys.argv = [str(converter_dir / "convert_hf_to_gguf.py"), *converter_args]

    import convert_hf_to_gguf  # noqa: E402  (puts gguf-py on sys.path, imports conversion/)
    import gguf  # noqa: E402
    from conversion.base import TextModel  # noqa: E402

    report = {"pre_tokenizer_fallback": False, "pre_tokenizer": None, "gguf_module": gguf.__file__,
              "converter": str(converter_dir / "convert_hf_to_gguf.py")}
    install_qwen2_fallback(TextModel, report)
    try:
        convert_hf_to_gguf.main()
    finally:
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
