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
import subprocess
import sys

import cuda_headers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNELS = os.path.join(ROOT, "kernels")
LIBRARY = "libgptk-emulated-gpu.so"
# The names the backend's loader tries (cudarc: lib{cuda,cublasLt}.so first).
NAMES = ["libcuda.so", "libcuda.so.1", "libcublasLt.so", "libcublasLt.so.13"]


def cuda_include():
    """The folder holding cuda.h and cuda_bf16.h."""
    return cuda_headers.cuda_include("cuda.h", "cuda_bf16.h")


def build(out):
    os.makedirs(out, exist_ok=True)
    unit = os.path.join(out, "emulated_gpu.cpp")
    with open(unit, "w") as f:
        f.write('#include "emu.h"\n')
        for name in sorted(os.listdir(KERNELS)):
            if name.endswith(".cu"):
                f.write(f'#include "{name}"\n')
        f.write('#include "driver.cpp"\n#include "cublaslt.cpp"\n')
    lib = os.path.join(out, LIBRARY)
    subprocess.run(
        ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-x", "c++",
         f"-I{cuda_include()}", f"-I{HERE}", f"-I{KERNELS}", unit, "-o", lib + ".tmp"],
        check=True,
    )
    os.replace(lib + ".tmp", lib)
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
