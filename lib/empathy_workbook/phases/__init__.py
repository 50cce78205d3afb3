"""One module per notebook, the code behind each phase of the pipeline.

    data.py         notebook 00: load, clean, mix and split the conversations
    sft.py          notebook 01: supervised fine-tuning with LoRA
    rejected.py     notebook 02, step 1: sample the weaker answers
    preferences.py  notebook 02, step 2: judge them and keep the pairs with a clear gap
    dpo.py          notebook 03: direct preference optimization
    export.py       notebook 04: GGUF conversion, quantization and the file's checks
    evaluate.py     notebook 05: the evaluation suite, judged and checked
    suite_checks.py the suite's automatic checks (notebook 05)
    training.py     what SFT and DPO share (backend, LoRA, callbacks, resume, merge, spot checks)

Each phase module has a ``metrics(...)`` that builds the phase's metrics.json from what its entry points
returned; the notebook's last cell calls it and shows it, and the tests check the same function.

Phase modules import each other only where one is the other's helper: sft and dpo build on training,
evaluate on suite_checks, preferences on rejected (the notebook-02 pair).
"""
