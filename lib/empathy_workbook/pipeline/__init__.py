"""What runs the notebooks as one pipeline, and what it writes around them.

    runtime.py      start_phase / finish_phase, which every notebook calls (seed, run folder, fingerprint,
                    metrics.json)
    fingerprint.py  what a phase's result was made from, as one hash
    runner.py       run the notebooks in order with papermill, skipping phases whose fingerprint is unchanged
    report.py       report.html from the run's summary
    guide.py        what a learner sees first in each notebook (preset, duration, inputs); forking a run
"""
