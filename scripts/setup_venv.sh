#!/usr/bin/env bash
# Create .venv and install the project into it. Called by `make` when .venv is missing or
# pyproject.toml changed; safe to re-run.
#   CPU machine : the CPU build of torch, then the project (+ dev tools, JupyterLab)
#   CUDA machine: the normal torch build, then the project with the `gpu` extra (Unsloth, bitsandbytes)
# Both register the venv's Python as the `python3` Jupyter kernel inside .venv (see the end).
# llama-cpp-python compiles from source (about 6 minutes on 2 cores the first time; pip caches the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
# Skip the parts of llama.cpp we don't use (multimodal library, tests, examples, server, tools).
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: CUDA GPU found: installing the project with the gpu extra (Unsloth, bitsandbytes)"
  $PIP install -e ".[gpu,dev,lab]"
else
  echo "setup: no CUDA GPU: installing the CPU build of torch"
  # TORCH_INDEX_URL may point at PyTorch's CPU wheel index to avoid downloading a CUDA build.
  $PIP install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
  $PIP install -e ".[dev,lab]"
fi
.venv/bin/python -c "import empathy_workbook, torch, transformers, trl, peft, llama_cpp; print('setup: ok, torch', torch.__version__, '| cuda', torch.cuda.is_available())"
# The committed notebooks declare the kernel `python3`. Installed with --sys-prefix the spec lives in
# .venv/share/jupyter and starts .venv/bin/python; a user's own kernels in ~/.local/share/jupyter are
# left alone. Jupyter run from a venv already looks in the venv first (jupyter_core's
# JUPYTER_PREFER_ENV_PATH); `make lab` and the browser test also put it first on JUPYTER_PATH.
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (empathy-workbook)"
