#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler from NVIDIA's pip wheels into Python's site-packages, where
# build.rs finds nvcc (nvidia/cu13/bin), and cuobjdump beside it for the tests. Pinned to 13.0: the GPU machines' driver cannot load PTX
# from a newer compiler. No GPU is needed to compile.
set -euo pipefail

python3 -m pip install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 \
    nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 \
    nvidia-nvvm==13.0.88 \
    nvidia-cuda-cccl==13.0.85
# The disassembler, for the machine-code checks of tests/cuda_build.rs (cuobjdump runs nvdisasm);
# reading code needs no driver, so the oldest 13.x on PyPI, 13.2, reads 13.0's sm_90a code.
python3 -m pip install --quiet --disable-pip-version-check \
    nvidia-cuda-cuobjdump==13.2.51 \
    nvidia-cuda-nvdisasm==13.2.51

nvcc=$(python3 - <<'PY'
import os, site, sys
dirs = list(sys.path)
try:
    dirs += site.getsitepackages()
except Exception:
    pass
for d in dirs:
    p = os.path.join(d, "nvidia", "cu13", "bin", "nvcc")
    if os.access(p, os.X_OK):
        print(p)
        break
PY
)
if [ -z "$nvcc" ]; then
    echo "install-nvcc: the wheels installed but nvcc is not under nvidia/cu13/bin in any site-packages" >&2
    exit 1
fi
echo "install-nvcc: $("$nvcc" --version | tail -n 1) at $nvcc"
