#!/usr/bin/env bash
# The one prepared GPU command: on a CUDA machine, install what is missing, then run the qwen3-0.6b-rehearsal
# preset at Qwen3-0.6B's full 28 layers twice, through Unsloth (4-bit base) and through transformers + PEFT (bf16),
# in two processes when the machine has two GPUs, and write per-notebook wall time, tokens/s and peak GPU memory
# to bench/results/ (bench/gpu_check.py does the runs and the table).
#
#   bash bench/gpu_check.sh                # both backends
#   bash bench/gpu_check.sh --only unsloth # one of them (unsloth | transformers)
#
# Without CUDA it stops at once with a message saying what it needs; it never starts an install or a run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_cuda() {
  echo "gpu_check: $1" >&2
  echo "gpu_check: this command needs a Linux machine with an NVIDIA GPU, its driver (nvidia-smi) and a CUDA" >&2
  echo "gpu_check: build of torch; on a CPU machine run 'make test' instead." >&2
  exit 2
}

# 1. CUDA first, before anything is installed or started (the check costs a second, not a failed run).
command -v nvidia-smi >/dev/null 2>&1 || need_cuda "no nvidia-smi on PATH: no NVIDIA driver on this machine"
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
[ "${GPUS:-0}" -ge 1 ] || need_cuda "nvidia-smi lists no GPU"

# 2. What the machine lacks: the project's venv (setup_venv.sh installs the CUDA torch, llama.cpp with CUDA when
#    nvcc exists, and the gpu extra: Unsloth, unsloth_zoo, bitsandbytes), then the gpu extra on an older venv.
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.installed ]; then
  make setup
fi
PY=.venv/bin/python
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || need_cuda "the venv's torch cannot use the GPU (a CPU build?): remove .venv and run this command again"
if ! $PY -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('unsloth') and u.find_spec('bitsandbytes') else 1)"; then
  echo "gpu_check: installing the gpu extra (Unsloth, unsloth_zoo, bitsandbytes)"
  $PY -m pip install -e ".[gpu]"
fi
$PY -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('accelerate') else 1)"

# 3. The runs. Two GPUs or more: notebooks 01 and 03 train in two processes (accelerate.notebook_launcher).
PROCESSES=1
[ "$GPUS" -ge 2 ] && PROCESSES=2
echo "gpu_check: $GPUS GPU(s); training in $PROCESSES process(es)"
exec $PY bench/gpu_check.py --num-processes "$PROCESSES" "$@"
