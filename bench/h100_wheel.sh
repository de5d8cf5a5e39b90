#!/usr/bin/env bash
# Build the sm_90a kernel wheel with the real build chain (triforce.kernels.build) on the lent H100 against its own
# torch, install it, import it, and run the kernel GPU tests against the installed wheel (not a development build).
# Usage there: CUTLASS patched tree in .device_carry/cutlass (`invoke patch-cutlass`, copied), carry .device_carry .whl
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
python3 - <<PY || exit 1
from pathlib import Path
from triforce.kernels import build, describe
result = build(arch="sm_90a", target="hopper", cutlass_dir=Path(".device_carry/cutlass"), wheel_dir=Path("$OUT/wheels"), jobs=12)
print("\n".join(describe(result)))
PY
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/wheel_site "$OUT"/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/wheel_site:$PWD:/tmp/site
python3 -c "import triforce_kernels, json; print(json.dumps(triforce_kernels.build_info())[:400]); print(triforce_kernels.__file__)"
python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_gpu.py 2>&1 | tail -3
