"""Everything that touches llama.cpp: running a GGUF, writing one, and checking it.

    inference.py    load a GGUF with llama-cpp-python, complete and score text (used by export, evaluation,
                    the llama.cpp judge and the chat widget)
    convert.py      the wrapper around llama.cpp's own converter, run as a subprocess
    file_checks.py  checks on the file itself: metadata, stop tokens, chat template, tokenization parity
    quality.py      checks that run the model: greedy parity, perplexity, KL divergence, chat stop
    server.py       llama.cpp's own server (llama-server --jinja, the phone's chat engine) on localhost, and the
                    other tools built with it (llama-imatrix, llama-quantize)
    phone.py        what the phone sees, checked on that server: template rendering with and without
                    enable_thinking, phone_settings.json, stop types, the format deploy: auto picks
    imatrix.py      importance-matrix quantization (llama-imatrix over the training chats, llama-quantize)

Nothing is imported here: ``convert.py`` runs as ``python -m empathy_workbook.llamacpp.convert`` and must not
import ``gguf`` before llama.cpp's converter puts its own copy first on sys.path.
"""
