"""empathy_workbook: the library behind the notebooks, in folders that show its parts.

    config.py paths.py io.py chat.py family.py   shared ground: presets, paths, files, chat templates
    plots.py tables.py ui.py logprobs.py         what notebooks show, and token log-probabilities
    rehearsal_data.py                            writes data/rehearsal_amod_shaped.json
    phases/     one module per notebook (00 data ... 05 evaluate), plus what SFT and DPO share
    judges/     get_judge above the interface (base) above the backends (rubric, transformers, llamacpp)
    llamacpp/   running, converting and checking GGUF files
    models/     where weights come from (tiny, packaged, random-weight) and how they are loaded
    pipeline/   the phase contract (runtime), fingerprints, the runner, the report, the notebooks' guide

No import circle: an interface sits above its implementations (judges/__init__ above base above the
backends), and no module imports one that imports it.
"""

__version__ = "0.1.0"
