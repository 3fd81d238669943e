"""Where the CUDA headers are, for the builds of the kernel emulation and the emulated GPU."""

import os
import site
import sys


def cuda_include(*headers):
    """The first folder holding every one of `headers`: nvcc's (NVCC), the nvidia-cuda wheels'
    in this Python, or /usr/local/cuda's. Exits with a message where there is none."""
    nvcc = os.environ.get("NVCC")
    candidates = []
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include"))
    dirs = list(sys.path) + site.getsitepackages()
    candidates += [os.path.join(d, "nvidia", "cu13", "include") for d in dirs]
    candidates.append("/usr/local/cuda/include")
    for c in candidates:
        if all(os.path.isfile(os.path.join(c, h)) for h in headers):
            return c
    sys.exit(f"{' and '.join(headers)} not found (set NVCC, or pip install nvidia-cuda-nvcc nvidia-cuda-runtime)")
