"""Where a model's weights come from, and how they are loaded.

    loading.py         resolve a model name to a folder, load tokenizer and model, pick the training
                       backend, generate, measure memory (what the phases call)
    tiny.py            the embedded tiny Qwen3-shaped model, trained on the project's corpus (CPU default)
    packaged.py        safetensors folders converted once from GGUFs shipped as pip packages
    random_weights.py  random-weight Qwen3 models with real shapes, for rehearsing the real path on a CPU

``loading`` imports the three sources only when a model name asks for one. Nothing is imported here: a module
that needs one source does not load the others.
"""
