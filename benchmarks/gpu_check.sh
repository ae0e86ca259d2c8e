#!/usr/bin/env bash
# Issue #17's checks on a machine with a CUDA GPU, in one run: the gpu-marked tests, then
# benchmarks/gpu_matrix.py with a profile of each family. Logs and results go to $OUT (the device
# tool's folder) or, without it, to benchmarks/results/.
#
#     bash benchmarks/gpu_check.sh
#
# It runs under the machine's own python3 and torch. Wheels under .whl/ (transformers at the
# version this project pins, when the machine's is older) are installed beside them first.
set -u
out=${OUT:-benchmarks/results}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'transformers', transformers.__version__)"
    nproc
    timeout "${TESTS_SECONDS:-200}" python3 -m pytest -o addopts="" -p no:cacheprovider -m gpu tests/test_gpu.py \
        -v -ra --timeout 180
} 2>&1 | tee "$out/gpu_tests.log"
timeout "${MATRIX_SECONDS:-300}" python3 benchmarks/gpu_matrix.py --profile --out "$out/gpu_matrix" \
    2>&1 | tee "$out/gpu_matrix.log"
