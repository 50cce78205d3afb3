"""Notebook helper for authors: convert a py:percent draft to a clean .ipynb, or strip outputs.

    python scripts/nbtool.py build draft.py notebooks/NN_verb_object.ipynb
    python scripts/nbtool.py draft notebooks/NN_verb_object.ipynb draft.py   # to edit as text
    python scripts/nbtool.py strip notebooks/*.ipynb

Committed notebooks carry no outputs and the python3 kernelspec (papermill needs one).
"""

import json
import sys
from pathlib import Path

import jupytext

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def clean(nb: dict) -> dict:
    nb["metadata"] = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    for cell in nb["cells"]:
        # Keep tags (papermill's `parameters`) and `jupyter` (source_hidden: the collapsed worked answers).
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in ("tags", "jupyter") and v}
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.pop("id", None)
    nb["nbformat"], nb["nbformat_minor"] = 4, 4
    return nb


def write(nb: dict, path: Path) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv):
    command, *args = argv
    if command == "build":
        src, dst = map(Path, args)
        nb = json.loads(jupytext.writes(jupytext.read(src), fmt="ipynb"))
        write(clean(nb), dst)
    elif command == "draft":
        src, dst = map(Path, args)
        jupytext.write(jupytext.read(src), dst, fmt="py:percent")
    elif command == "strip":
        for name in args:
            path = Path(name)
            write(clean(json.loads(path.read_text(encoding="utf-8"))), path)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
