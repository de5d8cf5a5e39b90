#!/usr/bin/env bash
# Compile the Hopper development build here (no GPU) for the lent GPU's Python and torch (device KINDS.md: Python
# 3.12, torch 2.11.0+cu130), so that a fresh device machine imports it instead of compiling for 80+ s of device
# time. devbuild.py loads .device_carry/devbuild-hopper/_C.so only where its stamp (torch, Python, arch, a hash of
# every source) matches, and compiles otherwise. Carry it: carry [".whl", ".device_carry/devbuild-hopper"].
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PREBUILD_PYTHON:-$(pyenv root 2>/dev/null || echo /root/.pyenv)/versions/3.12.1/bin/python3}
VENV=${PREBUILD_VENV:-/tmp/triforce-prebuild-py312}
TORCH=${PREBUILD_TORCH:-2.11.0}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}  # torch would guess /usr/local from the nvcc wrapper on PATH
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH" ninja numpy nvidia-cutlass==4.2.0.0
fi
"$VENV/bin/python" -c "import torch; print('prebuild against torch', torch.__version__)"
PYTHONPATH=cutlass_sm110 "$VENV/bin/python" cutlass_sm110/devbuild.py --prebuild hopper
