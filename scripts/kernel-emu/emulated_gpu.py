"""Builds the emulated GPU: the CUDA driver API and cuBLASLt as gptk's CUDA backend uses them
(driver.cpp, cublaslt.cpp), running the kernels of kernels/*.cu under the CPU emulation of
emu.h, as one library with the names the backend loads (libcuda.so, libcublasLt.so).

    python3 scripts/kernel-emu/emulated_gpu.py DIR
    LD_LIBRARY_PATH=DIR target/release/gptk check --device cuda

runs the backend's host code end to end on the CPU: every allocation, copy, launch (grid, block,
shared memory, arguments), cuBLASLt call and CUDA graph it makes, with the kernels' results
compared to the CPU backend as on a GPU. Timing means nothing there. Needs g++ and the CUDA
headers of the nvidia-cuda-nvcc / nvidia-cuda-runtime wheels (or NVCC's folder). Prints DIR.
"""

import os
import sys

import emu_build

LIBRARY = "libgptk-emulated-gpu.so"
# The names the backend's loader tries (cudarc: lib{cuda,cublasLt}.so first).
NAMES = ["libcuda.so", "libcuda.so.1", "libcublasLt.so", "libcublasLt.so.13"]
HEADERS = ["cuda.h", "cuda_bf16.h"]


def cuda_include():
    """The folder holding the headers the build needs."""
    return emu_build.cuda_include(*HEADERS)


def build(out):
    os.makedirs(out, exist_ok=True)
    emu_build.compile_kernels(os.path.join(out, LIBRARY), HEADERS, ["driver.cpp", "cublaslt.cpp"])
    for name in NAMES:
        link = os.path.join(out, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(LIBRARY, link)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: emulated_gpu.py DIR")
    print(build(os.path.abspath(sys.argv[1])))
